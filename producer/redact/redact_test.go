package redact_test

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"strings"
	"testing"

	"github.com/heraldgw/herald/producer/redact"
)

func TestURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:xxxxx@127.0.0.1:5672/"},
		{"amqps://app:s3cr%2Ft@rabbit.example.com/vhost?heartbeat=10", "amqps://app:xxxxx@rabbit.example.com/vhost?heartbeat=10"},
		{"amqp://user@host/", "amqp://user@host/"},
		{"amqp://:only-a-password@host/", "amqp://:xxxxx@host/"},
		{"amqp://u:p@ss@host/", "amqp://u:xxxxx@host/"},
		{"https://issuer.example.com/.well-known/jwks.json", "https://issuer.example.com/.well-known/jwks.json"},
		{"http://user:secret@idp.local/jwks?tenant=a&access_token=abc&X-Amz-Signature=zz#k",
			"http://user:xxxxx@idp.local/jwks?tenant=a&access_token=xxxxx&X-Amz-Signature=xxxxx#k"},
		{"https://x/jwks?sig=1&api%5Fkey=2&keep=3&password", "https://x/jwks?sig=xxxxx&api%5Fkey=xxxxx&keep=3&password"},
		// Lists: each element; a comma inside a password is not a separator.
		{"amqp://a:pw1@h1/,amqp://b:pw2@h2/", "amqp://a:xxxxx@h1/,amqp://b:xxxxx@h2/"},
		{"amqp://a:p,w@h1/, amqps://b:q@h2/", "amqp://a:xxxxx@h1/, amqps://b:xxxxx@h2/"},
		// Unparsable: redacted as text.
		{"amqp://guest:se%zzcret@127.0.0.1:5672/", "amqp://guest:xxxxx@127.0.0.1:5672/"},
		{"amqp://guest:pa ss@host/", "amqp://guest:xxxxx@host/"},
		{"amqp://guest:p/a#ss@host:5672/", "amqp://guest:xxxxx@host:5672/"},
		{"http://h:99999999999/x?token=%zz", "http://h:99999999999/x?token=xxxxx"},
		{"", ""},
		{"nonsense", "nonsense"},
	}
	for _, tt := range tests {
		if got := redact.URL(tt.in); got != tt.want {
			t.Errorf("URL(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestError(t *testing.T) {
	raw := "amqp://guest:se%zzcret@127.0.0.1:5672/"
	_, perr := url.Parse(raw) // quotes raw, password included
	if !strings.Contains(perr.Error(), "se%zzcret") {
		t.Fatalf("url.Parse's error %q does not hold the password: the test tests nothing", perr)
	}
	wrapped := fmt.Errorf("publisher: config: URL: %w", perr)
	got := redact.Error(wrapped, raw)
	if strings.Contains(got.Error(), "se%zzcret") || strings.Contains(got.Error(), "zzcret") {
		t.Errorf("redacted error %q still holds the password", got)
	}
	if !strings.Contains(got.Error(), "127.0.0.1:5672") || !strings.HasPrefix(got.Error(), "publisher: config: URL: ") {
		t.Errorf("redacted error %q lost where and what", got)
	}
	var ue *url.Error
	if !errors.As(got, &ue) || strings.Contains(ue.URL, "zzcret") {
		t.Errorf("errors.As *url.Error: got %v, want the wrapped error, redacted", ue)
	}

	// A '/' in a password cuts the URL short: the parser quotes a piece of the password.
	raw = "amqp://guest:p4ss/word@127.0.0.1:5672/"
	_, perr = url.Parse(raw)
	if got := redact.Error(perr, raw); strings.Contains(got.Error(), "p4ss") || strings.Contains(got.Error(), "word") {
		t.Errorf("redacted error %q holds a piece of the password", got)
	}

	// The raw URL in a message, as is and quoted with %q; the chain stays.
	raw = "http://u:pw\"x@h/jwks?token=t0k"
	e := fmt.Errorf("fetch %s and %q: %w", raw, raw, fs.ErrNotExist)
	got = redact.Error(e, raw)
	for _, secret := range []string{"pw", "t0k"} {
		if strings.Contains(got.Error(), secret) {
			t.Errorf("redacted error %q holds %q", got, secret)
		}
	}
	if !errors.Is(got, fs.ErrNotExist) {
		t.Errorf("errors.Is lost the wrapped error: %v", got)
	}
	if redact.Error(nil, raw) != nil {
		t.Error("Error(nil) is not nil")
	}
	plain := errors.New("dial tcp 127.0.0.1:5672: connection refused")
	if got := redact.Error(plain, "amqp://a:b@127.0.0.1:5672/"); got != plain {
		t.Errorf("an error without the URL: got %v, want it as it is", got)
	}
}
