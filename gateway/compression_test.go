package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/producer/message"
)

// dialWith dials the gateway with d's options (compression offered or not).
func (g *testGateway) dialWith(d websocket.Dialer, query string) (*client, *http.Response) {
	g.t.Helper()
	d.HandshakeTimeout = 5 * time.Second
	ws, resp, err := d.Dial("ws"+strings.TrimPrefix(g.http.URL, "http")+"/ws?"+query, nil)
	if err != nil {
		g.t.Fatalf("dial: %v", err)
	}
	g.t.Cleanup(func() { ws.Close() })
	return &client{t: g.t, ws: ws}, resp
}

// TestCompressionNegotiatedPerConnection: clients that offer permessage-deflate get
// compressed frames and those that do not get plain ones, side by side; each message is
// compressed once for all the clients that negotiated it, and small ones not at all.
func TestCompressionNegotiatedPerConnection(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Compression: true, CompressionMinBytes: 200}, nil)
	var zipped []*client
	for range 3 {
		c, resp := g.dialWith(websocket.Dialer{EnableCompression: true}, "channels=z")
		if ext := resp.Header.Get("Sec-Websocket-Extensions"); !strings.HasPrefix(ext, "permessage-deflate") {
			t.Fatalf("compression offered, got extensions %q", ext)
		}
		c.expect("welcome")
		zipped = append(zipped, c)
	}
	// A client that does not offer it would fail on a compressed frame (RSV1 set): it
	// reading every message proves they come plain.
	plain, resp := g.dialWith(websocket.Dialer{}, "channels=z")
	if ext := resp.Header.Get("Sec-Websocket-Extensions"); ext != "" {
		t.Fatalf("compression not offered, got extensions %q", ext)
	}
	plain.expect("welcome")
	if got := gwtest.Counter(t, g.reg, "herald_compression_negotiated_total"); got != 3 {
		t.Errorf("negotiated: got %v, want 3", got)
	}

	big := `{"text":"` + strings.Repeat("all work and no play makes jack a dull boy ", 40) + `"}`
	const n = 5
	for i := range n {
		data := big
		if i == n-1 {
			data = `{"text":"short"}` // under CompressionMinBytes
		}
		if _, err := g.bus.Publish(context.Background(), message.Message{Channel: "z", Data: json.RawMessage(data)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range append(zipped, plain) {
		for i := range n {
			f := c.expect("message")
			if got, _ := json.Marshal(f["data"]); (i < n-1) != (len(got) > 1000) {
				t.Errorf("message %d: got %d bytes of data", i, len(got))
			}
		}
	}
	gwtest.WaitFor(t, "every delivery counted", func() bool { return gwtest.Counter(t, g.reg, "herald_messages_delivered_total") == 4*n })
	if got := gwtest.Counter(t, g.reg, "herald_compressed_frames_total"); got != n-1 {
		t.Errorf("compressed frames: got %v, want %d (each large message once, for 3 clients)", got, n-1)
	}
	in, out := gwtest.Counter(t, g.reg, "herald_compression_input_bytes_total"), gwtest.Counter(t, g.reg, "herald_compression_output_bytes_total")
	if in < float64((n-1)*len(big)) || out <= 0 || out > in/5 {
		t.Errorf("compressed %v bytes to %v: want the repetitive text to shrink 5 times or more", in, out)
	}

	// The clients' own frames may come compressed too.
	zipped[0].send(map[string]any{"op": "publish", "channel": "z", "data": json.RawMessage(big), "ref": "p"})
	for {
		if f := zipped[0].next(); f.str("op") == "ack" {
			break
		}
	}
}

// TestCompressedClientMessageHeldToTheLimitDecompressed: the size limit holds for what a
// compressed frame decompresses to, not only for its size on the wire.
func TestCompressedClientMessageHeldToTheLimitDecompressed(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Compression: true, MaxMessageBytes: 64 << 10}, nil)
	bomb, _ := g.dialWith(websocket.Dialer{EnableCompression: true}, "")
	bomb.expect("welcome")
	bystander, _ := g.dialWith(websocket.Dialer{EnableCompression: true}, "channels=b")
	bystander.expect("welcome")
	// 4 MiB of one byte: a few KiB compressed, far under the limit on the wire.
	payload := `{"op":"publish","data":"` + strings.Repeat("a", 4<<20) + `"}`
	if err := bomb.ws.WriteMessage(websocket.TextMessage, []byte(payload)); err != nil {
		t.Fatal(err)
	}
	if code := bomb.closeCode(); code != websocket.CloseMessageTooBig {
		t.Errorf("got close code %d, want %d", code, websocket.CloseMessageTooBig)
	}
	if got := gwtest.CounterWith(t, g.reg, "herald_limits_hit_total", "limit", "frame_size"); got != 1 {
		t.Errorf("frame_size limit hits: got %v, want 1", got)
	}
	if got := gwtest.Counter(t, g.reg, "herald_messages_published_total"); got != 0 {
		t.Errorf("published: got %v, want 0", got)
	}
	if _, err := g.bus.Publish(context.Background(), message.Message{Channel: "b", Data: json.RawMessage(`1`)}); err != nil {
		t.Fatal(err)
	}
	bystander.expect("message")
}
