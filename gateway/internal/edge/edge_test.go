package edge

import (
	"net/http"
	"net/netip"
	"testing"
)

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
		if got := ClientIP(r, trusted); got.String() != tt.want {
			t.Errorf("remote %s, XFF %q: got %s, want %s", tt.remote, tt.xff, got, tt.want)
		}
	}
	if got := AddrKey(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")); got.String() != "2001:db8:1:2::" {
		t.Errorf("addrKey of an IPv6 address: got %s, want its /64", got)
	}
}

// TestAddrRatesBounded: however many addresses knock, the limiter remembers at most
// its cap, forgetting the least recently seen.
func TestAddrRatesBounded(t *testing.T) {
	a := NewAddrRates(1, 1, 100)
	hot := netip.MustParseAddr("192.0.2.1")
	if !a.Allow(hot) || a.Allow(hot) {
		t.Fatal("a burst of 1 allowed other than one handshake")
	}
	for i := 0; i < 10000; i++ {
		a.Allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		if i%50 == 0 {
			a.Allow(hot) // seen recently: kept
		}
	}
	if n := a.Len(); n != 100 {
		t.Errorf("remembers %d addresses, want 100", n)
	}
	if a.Allow(hot) {
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
