package gateway_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/producer/message"
)

// rawClient speaks WebSocket frame by frame over TCP, so that a test can send what no
// well-behaved library would: bad fragments, unmasked frames, reserved bits.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

// rawDial opens a connection to g's /ws?query and completes the upgrade by hand.
func (g *testGateway) rawDial(query string) *rawClient {
	g.t.Helper()
	return g.rawDialHeader(query, "")
}

// rawDialHeader is rawDial with more request header lines (each ending in \r\n).
func (g *testGateway) rawDialHeader(query, header string) *rawClient {
	g.t.Helper()
	host := strings.TrimPrefix(g.http.URL, "http://")
	nc, err := net.Dial("tcp", host)
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { nc.Close() })
	fmt.Fprintf(nc, "GET /ws?%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n", query, host, header)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		g.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		g.t.Fatalf("raw upgrade: got HTTP %d, want 101", resp.StatusCode)
	}
	return &rawClient{t: g.t, nc: nc, br: br}
}

// frameOpts shape one raw frame.
type frameOpts struct {
	notFin   bool
	rsv      byte // the three reserved bits, 0 to 7
	unmasked bool
	length   uint64 // the length the header claims; 0: the payload's
}

// write sends one frame with opcode op and payload p.
func (r *rawClient) write(op byte, p []byte, o frameOpts) {
	r.t.Helper()
	b0 := op | o.rsv<<4
	if !o.notFin {
		b0 |= 0x80
	}
	n := uint64(len(p))
	if o.length != 0 {
		n = o.length
	}
	hdr := gwtest.FrameHeader(b0, !o.unmasked, n)
	body := append([]byte(nil), p...)
	if !o.unmasked {
		var key [4]byte
		_, _ = rand.Read(key[:])
		hdr = append(hdr, key[:]...)
		for i := range body {
			body[i] ^= key[i%4]
		}
	}
	if _, err := r.nc.Write(append(hdr, body...)); err != nil {
		r.t.Fatalf("raw write: %v", err)
	}
}

func (r *rawClient) text(s string) {
	r.t.Helper()
	r.write(websocket.TextMessage, []byte(s), frameOpts{})
}

// next reads the next frame from the gateway: its opcode and payload.
func (r *rawClient) next() (byte, []byte, error) {
	_ = r.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [2]byte
	if _, err := io.ReadFull(r.br, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r.br, p)
	return hdr[0] & 0x0f, p, err
}

// outcome is what the gateway did: the next data frame (op, error code, ref), or the
// close code it closed with.
type outcome struct {
	op, code, ref string
	close         int
}

func (o outcome) String() string {
	if o.close != 0 {
		return fmt.Sprintf("close %d", o.close)
	}
	if o.op == "error" {
		return fmt.Sprintf("error %s (ref %q)", o.code, o.ref)
	}
	return fmt.Sprintf("%s (ref %q)", o.op, o.ref)
}

// result reads frames until a data frame or a close frame, skipping pings.
func (r *rawClient) result() outcome {
	r.t.Helper()
	for {
		op, p, err := r.next()
		if err != nil {
			return outcome{close: websocket.CloseAbnormalClosure}
		}
		switch op {
		case websocket.CloseMessage:
			code := websocket.CloseNoStatusReceived
			if len(p) >= 2 {
				code = int(binary.BigEndian.Uint16(p))
			}
			return outcome{close: code}
		case websocket.TextMessage:
			var f struct{ Op, Code, Ref string }
			if err := json.Unmarshal(p, &f); err != nil {
				r.t.Fatalf("frame %q is not JSON: %v", p, err)
			}
			return outcome{op: f.Op, code: f.Code, ref: f.Ref}
		}
	}
}

// nested returns depth levels of [ ] around 1.
func nested(depth int) string { return strings.Repeat("[", depth) + "1" + strings.Repeat("]", depth) }

// hostileCase is one hostile input: what a client does, and the outcome it must get.
type hostileCase struct {
	name string
	do   func(r *rawClient)
	want outcome
}

// hostileInputs are the inputs of TestHostileInput: frames the protocol does not allow,
// bad framing, fragments, text that is not a request, numbers, nesting.
func hostileInputs() []hostileCase {
	utf8Split := []byte(`{"op":"subscribe","channel":"frag","ref":"é"}`) // é is 2 bytes
	cut := strings.Index(string(utf8Split), "é") + 1                     // inside é

	return []hostileCase{
		// Frames that are not what the protocol allows.
		{"invalid UTF-8", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte{'{', '"', 0xff, '"', '}'}, frameOpts{})
		}, outcome{close: 1007}},
		{"overlong UTF-8 encoding", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte{'"', 0xc0, 0xaf, '"'}, frameOpts{})
		}, outcome{close: 1007}},
		{"binary frame", func(r *rawClient) { r.write(websocket.BinaryMessage, []byte(`{"op":"subscribe"}`), frameOpts{}) }, outcome{close: 1003}},
		{"frame over the size limit", func(r *rawClient) {
			r.text(`{"op":"publish","data":"` + strings.Repeat("x", 70<<10) + `"}`)
		}, outcome{close: 1009}},
		{"header claims 2^62 bytes", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte("{}"), frameOpts{length: 1 << 62})
		}, outcome{close: 1009}},

		// Bad framing (RFC 6455 violations): protocol error.
		{"unmasked client frame", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte(`{"op":"x"}`), frameOpts{unmasked: true})
		}, outcome{close: 1002}},
		{"reserved bits set", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte(`{"op":"x"}`), frameOpts{rsv: 4})
		}, outcome{close: 1002}},
		{"reserved opcode", func(r *rawClient) { r.write(3, []byte("x"), frameOpts{}) }, outcome{close: 1002}},
		{"continuation without a first fragment", func(r *rawClient) {
			r.write(opContinuation, []byte(`{"op":"x"}`), frameOpts{})
		}, outcome{close: 1002}},
		{"new message inside a fragmented one", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte(`{"op":`), frameOpts{notFin: true})
			r.write(websocket.TextMessage, []byte(`"x"}`), frameOpts{})
		}, outcome{close: 1002}},
		{"fragmented ping", func(r *rawClient) { r.write(websocket.PingMessage, []byte("a"), frameOpts{notFin: true}) }, outcome{close: 1002}},
		{"ping over 125 bytes", func(r *rawClient) {
			r.write(websocket.PingMessage, []byte(strings.Repeat("p", 126)), frameOpts{})
		}, outcome{close: 1002}},
		{"close with a reserved code", func(r *rawClient) {
			r.write(websocket.CloseMessage, binary.BigEndian.AppendUint16(nil, 999), frameOpts{})
		}, outcome{close: 1002}},
		{"close with a 1-byte body", func(r *rawClient) { r.write(websocket.CloseMessage, []byte{3}, frameOpts{}) }, outcome{close: 1002}},
		{"64-bit length with its top bit set", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte("{}"), frameOpts{length: 1<<63 + 2})
		}, outcome{close: 1002}},
		{"message in 257 fragments", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte(`"`), frameOpts{notFin: true})
			for range 256 {
				r.write(opContinuation, nil, frameOpts{notFin: true})
			}
		}, outcome{close: 1009}},

		// Fragmented messages that are well formed are reassembled and served.
		{"fragments with a ping between", func(r *rawClient) {
			r.write(websocket.TextMessage, []byte(`{"op":"subs`), frameOpts{notFin: true})
			r.write(websocket.PingMessage, []byte("hi"), frameOpts{})
			r.write(opContinuation, []byte(`cribe","channel":"fr`), frameOpts{notFin: true})
			r.write(opContinuation, []byte(`ag","ref":"f1"}`), frameOpts{})
		}, outcome{op: "subscribed", ref: "f1"}},
		{"UTF-8 character split across fragments", func(r *rawClient) {
			r.write(websocket.TextMessage, utf8Split[:cut], frameOpts{notFin: true})
			r.write(opContinuation, utf8Split[cut:], frameOpts{})
		}, outcome{op: "subscribed", ref: "é"}},
		{"200 one-byte fragments", func(r *rawClient) {
			msg := []byte(`{"op":"subscribe","channel":"many-fragments","ref":"m"}`)
			r.write(websocket.TextMessage, msg[:1], frameOpts{notFin: true})
			for i := 1; i < len(msg)-1; i++ {
				r.write(opContinuation, msg[i:i+1], frameOpts{notFin: true})
			}
			r.write(opContinuation, msg[len(msg)-1:], frameOpts{})
		}, outcome{op: "subscribed", ref: "m"}},

		// Text that is not a request: error, and the connection stays open.
		{"empty frame", func(r *rawClient) { r.text("") }, outcome{op: "error", code: gateway.CodeBadRequest}},
		{"invalid JSON", func(r *rawClient) { r.text(`{"op":"subscribe","ref":"j1"`) }, outcome{op: "error", code: gateway.CodeBadRequest}},
		{"trailing garbage", func(r *rawClient) { r.text(`{"op":"subscribe","channel":"a","ref":"j2"} x`) }, outcome{op: "error", code: gateway.CodeBadRequest}},
		{"null", func(r *rawClient) { r.text(`null`) }, outcome{op: "error", code: gateway.CodeBadRequest}},
		{"number", func(r *rawClient) { r.text(`42`) }, outcome{op: "error", code: gateway.CodeBadRequest}},
		{"array of requests", func(r *rawClient) { r.text(`[{"op":"subscribe","channel":"a"}]`) }, outcome{op: "error", code: gateway.CodeBadRequest}},
		{"op is an array", func(r *rawClient) { r.text(`{"op":["subscribe"],"ref":"s1"}`) }, outcome{op: "error", code: gateway.CodeBadRequest, ref: "s1"}},
		{"ref is an object", func(r *rawClient) { r.text(`{"op":"subscribe","channel":"a","ref":{"x":1}}`) }, outcome{op: "error", code: gateway.CodeBadRequest}},
		{"channel is null", func(r *rawClient) { r.text(`{"op":"subscribe","channel":null,"ref":"s2"}`) }, outcome{op: "error", code: gateway.CodeBadRequest, ref: "s2"}},
		{"channel with a NUL", func(r *rawClient) { r.text(`{"op":"subscribe","channel":"a\u0000b","ref":"s3"}`) }, outcome{op: "error", code: gateway.CodeBadRequest, ref: "s3"}},
		{"channel of 129 characters", func(r *rawClient) {
			r.text(`{"op":"subscribe","channel":"` + strings.Repeat("c", 129) + `","ref":"s4"}`)
		}, outcome{op: "error", code: gateway.CodeBadRequest, ref: "s4"}},
		{"unknown op", func(r *rawClient) { r.text(`{"op":"shutdown","ref":"u1"}`) }, outcome{op: "error", code: gateway.CodeUnknownOp, ref: "u1"}},
		{"op of 60 KiB", func(r *rawClient) { r.text(`{"op":"` + strings.Repeat("o", 60<<10) + `","ref":"u2"}`) }, outcome{op: "error", code: gateway.CodeUnknownOp, ref: "u2"}},
		{"op with different case", func(r *rawClient) { r.text(`{"op":"SUBSCRIBE","channel":"a","ref":"u3"}`) }, outcome{op: "error", code: gateway.CodeUnknownOp, ref: "u3"}},

		// Numbers.
		{"since 1e999", func(r *rawClient) { r.text(`{"op":"subscribe","channel":"a","since":1e999,"ref":"n1"}`) }, outcome{op: "error", code: gateway.CodeBadRequest, ref: "n1"}},
		{"since beyond int64", func(r *rawClient) {
			r.text(`{"op":"subscribe","channel":"a","since":92233720368547758070,"ref":"n2"}`)
		}, outcome{op: "error", code: gateway.CodeBadRequest, ref: "n2"}},
		{"since a fraction", func(r *rawClient) { r.text(`{"op":"subscribe","channel":"a","since":1.5,"ref":"n3"}`) }, outcome{op: "error", code: gateway.CodeBadRequest, ref: "n3"}},
		{"since max int64: beyond the log", func(r *rawClient) {
			r.text(`{"op":"subscribe","channel":"a","since":9223372036854775807,"ref":"n4"}`)
		}, outcome{op: "subscribed", ref: "n4"}}, // then reset: the since is newer than the log
		{"data 1e999 is valid JSON, published as is", func(r *rawClient) {
			r.text(`{"op":"publish","channel":"numbers","data":1e999,"ref":"n5"}`)
		}, outcome{op: "ack", ref: "n5"}},

		// Nesting.
		{"data nested 64 deep", func(r *rawClient) { r.text(`{"op":"publish","channel":"deep","data":` + nested(64) + `,"ref":"d1"}`) }, outcome{op: "ack", ref: "d1"}},
		{"data nested 65 deep", func(r *rawClient) { r.text(`{"op":"publish","channel":"deep","data":` + nested(65) + `,"ref":"d2"}`) }, outcome{op: "error", code: gateway.CodeBadRequest, ref: "d2"}},
		{"data nested 20000 deep", func(r *rawClient) {
			r.text(`{"op":"publish","channel":"deep","data":` + nested(20000) + `,"ref":"d3"}`)
		}, outcome{op: "error", code: gateway.CodeBadRequest}},
		{"unknown field nested 5000 deep", func(r *rawClient) {
			r.text(`{"op":"subscribe","channel":"deep","x":` + nested(5000) + `,"ref":"d4"}`)
		}, outcome{op: "subscribed", ref: "d4"}},
		{"unclosed nesting", func(r *rawClient) { r.text(`{"op":"publish","data":` + strings.Repeat("[", 30000)) }, outcome{op: "error", code: gateway.CodeBadRequest}},
	}
}

// TestHostileInput sends one hostile input per case on a fresh connection and checks
// the exact outcome (error code and ref with the connection left open, or the close
// code); after each, that a bystander still gets every message in order and that the
// gateway's goroutines are back to where they were.
func TestHostileInput(t *testing.T) {
	g := newTestGateway(t, gateway.Config{MaxMessageBytes: 64 << 10}, nil)
	bystander := g.dial("channels=calm")
	bystander.expect("welcome")
	next := int64(0) // the bystander's next offset
	checkBystander := func(t *testing.T) {
		t.Helper()
		want := fmt.Sprintf("calm %d", next)
		data, _ := json.Marshal(want)
		if _, err := g.bus.Publish(context.Background(), message.Message{Channel: "calm", Data: data}); err != nil {
			t.Fatal(err)
		}
		for {
			f := bystander.expect("message")
			off, _ := f.num("offset")
			if f.str("channel") == "calm" {
				if off < next || f["data"] != want {
					t.Fatalf("bystander got %v, want %q at an offset from %d on", f, want, next)
				}
				next = off + 1
				return
			}
		}
	}
	for _, tt := range hostileInputs() {
		t.Run(tt.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			r := g.rawDial("")
			if got := r.result(); got.op != "welcome" {
				t.Fatalf("got %v, want welcome", got)
			}
			tt.do(r)
			if got := r.result(); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if tt.want.close == 0 { // still open, and still served
				r.text(`{"op":"subscribe","channel":"after","ref":"ok"}`)
				for got := r.result(); got.op != "subscribed" || got.ref != "ok"; got = r.result() {
					if got.close != 0 || got.op == "error" {
						t.Fatalf("after the hostile frame: got %v, want the connection to serve", got)
					}
				}
			}
			checkBystander(t)
			r.nc.Close()
			gwtest.WaitFor(t, "the connection to finish", func() bool { return gwtest.Counter(t, g.reg, "herald_connections") == 1 })
		})
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_limits_hit_total", "limit", "frame_size"); n != 2 {
		t.Errorf("limits hit{frame_size}: got %v, want 2", n)
	}
}

// TestSilentClient: a client that completes the upgrade but then never reads or
// answers a ping is dropped once PingInterval plus PongTimeout pass.
func TestSilentClient(t *testing.T) {
	g := newTestGateway(t, gateway.Config{PingInterval: 200 * time.Millisecond, PongTimeout: 200 * time.Millisecond}, nil)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	r := g.rawDial("")
	start := time.Now()
	gwtest.WaitFor(t, "the silent client to be dropped", func() bool {
		return gwtest.CounterWith(t, g.reg, "herald_connections_closed_total", "code", "1006") == 1
	})
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("dropped after %v, want after about 400ms", d)
	}
	r.nc.Close()
}

func TestMessageRateLimit(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Limits: gateway.Limits{MessageRate: 20, MessageBurst: 10, MaxViolations: 5}}, nil)
	baseline := goleak.IgnoreCurrent() // before any connection (see TestFrameFloods)
	bystander := g.dial("channels=calm")
	bystander.expect("welcome")

	// A flood of subscribe/unsubscribe: the burst is served, then rate_limited (with
	// the ref), then after MaxViolations more the connection is closed with 4029.
	r := g.rawDial("")
	r.result() // welcome
	for i := 0; i < 40; i++ {
		op := "subscribe"
		if i%2 == 1 {
			op = "unsubscribe"
		}
		r.text(fmt.Sprintf(`{"op":%q,"channel":"flood","ref":"%d"}`, op, i))
	}
	var served, limited int
	var got outcome
	for got = r.result(); got.close == 0; got = r.result() {
		switch {
		case got.op == "subscribed" || got.op == "unsubscribed":
			served++
		case got.code == gateway.CodeRateLimited && got.ref != "":
			limited++
		default:
			t.Fatalf("got %v, want answers, rate_limited, then a close", got)
		}
	}
	if got.close != gateway.CloseRateLimited || served < 10 || served > 12 || limited != 5 {
		t.Errorf("got %d served, %d rate_limited, then %v; want about 10 served, 5 rate_limited, then close 4029", served, limited, got)
	}
	r.nc.Close()
	gwtest.WaitFor(t, "the flooder's subscriptions to go", func() bool {
		return gwtest.Counter(t, g.reg, "herald_subscriptions") == 1 && gwtest.Counter(t, g.reg, "herald_connections") == 1
	})
	if n := gwtest.CounterWith(t, g.reg, "herald_limits_hit_total", "limit", "message_rate"); n != 5 {
		t.Errorf("limits hit{message_rate}: got %v, want 5", n)
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_limits_hit_total", "limit", "message_rate_closed"); n != 1 {
		t.Errorf("limits hit{message_rate_closed}: got %v, want 1", n)
	}
	// The bystander is unaffected.
	if _, err := g.bus.Publish(context.Background(), message.Message{Channel: "calm", Data: []byte(`"ok"`)}); err != nil {
		t.Fatal(err)
	}
	if f := bystander.expect("message"); f["data"] != "ok" {
		t.Errorf("bystander got %v", f)
	}
	bystander.ws.Close()
	gwtest.WaitFor(t, "the bystander to finish", func() bool { return gwtest.Counter(t, g.reg, "herald_connections") == 0 })
	goleak.VerifyNone(t, baseline)

	// Within the rate: a client that keeps to it is never limited.
	c := g.dial("")
	c.expect("welcome")
	for i := 0; i < 15; i++ {
		c.send(fmt.Sprintf(`{"op":"subscribe","channel":"slow","ref":"%d"}`, i))
		c.expect("subscribed")
		time.Sleep(60 * time.Millisecond)
	}
}

func TestSubscribeFloodWithoutRateLimit(t *testing.T) {
	// With no rate limit, 4000 alternating subscribe/unsubscribe ops are all answered,
	// in order, and leave the hub consistent.
	g := newTestGateway(t, gateway.Config{Limits: gateway.Limits{MessageRate: -1}}, nil)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := g.dial("")
	c.expect("welcome")
	const n = 4000
	go func() {
		for i := 0; i < n; i++ {
			op := "subscribe"
			if i%2 == 1 {
				op = "unsubscribe"
			}
			if err := c.ws.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"op":%q,"channel":"ch%d","ref":"%d"}`, op, i/2%7, i)); err != nil {
				return
			}
		}
	}()
	for i := 0; i < n; i++ {
		f := c.next()
		if f.str("ref") != fmt.Sprint(i) {
			t.Fatalf("answer %d: got %v, want ref %d", i, f, i)
		}
	}
	if s := gwtest.Counter(t, g.reg, "herald_subscriptions"); s != 0 {
		t.Errorf("subscriptions after the flood: got %v, want 0", s)
	}
	c.ws.Close()
	gwtest.WaitFor(t, "the connection to finish", func() bool { return gwtest.Counter(t, g.reg, "herald_connections") == 0 })
}

func TestMaxSubscriptions(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Limits: gateway.Limits{MaxSubscriptions: 3}}, nil)
	if _, resp, err := g.tryDial("channels=a,b,c,d"); err == nil || status(resp) != http.StatusBadRequest {
		t.Errorf("connect with 4 channels: got HTTP %d, want 400", status(resp))
	}
	c := g.dial("channels=a,b")
	c.expect("welcome")
	steps := []struct{ frame, want string }{
		{`{"op":"subscribe","channel":"c","ref":"1"}`, "subscribed"},
		{`{"op":"subscribe","channel":"d","ref":"2"}`, gateway.CodeTooLarge},
		{`{"op":"subscribe","channel":"d","since":-1,"ref":"3"}`, gateway.CodeTooLarge},
		{`{"op":"subscribe","channel":"a","ref":"4"}`, "subscribed"}, // already one: no more
		{`{"op":"unsubscribe","channel":"b","ref":"5"}`, "unsubscribed"},
		{`{"op":"subscribe","channel":"d","ref":"6"}`, "subscribed"},
	}
	for _, s := range steps {
		c.send(s.frame)
		f := c.next()
		got := f.str("op")
		if got == "error" {
			got = f.str("code")
		}
		if got != s.want {
			t.Errorf("%s: got %v, want %s", s.frame, f, s.want)
		}
	}
	if n := gwtest.CounterWith(t, g.reg, "herald_limits_hit_total", "limit", "subscriptions"); n != 3 {
		t.Errorf("limits hit{subscriptions}: got %v, want 3", n)
	}
}

func TestConnectionLimits(t *testing.T) {
	t.Run("per gateway", func(t *testing.T) {
		g := newTestGateway(t, gateway.Config{Limits: gateway.Limits{MaxConnections: 2}}, nil)
		a := g.dial("")
		a.expect("welcome")
		g.dial("").expect("welcome")
		if _, resp, err := g.tryDial(""); err == nil || status(resp) != http.StatusServiceUnavailable {
			t.Errorf("third connection: got HTTP %d, want 503", status(resp))
		}
		a.ws.Close()
		gwtest.WaitFor(t, "a slot to free", func() bool {
			c, _, err := g.tryDial("")
			if err == nil {
				c.ws.Close()
			}
			return err == nil
		})
		if n := gwtest.CounterWith(t, g.reg, "herald_limits_hit_total", "limit", "connections"); n < 1 {
			t.Errorf("limits hit{connections}: got %v, want at least 1", n)
		}
	})
	t.Run("per address, behind a trusted proxy", func(t *testing.T) {
		g := newTestGateway(t, gateway.Config{Limits: gateway.Limits{MaxConnectionsPerIP: 2,
			TrustedProxies: mustPrefixes(t, "127.0.0.0/8", "::1/128")}}, nil)
		from := func(xff string) (*client, int) {
			h := http.Header{}
			if xff != "" {
				h.Set("X-Forwarded-For", xff)
			}
			c, resp, err := g.dialHeader("", h)
			if err != nil {
				return nil, status(resp)
			}
			c.expect("welcome")
			return c, 0
		}
		for i := 0; i < 2; i++ {
			if _, s := from("198.51.100.7"); s != 0 {
				t.Fatalf("connection %d from 198.51.100.7: got HTTP %d", i, s)
			}
		}
		if _, s := from("198.51.100.7"); s != http.StatusTooManyRequests {
			t.Errorf("third from 198.51.100.7: got HTTP %d, want 429", s)
		}
		// A spoofed hop to the left of the real client does not help it.
		if _, s := from("203.0.113.9, 198.51.100.7"); s != http.StatusTooManyRequests {
			t.Errorf("spoofed X-Forwarded-For: got HTTP %d, want 429", s)
		}
		if _, s := from("198.51.100.8"); s != 0 {
			t.Errorf("another client behind the proxy: got HTTP %d, want upgraded", s)
		}
		// IPv6 clients count by /64.
		from("2001:db8:1:2::1")
		from("2001:db8:1:2::2")
		if _, s := from("2001:db8:1:2::3"); s != http.StatusTooManyRequests {
			t.Errorf("third from one /64: got HTTP %d, want 429", s)
		}
		if n := gwtest.CounterWith(t, g.reg, "herald_limits_hit_total", "limit", "connections_per_ip"); n != 3 {
			t.Errorf("limits hit{connections_per_ip}: got %v, want 3", n)
		}
	})
	t.Run("handshake rate", func(t *testing.T) {
		g := newTestGateway(t, gateway.Config{Limits: gateway.Limits{HandshakeRate: 0.5, HandshakeBurst: 3}}, nil)
		for i := 0; i < 3; i++ {
			g.dial("").expect("welcome")
		}
		_, resp, err := g.tryDial("")
		if err == nil || status(resp) != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Errorf("fourth handshake at once: got HTTP %d, want 429 with Retry-After", status(resp))
		}
		if n := gwtest.CounterWith(t, g.reg, "herald_handshakes_refused_total", "reason", "rate_limited"); n != 1 {
			t.Errorf("refused{rate_limited}: got %v, want 1", n)
		}
	})
}

// panickingBus panics on a publish of "boom", a bug in code a connection calls, and
// takes nothing else.
type panickingBus struct{ failingBus }

func (b panickingBus) Publish(ctx context.Context, m message.Message) (string, error) {
	if string(m.Data) == `"boom"` {
		panic("boom")
	}
	return b.failingBus.Publish(ctx, m)
}

func TestPanicClosesOnlyThatConnection(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, panickingBus{})
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	other := g.dial("")
	other.expect("welcome")
	c := g.dial("")
	c.expect("welcome")
	c.send(`{"op":"publish","data":"boom","ref":"p"}`)
	if code := c.closeCode(); code != websocket.CloseInternalServerErr {
		t.Errorf("got close %d, want 1011", code)
	}
	if n := gwtest.Counter(t, g.reg, "herald_panics_total"); n != 1 {
		t.Errorf("panics: got %v, want 1", n)
	}
	// The other connection goes on.
	other.send(`{"op":"publish","data":"fine","ref":"q"}`)
	if f := other.expect("error"); f.str("code") != gateway.CodeUnavailable || f.str("ref") != "q" {
		t.Errorf("other connection: got %v, want error unavailable", f)
	}
	c.ws.Close()
	other.ws.Close()
	gwtest.WaitFor(t, "the connections to finish", func() bool { return gwtest.Counter(t, g.reg, "herald_connections") == 0 })
}

func mustPrefixes(t *testing.T, list ...string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// opContinuation is the opcode of a continuation frame (RFC 6455 section 5.2).
const opContinuation = 0
