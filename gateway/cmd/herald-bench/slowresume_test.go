package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldgw/herald/producer/amqptest"
)

// startEmbeddedGateway starts herald-gateway on the embedded bus with a tail (its
// retained log) of tailBytes, and returns its address; it is stopped when the test ends.
func startEmbeddedGateway(t *testing.T, tailBytes string) string {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(freePorts(t, 1))
	cmd := exec.Command(gatewayBin(t), "-addr", addr, "-api-key", "k", "-retain-bytes", tailBytes, "-retain-messages", "1000000",
		"-max-connections-per-ip", "0", "-handshake-rate", "0", "-log-level", "warn")
	var log lockedBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("gateway log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !dialableTarget(addr) {
		if time.Now().After(deadline) {
			t.Fatalf("gateway at %s not up within 30s:\n%s", addr, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr
}

// runIdle runs the idle regime with -fill-tail against addr and returns its result, or
// the exit code and stderr when it fails.
func runIdle(t *testing.T, addr, fill string, conns int) (Result, int, string) {
	t.Helper()
	args := []string{"run", "-preset", "idle", "-conns", strconv.Itoa(conns), "-target", addr, "-api-key", "k",
		"-fill-tail", fill, "-settle", "100ms", "-quiet-below", "0", "-json"}
	var stdout bytes.Buffer
	stderr := &lockedBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := run(ctx, args, &stdout, stderr)
	var res Result
	if code == 0 {
		if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
			t.Fatalf("result: %v\n%s", err, stdout.String())
		}
	}
	return res, code, stderr.String()
}

// TestIdleFillTail runs the idle regime with -fill-tail against a real gateway whose tail
// holds 256 KiB: the baseline is taken with the tail full (within two messages of its
// cap), the tail is reported beside RSS per connection, and a fill above the gateway's
// cap fails rather than waiting for a tail that cannot grow.
func TestIdleFillTail(t *testing.T) {
	addr := startEmbeddedGateway(t, "256KiB")
	res, code, stderr := runIdle(t, addr, "256KiB", 20)
	if code != 0 {
		t.Fatalf("herald-bench run: exit %d\n%s", code, stderr)
	}
	tb, ti := res.TailBefore, res.TailIdle
	if tb == nil || ti == nil || res.GoMemBefore == nil || res.GoMemIdle == nil {
		t.Fatalf("no tail or Go memory reported: %+v\n%s", res, stderr)
	}
	per := tb.Bytes / max(tb.Messages, 1)
	if tb.Messages == 0 || tb.Bytes > 256<<10 || tb.Bytes+2*per < 256<<10 || res.TailCapBytes != 256<<10 {
		t.Errorf("tail at the baseline %+v (cap %d): want within two messages of 256 KiB", tb, res.TailCapBytes)
	}
	if ti.Bytes != tb.Bytes || ti.Messages != tb.Messages {
		t.Errorf("tail changed while connecting: %+v, then %+v", tb, ti)
	}
	if res.ConnsMade != 20 || res.RSSBeforeKiB <= 0 || res.RSSIdleKiB <= 0 || res.TailFillSecs <= 0 {
		t.Errorf("connections %d, RSS before %d, idle %d KiB, filled in %.2fs", res.ConnsMade, res.RSSBeforeKiB, res.RSSIdleKiB, res.TailFillSecs)
	}
	if !strings.Contains(stderr, "tail full") {
		t.Errorf("no fill reported:\n%s", stderr)
	}

	_, code, stderr = runIdle(t, addr, "1MiB", 1)
	if code != 1 || !strings.Contains(stderr, "the tail stopped at") {
		t.Errorf("a fill above the gateway's cap: exit %d, want 1 with the tail stopped\n%s", code, stderr)
	}
}

// TestSlowResumeScenario runs slowresume with 20 clients on the real RabbitMQ and a real
// gateway whose tail is filled below its cap (so it holds the stream from its first
// message): every client asks since=-1, is served from the tail at its own pace (read
// faster here so that it ends), and gets resumed; the baseline and the figures come from
// the gateway's /proc and /metrics.
func TestSlowResumeScenario(t *testing.T) {
	url := amqptest.URL(t)
	bin := gatewayBin(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	args := []string{"slowresume", "-gateway-bin", bin, "-amqp-url", url, "-port", strconv.Itoa(freePorts(t, 2)),
		"-out", t.TempDir(), "-json", "-quiet-below", "0", "-gateway-args", "-log-level info -write-queue-bytes 65536",
		"-clients", "20", "-tail-bytes", "256KiB", "-fill", "64KiB", "-read-rate", "65536", "-window", "4s", "-settle", "100ms"}
	var stdout bytes.Buffer
	stderr := &lockedBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if code := run(ctx, args, &stdout, stderr); code != 0 {
		t.Fatalf("herald-bench slowresume: exit %d\n%s", code, stderr.String())
	}
	t.Logf("herald-bench slowresume:\n%s", stderr.String())
	var res SlowResumeResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("result: %v\n%s", err, stdout.String())
	}
	if res.Tail == nil || res.Tail.Edge != -1 || res.Tail.Messages == 0 || res.Tail.Bytes+2*res.Tail.Bytes/res.Tail.Messages < 64<<10 {
		t.Errorf("tail at the baseline %+v: want about 64 KiB, complete from the stream's start (edge -1)", res.Tail)
	}
	if res.Connected != 20 || res.ClientsWelcomed != 20 || res.ClientsResumed != 20 || res.ClientsReset != 0 {
		t.Errorf("connected %d, welcomed %d, resumed %d, reset %d: want 20, 20, 20, 0 (ended %v, dial errors %v)",
			res.Connected, res.ClientsWelcomed, res.ClientsResumed, res.ClientsReset, res.ClientsEnded, res.DialErrors)
	}
	if res.ResumesBySource["tail"] != 20 || res.ReplayedMessages != 20*res.Tail.Messages {
		t.Errorf("resumes by source %v, replayed %d: want 20 from the tail, each replaying its %d messages",
			res.ResumesBySource, res.ReplayedMessages, res.Tail.Messages)
	}
	// Every client read at most -read-rate a second over the window, and each got the
	// whole tail (its frames are a little larger than the data counted in the tail).
	if res.ClientBytesRead > 20*65536*5 || res.ClientFramesRead < 20*(res.Tail.Messages+2) {
		t.Errorf("clients read %d bytes, %d frames", res.ClientBytesRead, res.ClientFramesRead)
	}
	if res.QueueCapBytes != 65536 || res.QueueCapsKiB != 20*64 || res.TailCopiesKiB != 20*res.Tail.Bytes>>10 {
		t.Errorf("queue cap %d, clients x cap %d KiB, clients x tail %d KiB", res.QueueCapBytes, res.QueueCapsKiB, res.TailCopiesKiB)
	}
	if res.ServerPID <= 0 || res.RSSBeforeKiB <= 0 || res.RSSPeakKiB < res.RSSBeforeKiB || res.RSSGrowthKiB != res.RSSPeakKiB-res.RSSBeforeKiB {
		t.Errorf("pid %d, RSS before %d, peak %d, growth %d KiB", res.ServerPID, res.RSSBeforeKiB, res.RSSPeakKiB, res.RSSGrowthKiB)
	}
	if res.SlowClosed != 0 || res.ConnectionsAtEnd != 20 {
		t.Errorf("slow consumers closed %d, connections at the end %d: want 0 and 20", res.SlowClosed, res.ConnectionsAtEnd)
	}
}

// TestFrameReader feeds a slow client's reader frames a byte at a time: it counts
// welcome and resumed, answers a ping with a masked pong, and ends at a close frame with
// its code.
func TestFrameReader(t *testing.T) {
	frame := func(op byte, payload []byte) []byte {
		f := []byte{0x80 | op}
		switch {
		case len(payload) < 126:
			f = append(f, byte(len(payload)))
		default:
			f = append(f, 126)
			f = binary.BigEndian.AppendUint16(f, uint16(len(payload)))
		}
		return append(f, payload...)
	}
	var stream []byte
	stream = append(stream, frame(0x1, []byte(`{"op":"welcome","conn":"c"}`))...)
	stream = append(stream, frame(0x1, []byte(`{"op":"message","data":"`+strings.Repeat("x", 300)+`"}`))...)
	stream = append(stream, frame(0x9, []byte("pi"))...)
	stream = append(stream, frame(0x1, []byte(`{"op":"resumed","since":-1,"until":5}`))...)
	stream = append(stream, frame(0x8, binary.BigEndian.AppendUint16(nil, 4008))...)

	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	pong := make(chan []byte, 1)
	go func() {
		b := make([]byte, 64)
		n, _ := server.Read(b)
		pong <- b[:n]
	}()
	sc := &slowClients{}
	fr := &frameReader{sc: sc, conn: client}
	why := ""
	for i := range stream {
		if why = fr.feed(stream[i : i+1]); why != "" && i != len(stream)-1 {
			t.Fatalf("ended at byte %d of %d: %s", i, len(stream), why)
		}
	}
	if why != "close 4008" {
		t.Errorf("ended by %q, want close 4008", why)
	}
	if sc.welcomed.Load() != 1 || sc.resumed.Load() != 1 || sc.frames.Load() != 5 {
		t.Errorf("welcomed %d, resumed %d, frames %d; want 1, 1, 5", sc.welcomed.Load(), sc.resumed.Load(), sc.frames.Load())
	}
	select {
	case got := <-pong:
		if !bytes.Equal(got, []byte{0x8a, 0x82, 0, 0, 0, 0, 'p', 'i'}) {
			t.Errorf("pong % x, want a masked pong carrying the ping's payload", got)
		}
	case <-time.After(5 * time.Second):
		t.Error("no pong")
	}
}

func TestParseByteSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"16MiB", 16 << 20, true}, {"512k", 512 << 10, true}, {"1048576", 1 << 20, true}, {"2GB", 2 << 30, true},
		{"64 KiB", 64 << 10, true}, {"x", 0, false}, {"-1", 0, false}, {"MiB", 0, false},
	} {
		got, err := parseByteSize(tt.in)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
