package gateway_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/gateway"
)

// TestCookieSignIn: the token in the cookie named by AuthConfig.Cookie signs a client in
// on both transports, but only from a request that comes from a trusted origin: the
// gateway's own or a listed one, or no Origin with Sec-Fetch-Site: same-origin. A cookie
// goes with cross-site requests too; without that check another site's page could
// connect as the user.
func TestCookieSignIn(t *testing.T) {
	for _, allowed := range [][]string{{"https://app.example.com"}, {"*"}} {
		g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret, Cookie: "herald_token"},
			AllowedOrigins: allowed}, nil)
		host := strings.TrimPrefix(g.http.URL, "http://")
		good := &http.Cookie{Name: "herald_token", Value: hs(t, "alice", time.Hour, claims{"channels": []string{"news"}})}
		expired := &http.Cookie{Name: "herald_token", Value: hs(t, "alice", -time.Hour, nil)}
		tests := []struct {
			name   string
			cookie *http.Cookie
			header http.Header
			want   int // 200 or 101 for admitted
		}{
			{"own origin", good, http.Header{"Origin": {"http://" + host}}, 0},
			{"listed origin", good, http.Header{"Origin": {"https://app.example.com"}}, 0},
			{"no Origin, same-origin fetch", good, http.Header{"Sec-Fetch-Site": {"same-origin"}}, 0},
			{"no Origin, cross-site fetch", good, http.Header{"Sec-Fetch-Site": {"cross-site"}}, http.StatusUnauthorized},
			{"no Origin, no fetch metadata", good, nil, http.StatusUnauthorized},
			{"expired cookie", expired, http.Header{"Origin": {"http://" + host}}, http.StatusUnauthorized},
			{"token in the query wins", expired, http.Header{"Origin": {"http://" + host}}, -1},
		}
		if allowed[0] == "*" {
			// Allowed to connect, but a cookie from any origin is not trusted.
			tests = append(tests, struct {
				name   string
				cookie *http.Cookie
				header http.Header
				want   int
			}{"other origin allowed by *", good, http.Header{"Origin": {"https://evil.example"}}, http.StatusUnauthorized})
		} else {
			tests = append(tests, struct {
				name   string
				cookie *http.Cookie
				header http.Header
				want   int
			}{"other origin", good, http.Header{"Origin": {"https://evil.example"}}, http.StatusForbidden})
		}
		for _, tt := range tests {
			if tt.name == "listed origin" && allowed[0] == "*" {
				tt.want = http.StatusUnauthorized // not listed: merely allowed by *
			}
			query := ""
			if tt.want == -1 {
				query, tt.want = "token="+good.Value, 0
			}
			h := http.Header{"Cookie": {tt.cookie.String()}}
			for k, v := range tt.header {
				h[k] = v
			}
			// Server-Sent Events.
			c, resp := g.sseTry(query, h)
			switch {
			case tt.want == 0 && c == nil:
				t.Errorf("allowed %v, %s, /sse: HTTP %d, want the stream", allowed, tt.name, resp.StatusCode)
			case tt.want == 0:
				if u := c.expect("welcome").frame(t).str("user"); u != "alice" {
					t.Errorf("allowed %v, %s, /sse: user %q, want alice", allowed, tt.name, u)
				}
			case resp.StatusCode != tt.want:
				t.Errorf("allowed %v, %s, /sse: HTTP %d, want %d", allowed, tt.name, resp.StatusCode, tt.want)
			}
			// WebSocket (the Sec-Fetch-Site case: browsers always send Origin with one).
			ws, resp, err := g.dialHeader(query, h)
			switch {
			case tt.want == 0 && err != nil:
				t.Errorf("allowed %v, %s, /ws: %v (HTTP %d)", allowed, tt.name, err, status(resp))
			case tt.want == 0:
				if u := ws.expect("welcome").str("user"); u != "alice" {
					t.Errorf("allowed %v, %s, /ws: user %q, want alice", allowed, tt.name, u)
				}
			case status(resp) != tt.want:
				t.Errorf("allowed %v, %s, /ws: HTTP %d, want %d", allowed, tt.name, status(resp), tt.want)
			}
		}
	}
}
