package gateway

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/producer/message"
)

// FuzzDecodeRequest feeds arbitrary frames to the client frame decoder: it never
// panics, what it accepts is a well-formed request of a known op, and its answer (the
// error frame, echoing the ref) always encodes. The seed corpus is in
// testdata/fuzz/FuzzDecodeRequest; go test runs it as a normal test.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"subscribe","channel":"news","ref":"1"}`,
		`{"op":"subscribe","channel":"a","since":-1,"ref":"2"}`,
		`{"op":"unsubscribe","channel":"a:b/c.d_e-f","ref":"3"}`,
		`{"op":"publish","channel":"room","data":{"text":"hi"},"ref":"4"}`,
		`{"op":"publish","data":[1,2,3]}`,
		`{"op":"refresh","token":"eyJhbGciOiJIUzI1NiJ9.e30.x","ref":"5"}`,
		`{"op":"subscribe","channel":"a","since":1e999}`,
		`{"op":"publish","data":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
		`{"op":"publish","data":"\"[{\\"","ref":"6"}`,
		`{"op":5,"ref":"7"}`,
		`{"ref":{"a":1}}`,
		` 	{"op":"subscribe","channel":"x"}`,
		`[]`, `null`, `"op"`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !utf8.Valid(data) {
			return // the read pump closes with 1007 before decoding
		}
		r, perr := decodeRequest(data)
		if perr != nil {
			if perr.code != CodeBadRequest && perr.code != CodeUnknownOp || perr.msg == "" {
				t.Fatalf("error %q %q: want bad_request or unknown_op with a message", perr.code, perr.msg)
			}
			f := wire.Marshal(errorFrame{Op: "error", Code: perr.code, Message: perr.msg, Ref: r.Ref})
			if !json.Valid(f) {
				t.Fatalf("error frame %q is not JSON", f)
			}
			return
		}
		switch r.Op {
		case "subscribe", "unsubscribe":
			if r.Channel == nil || !message.ValidChannel(*r.Channel) {
				t.Fatalf("accepted %s without a valid channel: %q", r.Op, data)
			}
			if r.Since != nil && *r.Since < -1 {
				t.Fatalf("accepted since %d", *r.Since)
			}
		case "publish":
			if r.Channel != nil && !message.ValidChannel(*r.Channel) {
				t.Fatalf("accepted publish to %q", *r.Channel)
			}
			if !json.Valid(r.Data) || jsonDepth(r.Data) > maxDataDepth {
				t.Fatalf("accepted publish data %q", r.Data)
			}
		case "refresh":
			if r.Token == "" {
				t.Fatal("accepted refresh without a token")
			}
		default:
			t.Fatalf("accepted op %q", r.Op)
		}
		if !json.Valid(wire.Marshal(replyFrame{Op: "subscribed", Ref: r.Ref})) {
			t.Fatal("reply frame is not JSON")
		}
	})
}

func TestJSONDepth(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{`1`, 0}, {`"[[["`, 0}, {`[]`, 1}, {`{"a":[{}]}`, 3}, {`["\"[", [1]]`, 2}, {`"\\"`, 0}, {`["\\",[[]]]`, 3},
	}
	for _, tt := range tests {
		if got := jsonDepth([]byte(tt.in)); got != tt.want {
			t.Errorf("jsonDepth(%s): got %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		in, op, code, ref string
	}{
		{`{"op":"subscribe","channel":"a:b/c-d_e.f","ref":"1"}`, "subscribe", "", "1"},
		{`  {"op":"publish","data":null}`, "publish", "", ""},
		{`{"op":"publish","data":{"x":[1,2]},"extra":"ignored"}`, "publish", "", ""},
		{`{"op":"unsubscribe","channel":"a"}`, "unsubscribe", "", ""},
		{``, "", CodeBadRequest, ""},
		{`null`, "", CodeBadRequest, ""},
		{`{"op":"subscribe","channel":"a","since":9223372036854775808,"ref":"big"}`, "", CodeBadRequest, "big"},
		{`{"op":"subscribe","channel":"a","since":1.5}`, "", CodeBadRequest, ""},
		{`{"op":"publish","channel":null,"data":1,"ref":"r"}`, "publish", "", "r"},
		{`{"op":"publish","channel":"","data":1}`, "", CodeBadRequest, ""},
		{`{"op":["subscribe"]}`, "", CodeBadRequest, ""},
		{`{"op":"Subscribe","channel":"a"}`, "", CodeUnknownOp, ""},
		{strings.Repeat("[", 10000), "", CodeBadRequest, ""},
		{`{"op":"subscribe","channel":"a",` + strings.Repeat(`"k":{`, 1000), "", CodeBadRequest, ""},
		// presence, limit and after are read only by the ops that use them.
		{`{"op":"publish","data":1,"presence":"yes","limit":"10","after":3,"ref":"p"}`, "publish", "", "p"},
		{`{"op":"subscribe","channel":"a","presence":true,"limit":"x"}`, "subscribe", "", ""},
		{`{"op":"subscribe","channel":"a","presence":"yes","ref":"s"}`, "", CodeBadRequest, "s"},
		{`{"op":"presence","channel":"a","limit":20,"after":"bob","ref":"q"}`, "presence", "", "q"},
		{`{"op":"presence","channel":"a","limit":"20"}`, "", CodeBadRequest, ""},
		{`{"op":"presence","channel":"a","after":7}`, "", CodeBadRequest, ""},
		{`{"op":"presence","channel":"a","limit":0}`, "", CodeBadRequest, ""},
		{`{"op":"presence"}`, "", CodeBadRequest, ""},
	}
	for _, tt := range tests {
		r, perr := decodeRequest([]byte(tt.in))
		code := ""
		if perr != nil {
			code = perr.code
		}
		name := tt.in[:min(len(tt.in), 40)]
		if code != tt.code || r.Ref != tt.ref || (code == "" && r.Op != tt.op) {
			t.Errorf("%s: got op %q code %q ref %q, want op %q code %q ref %q", name, r.Op, code, r.Ref, tt.op, tt.code, tt.ref)
		}
	}
}

// TestMessageFrameWithoutTime: a message whose publisher gave no time goes on the wire
// without one, and the frame keeps the time the gateway received it, for the delivery
// count and latency only (the writer counts a frame with a clock as a delivery:
// internal/writer's TestWritesCountDeliveries).
func TestMessageFrameWithoutTime(t *testing.T) {
	received := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	published := received.Add(-time.Second)
	for _, tc := range []struct {
		name     string
		m        message.Message
		wantTime any       // the frame's time field; nil: absent
		wantPub  time.Time // the frame's clock
	}{
		{"no time", message.Message{ID: "a", Offset: 3, Data: json.RawMessage(`1`)}, nil, received},
		{"a time", message.Message{ID: "b", Offset: 4, Data: json.RawMessage(`1`), Time: published},
			"2025-03-04T05:06:06Z", published},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newMessageFrame(tc.m, received)
			var got map[string]any
			if err := json.Unmarshal(f.Payload(), &got); err != nil {
				t.Fatal(err)
			}
			if tm, ok := got["time"]; tm != tc.wantTime || ok != (tc.wantTime != nil) {
				t.Errorf("time field: got %v (present %v), want %v", tm, ok, tc.wantTime)
			}
			if !f.Published.Equal(tc.wantPub) {
				t.Errorf("frame clock: got %v, want %v", f.Published, tc.wantPub)
			}
		})
	}
	// A replayed message without a time is counted too (its clock is when it was read).
	if f := newMessageFrame(message.Message{ID: "c", Offset: 5, Data: json.RawMessage(`1`)}, time.Time{}); f.Published.IsZero() {
		t.Error("replayed frame without a time: got no clock, want now")
	}
}
