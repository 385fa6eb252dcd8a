package gateway_test

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/producer/message"
)

// bystanderServed publishes to channel and checks that b receives it.
func bystanderServed(t *testing.T, g *testGateway, b *client, channel, data string) {
	t.Helper()
	if _, err := g.bus.Publish(context.Background(), message.Message{Channel: channel, Data: []byte(`"` + data + `"`)}); err != nil {
		t.Fatal(err)
	}
	for {
		f := b.expect("message")
		if f["data"] == data {
			return
		}
	}
}

// TestFrameFloods: control and continuation frames count against the connection's frame
// limit (four times --message-rate by default) and a message's fragments are capped, so
// a flood of empty pings or empty continuation frames is closed within the limit, having
// drawn at most a burst of pongs, and a bystander is served meanwhile.
func TestFrameFloods(t *testing.T) {
	emptyPing := []byte{0x89, 0x80, 1, 2, 3, 4}
	emptyContinuation := []byte{0x00, 0x80, 1, 2, 3, 4}
	tests := []struct {
		name      string
		limits    gateway.Limits
		first     []byte // sent before the flood
		unit      []byte
		wantClose int
		wantLimit string
	}{
		{"empty pings", gateway.Limits{}, nil, emptyPing, gateway.CloseRateLimited, "frame_rate"},
		{"empty continuations", gateway.Limits{}, []byte{0x01, 0x81, 1, 2, 3, 4, '"' ^ 1}, emptyContinuation, websocket.CloseMessageTooBig, "fragments"},
		{"empty continuations, no fragment cap", gateway.Limits{MaxFragments: -1}, []byte{0x01, 0x81, 1, 2, 3, 4, '"' ^ 1}, emptyContinuation, gateway.CloseRateLimited, "frame_rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGateway(t, gateway.Config{Limits: tt.limits}, nil)
			// The baseline comes before any connection: a connection's read pump may
			// start after its welcome, so one taken after a welcome can miss it.
			baseline := goleak.IgnoreCurrent()
			bystander := g.dial("channels=calm")
			bystander.expect("welcome")
			r := g.rawDial("")
			r.result() // welcome
			flood := append([]byte(nil), tt.first...)
			for range 5000 {
				flood = append(flood, tt.unit...)
			}
			go func() { _, _ = r.nc.Write(flood) }() // the gateway may stop reading before the end
			pongs, code := 0, 0
			for code == 0 {
				op, p, err := r.next()
				switch {
				case err != nil:
					code = websocket.CloseAbnormalClosure
				case op == websocket.PongMessage:
					pongs++
				case op == websocket.CloseMessage && len(p) >= 2:
					code = int(binary.BigEndian.Uint16(p))
				}
			}
			// The default limit: 200 frames a second, 400 at once.
			if code != tt.wantClose || pongs > 450 {
				t.Errorf("5,000 frames: got %d pongs and close %d, want at most about 400 pongs and close %d", pongs, code, tt.wantClose)
			}
			if n := gwtest.CounterWith(t, g.reg, "herald_limits_hit_total", "limit", tt.wantLimit); n != 1 {
				t.Errorf("limits hit{%s}: got %v, want 1", tt.wantLimit, n)
			}
			bystanderServed(t, g, bystander, "calm", "still served")
			r.nc.Close()
			gwtest.WaitFor(t, "the flooder to finish", func() bool { return gwtest.Counter(t, g.reg, "herald_connections") == 1 })
			bystander.ws.Close()
			gwtest.WaitFor(t, "the bystander to finish", func() bool { return gwtest.Counter(t, g.reg, "herald_connections") == 0 })
			goleak.VerifyNone(t, baseline)
		})
	}
}

// rawPonger reads a raw client's frames in the background, noting the payload of the
// latest ping, until the connection ends.
type rawPonger struct {
	r    *rawClient
	mu   sync.Mutex
	ping []byte
	done chan struct{}
}

func startPonger(r *rawClient) *rawPonger {
	p := &rawPonger{r: r, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			_ = r.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			op, payload, err := r.next()
			if err != nil || op == websocket.CloseMessage {
				return
			}
			if op == websocket.PingMessage {
				p.mu.Lock()
				p.ping = payload
				p.mu.Unlock()
			}
		}
	}()
	return p
}

func (p *rawPonger) latestPing() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ping
}

// TestPongsMoveTheDeadlineOnlyForThePing: the gateway's pings carry a number, and only
// the first pong that echoes the latest one moves the read deadline, never one during a
// partly received message. A client that answers every ping stays; one that sends only
// pongs of its own, or that leaves a message unfinished and sends pongs (even correct
// ones), is dropped once PingInterval plus PongTimeout pass.
func TestPongsMoveTheDeadlineOnlyForThePing(t *testing.T) {
	const interval, timeout = 150 * time.Millisecond, 150 * time.Millisecond
	g := newTestGateway(t, gateway.Config{PingInterval: interval, PongTimeout: timeout}, nil)
	baseline := goleak.IgnoreCurrent()

	// A real client answers every ping (gorilla echoes the payload) and stays.
	good := g.dial("")
	good.expect("welcome")
	goodDone := make(chan error, 1)
	_ = good.ws.SetReadDeadline(time.Time{}) // it reads for as long as the test runs
	go func() {
		for {
			if _, _, err := good.ws.ReadMessage(); err != nil {
				goodDone <- err
				return
			}
		}
	}()

	tests := []struct {
		name    string
		partial bool // leave a message unfinished first
		echo    bool // echo the latest ping
	}{
		{"pongs of its own", false, false},
		{"a partial message and pongs of its own", true, false},
		{"a partial message and echoed pongs", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := g.rawDial("")
			if got := r.result(); got.op != "welcome" {
				t.Fatalf("got %v, want welcome", got)
			}
			if tt.partial {
				r.write(websocket.TextMessage, []byte(`{"op":`), frameOpts{notFin: true})
			}
			p := startPonger(r)
			start := time.Now()
			for i := 0; ; i++ {
				select {
				case <-p.done:
				case <-time.After(20 * time.Millisecond):
					payload := binary.BigEndian.AppendUint64(nil, uint64(i)) // a number of its own
					if tt.echo && p.latestPing() != nil {
						payload = p.latestPing()
					}
					if !writePong(r.nc, payload) {
						break
					}
					if time.Since(start) < 3*time.Second {
						continue
					}
				}
				break
			}
			<-p.done
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("dropped after %v, want after about %v", d, interval+timeout)
			}
			r.nc.Close()
		})
	}
	select {
	case err := <-goodDone:
		t.Errorf("the client that answers every ping was dropped: %v", err)
		goodDone <- err
	default:
	}
	if n := gwtest.Counter(t, g.reg, "herald_pongs_ignored_total"); n < 10 {
		t.Errorf("pongs ignored: got %v, want every pong of the three", n)
	}
	good.ws.Close()
	<-goodDone
	gwtest.WaitFor(t, "the connections to finish", func() bool { return gwtest.Counter(t, g.reg, "herald_connections") == 0 })
	goleak.VerifyNone(t, baseline)
}

// writePong writes a masked pong with payload; it reports false once the connection is
// gone.
func writePong(nc net.Conn, payload []byte) bool {
	frame := []byte{0x8a, 0x80 | byte(len(payload)), 0, 0, 0, 0} // a zero mask key
	_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := nc.Write(append(frame, payload...))
	return err == nil
}

// deflated compresses s as permessage-deflate sends it: raw deflate, the final empty
// stored block's 00 00 ff ff removed (RFC 7692 section 7.2.1).
func deflated(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestSpeed)
	_, _ = w.Write([]byte(s))
	_ = w.Flush()
	return bytes.TrimSuffix(b.Bytes(), []byte{0, 0, 0xff, 0xff})
}

// TestHostileCompressedInput: with permessage-deflate negotiated, RSV1 marks the first
// frame of a compressed message and nothing else (RFC 7692 section 6: else 1002), and a
// compressed message that is not deflate data fails the connection with 1007 (section
// 8), its close frame sent.
func TestHostileCompressedInput(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Compression: true}, nil)
	const rsv1 = 4
	sub := `{"op":"subscribe","channel":"z","ref":"c"}`
	tests := []struct {
		name string
		do   func(r *rawClient)
		want outcome
	}{
		{"a compressed message is served", func(r *rawClient) {
			r.write(websocket.TextMessage, deflated(t, sub), frameOpts{rsv: rsv1})
		}, outcome{op: "subscribed", ref: "c"}},
		{"a compressed message in fragments is served", func(r *rawClient) {
			d := deflated(t, sub)
			r.write(websocket.TextMessage, d[:5], frameOpts{rsv: rsv1, notFin: true})
			r.write(opContinuation, d[5:], frameOpts{})
		}, outcome{op: "subscribed", ref: "c"}},
		{"RSV1 on a continuation frame", func(r *rawClient) {
			d := deflated(t, sub)
			r.write(websocket.TextMessage, d[:5], frameOpts{rsv: rsv1, notFin: true})
			r.write(opContinuation, d[5:], frameOpts{rsv: rsv1})
		}, outcome{close: 1002}},
		{"RSV1 on a ping", func(r *rawClient) { r.write(websocket.PingMessage, nil, frameOpts{rsv: rsv1}) }, outcome{close: 1002}},
		{"RSV1 on a close frame", func(r *rawClient) {
			r.write(websocket.CloseMessage, binary.BigEndian.AppendUint16(nil, 1000), frameOpts{rsv: rsv1})
		}, outcome{close: 1002}},
		{"not deflate data", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, frameOpts{rsv: rsv1})
		}, outcome{close: 1007}},
		{"deflate data cut short", func(r *rawClient) {
			r.write(websocket.TextMessage, deflated(t, strings.Repeat(sub, 20))[:20], frameOpts{rsv: rsv1})
		}, outcome{close: 1007}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			r := g.rawDialHeader("", "Sec-WebSocket-Extensions: permessage-deflate\r\n")
			if got := r.result(); got.op != "welcome" {
				t.Fatalf("got %v, want welcome", got)
			}
			tt.do(r)
			if got := r.result(); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			r.nc.Close()
			gwtest.WaitFor(t, "the connection to finish", func() bool { return gwtest.Counter(t, g.reg, "herald_connections") == 0 })
		})
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_connections_closed_total", "code", "1007"); n != 2 {
		t.Errorf("closed{1007}: got %v, want 2", n)
	}
}

// TestPingBurstAnsweredOnce: pings that arrive together are answered by one pong, the
// latest ping's (RFC 6455 section 5.5.3 allows it), so that a burst costs one write.
func TestPingBurstAnsweredOnce(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	r := g.rawDial("")
	r.result() // welcome
	var burst []byte
	for i := range 10 {
		burst = append(burst, 0x89, 0x81, 0, 0, 0, 0, byte('0'+i)) // a zero mask key
	}
	burst = append(burst, 0x81, 0x80|27, 0, 0, 0, 0)
	burst = append(burst, `{"op":"x","ref":"after"}   `...)
	if _, err := r.nc.Write(burst); err != nil {
		t.Fatal(err)
	}
	var pongs []string
	for {
		op, p, err := r.next()
		if err != nil {
			t.Fatal(err)
		}
		if op == websocket.PongMessage {
			pongs = append(pongs, string(p))
		}
		if op == websocket.TextMessage {
			break
		}
	}
	if len(pongs) == 0 || len(pongs) == 10 || pongs[len(pongs)-1] != "9" {
		t.Errorf("10 pings at once: got pongs %q, want fewer than 10, the last for ping 9", pongs)
	}
}
