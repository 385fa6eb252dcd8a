package gateway

import (
	"encoding/json"
	"testing"
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
