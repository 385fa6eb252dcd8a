package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldgw/herald/gateway/internal/gwtest"
)

// sseMsg is a message event as the gateway writes it: id, event name, and the data of a
// WebSocket frame.
func sseMsg(offset, seq int64) string {
	return fmt.Sprintf("id: %d\nevent: message\ndata: %s\n\n", offset, msg(offset, seq))
}

// sseStream is a stream's body after its header: a retry hint, welcome, the messages of
// seqs 0, 1, 3 and 3 again (2 is lost, 3 duplicated) with a heartbeat among them, one
// event ended with CRLFs, an event with no data (not dispatched), and the error event
// of a drain, which ends it.
var sseStream = "retry: 2000\n\n" +
	"id: 9\nevent: welcome\ndata: {\"op\":\"welcome\",\"conn\":\"x\",\"node\":\"fake\",\"user\":\"\",\"offset\":9}\n\n" +
	sseMsg(10, 0) + ":\n\n" + sseMsg(11, 1) +
	strings.ReplaceAll(sseMsg(13, 3), "\n", "\r\n") +
	": a comment\nevent: message\n\n" +
	sseMsg(13, 3) +
	"event: error\ndata: {\"op\":\"error\",\"code\":\"going_away\",\"close\":1001,\"message\":\"draining\"}\n\n" +
	sseMsg(15, 4) // after the end: not read

// TestSSEEventsInAnyPieces feeds the stream to the SSE parser in pieces of every size,
// so that lines and events are cut everywhere: it counts the three deliveries, the
// duplicate, and ends at the error event with its close code.
func TestSSEEventsInAnyPieces(t *testing.T) {
	cs := newClientSet(newRecorder(1))
	r := &epollReceivers{cs: cs, sse: true}
	h := newHist()
	for size := 1; size <= len(sseStream); size++ {
		cs.dups.Store(0)
		rc := &rawConn{id: 0, last: -1, ev: sseEvent{id: -1}}
		why := ""
		for rest := []byte(sseStream); len(rest) > 0 && why == ""; {
			n := min(size, len(rest))
			why = r.events(rc, bytes.Clone(rest[:n]), time.Now())
			rest = rest[n:]
		}
		got := cs.rec.drain(h)
		if got != 4 || cs.dups.Load() != 1 || why != "close 1001" || rc.last != 13 {
			t.Fatalf("pieces of %d bytes: %d deliveries, %d dups, ended %q, last id %d; want 4, 1, close 1001, 13",
				size, got, cs.dups.Load(), why, rc.last)
		}
	}
}

// fakeSSEGateway serves one stream the way the gateway does (a raw response on the
// connection, no chunked encoding): the header, then body, then it waits for the client
// to close. It records the request line.
func fakeSSEGateway(t *testing.T, body string) (addr string, request <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	reqs := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			reqs <- err.Error()
			return
		}
		reqs <- req.Method + " " + req.URL.String() + " " + req.Header.Get("Accept")
		_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: close\r\n\r\n"))
		// The welcome and what follows it come in separate writes as often as not.
		for _, part := range strings.SplitAfter(body, "\n\n") {
			_, _ = c.Write([]byte(part))
		}
		_, _ = c.Read(make([]byte, 1)) // until the client closes
	}()
	return ln.Addr().String(), reqs
}

// TestSSEClientAccountsForEveryEvent opens one SSE client, as the load does, on a fake
// gateway whose stream loses a message and sends one twice: the client asks for its
// channel, counts the deliveries with their latency, counts the duplicate, so that the
// lost one is found, and ends at the error event as at a close 1001.
func TestSSEClientAccountsForEveryEvent(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	addr, reqs := fakeSSEGateway(t, sseStream)
	rec := newRecorder(4)
	cs := newClientSet(rec)
	var err error
	if cs.ep, err = newEpollReceivers(cs, 1, true); err != nil {
		t.Fatal(err)
	}
	defer cs.close(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cr := connect(ctx, sseOpener(newSourceDialer(2, 1), addr, ssePath("t-0"), cs.addSSEReceiver), 1, 100, nil)
	if cr.Made != 1 {
		t.Fatalf("connect: %+v", cr)
	}
	if got := <-reqs; got != "GET /sse?channels=t-0 text/event-stream" {
		t.Errorf("request %q, want GET /sse?channels=t-0 asking for text/event-stream", got)
	}
	gwtest.WaitFor(t, "the stream to end with its error event (close 1001)", func() bool { return cs.endedCounts()["close 1001"] == 1 })
	h := newHist()
	received, dups := rec.drain(h), cs.dups.Load()
	if received != 4 || h.TotalCount() != 4 || h.Max() <= 0 || dups != 1 || cs.live.Load() != 0 {
		t.Errorf("received %d (latencies %d, max %d us), dups %d, live %d; want 4 deliveries timed, 1 duplicate, none live",
			received, h.TotalCount(), h.Max(), dups, cs.live.Load())
	}
	if l := lost(4, received, dups); l != 1 {
		t.Errorf("lost %d of 4 published, want 1", l)
	}
}

// TestRunSSEAgainstGateway runs the load with SSE clients against a real herald-gateway
// (no broker): every client gets every message once, timed, and the gateway's CPU and
// RSS are read as for WebSocket clients.
func TestRunSSEAgainstGateway(t *testing.T) {
	bin := gatewayBin(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePorts(t, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log lockedBuffer
	srv, err := startServer(ctx, bin, append([]string{"-addr", addr, "-api-key", "k", "-log-level", "warn"}, loadLimitsOff(bin)...), addr, &log)
	if err != nil {
		t.Fatal(err)
	}
	defer stopServer(srv)
	var stdout bytes.Buffer
	stderr := &lockedBuffer{}
	args := []string{"run", "-transport", "sse", "-target", addr, "-api-key", "k", "-conns", "20", "-rate", "20",
		"-duration", "2s", "-warmup", "500ms", "-settle", "0", "-quiet-below", "0", "-json"}
	if code := run(ctx, args, &stdout, stderr); code != 0 {
		t.Fatalf("herald-bench %s: exit %d\n%s\ngateway:\n%s", strings.Join(args, " "), code, stderr.String(), log.String())
	}
	var res Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("result: %v\n%s", err, stdout.String())
	}
	p := res.Phase
	if res.Transport != "sse" || res.ConnsMade != 20 || res.ServerPID != srv.Process.Pid || p == nil {
		t.Fatalf("transport %q, %d connections, server pid %d (want %d), phase %v", res.Transport, res.ConnsMade, res.ServerPID, srv.Process.Pid, p)
	}
	if p.Accepted != 40 || p.Expected != 800 || p.Received != 800 || p.Lost != 0 || p.Dups != 0 || len(p.ReceiversEnded) != 0 ||
		p.Latency.Count == 0 || p.ServerCPUSecs <= 0 {
		t.Errorf("accepted %d, expected %d, received %d, lost %d, dups %d, ended %v, timed %d, server CPU %.3fs; want 40 x 20 = 800 received, none lost or duplicated\n%s",
			p.Accepted, p.Expected, p.Received, p.Lost, p.Dups, p.ReceiversEnded, p.Latency.Count, p.ServerCPUSecs, stderr.String())
	}
}
