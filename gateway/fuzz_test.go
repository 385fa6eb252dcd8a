package gateway

import (
	"encoding/json"
	"net/http"
	"net/netip"
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

func TestPatterns(t *testing.T) {
	p := compilePerms([]string{"news", "user:{sub}:*", " room:* ", ""}, "alice")
	tests := []struct {
		ch   string
		want bool
	}{
		{"news", true}, {"news2", false}, {"new", false}, {"user:alice:x", true}, {"user:alice:", true},
		{"user:bob:x", false}, {"room:1", true}, {"room", false}, {"", false},
	}
	for _, tt := range tests {
		if got := p.allows(tt.ch); got != tt.want {
			t.Errorf("allows(%q): got %v, want %v", tt.ch, got, tt.want)
		}
	}
	if !compilePerms([]string{"*"}, "").allows("") {
		t.Error(`"*" does not allow publishing to everyone`)
	}
	if compilePerms(nil, "x").allows("a") || compilePerms([]string{"{sub}"}, "*").allows("x") {
		t.Error("no patterns, or a sub of *, allowed a channel")
	}
}

func TestClientIP(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	tests := []struct {
		remote, xff, want string
	}{
		{"192.0.2.1:5000", "", "192.0.2.1"},
		{"192.0.2.1:5000", "198.51.100.1", "192.0.2.1"}, // not from a trusted proxy: XFF ignored
		{"10.0.0.1:5000", "198.51.100.1", "198.51.100.1"},
		{"10.0.0.1:5000", "203.0.113.5, 198.51.100.1, 10.0.0.2", "198.51.100.1"},
		{"10.0.0.1:5000", "", "10.0.0.1"},
		{"10.0.0.1:5000", "garbage, 198.51.100.1", "198.51.100.1"},
		{"10.0.0.1:5000", "198.51.100.1, garbage", "10.0.0.1"},
		{"[::ffff:10.0.0.1]:5000", "198.51.100.1", "198.51.100.1"},
		{"[2001:db8::1]:5000", "", "2001:db8::1"},
	}
	for _, tt := range tests {
		r := &http.Request{RemoteAddr: tt.remote, Header: http.Header{}}
		if tt.xff != "" {
			r.Header.Set("X-Forwarded-For", tt.xff)
		}
		if got := clientIP(r, trusted); got.String() != tt.want {
			t.Errorf("remote %s, XFF %q: got %s, want %s", tt.remote, tt.xff, got, tt.want)
		}
	}
	if got := addrKey(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")); got.String() != "2001:db8:1:2::" {
		t.Errorf("addrKey of an IPv6 address: got %s, want its /64", got)
	}
}

// TestAddrRatesBounded: however many addresses knock, the limiter remembers at most
// its cap, forgetting the least recently seen.
func TestAddrRatesBounded(t *testing.T) {
	a := newAddrRates(1, 1, 100)
	hot := netip.MustParseAddr("192.0.2.1")
	if !a.allow(hot) || a.allow(hot) {
		t.Fatal("a burst of 1 allowed other than one handshake")
	}
	for i := 0; i < 10000; i++ {
		a.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		if i%50 == 0 {
			a.allow(hot) // seen recently: kept
		}
	}
	if n := a.len(); n != 100 {
		t.Errorf("remembers %d addresses, want 100", n)
	}
	if a.allow(hot) {
		t.Error("the hot address was forgotten and got a fresh bucket")
	}
}

func TestParseJWKSRejects(t *testing.T) {
	for _, doc := range []string{
		``, `[]`, `{"keys":[]}`, `{"keys":[{"kty":"oct","k":"AAAA"}]}`,
		`{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}`,                                    // 17-bit modulus
		`{"keys":[{"kty":"EC","kid":"a","crv":"P-256","x":"AAAA","y":"AAAA"}]}`,                       // short
		`{"keys":[{"kty":"EC","kid":"a","crv":"P-384","x":"AAAA","y":"AAAA"}]}`,                       // other curve
		`{"keys":[{"kty":"RSA","kid":"a","use":"enc","n":"AQAB","e":"AQAB"}]}`,                        // encryption
		`{"keys":[{"kty":"EC","kid":"a","crv":"P-256","x":"` + zeros32 + `","y":"` + zeros32 + `"}]}`, // not on the curve
	} {
		if keys, err := parseJWKS([]byte(doc)); err == nil {
			t.Errorf("parseJWKS(%s): got %d keys, want an error", doc, len(keys))
		}
	}
}

// zeros32 is 32 zero bytes in base64url.
const zeros32 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
