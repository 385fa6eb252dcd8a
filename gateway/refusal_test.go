package gateway_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/producer/message"
)

// TestRefusalsDoNotWaitForTheBody: a request that declares a body (Content-Length or
// chunked) and sends none is refused at once, with Connection: close, on every route
// that does not read it; net/http would otherwise read the body before it answers.
func TestRefusalsDoNotWaitForTheBody(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	host := strings.TrimPrefix(g.http.URL, "http://")
	tests := []struct {
		name, head string
		want       int
	}{
		{"publish without the key", "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", http.StatusUnauthorized},
		{"publish with a wrong key, chunked", "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nTransfer-Encoding: chunked\r\n\r\n", http.StatusUnauthorized},
		{"method not allowed", "PUT /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", http.StatusMethodNotAllowed},
		{"presence without the key", "GET /api/presence?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", http.StatusUnauthorized},
		{"unknown path", "POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", http.StatusMethodNotAllowed},
		{"handshake with a bad query", "GET /ws?since=x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", http.StatusBadRequest},
		{"handshake that is not one", "GET /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			fmt.Fprint(nc, tt.head)
			_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
			if err != nil {
				t.Fatalf("got %v, want HTTP %d at once", err, tt.want)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want || !resp.Close {
				t.Errorf("got HTTP %d (close %v), want %d with Connection: close", resp.StatusCode, resp.Close, tt.want)
			}
		})
	}
	// Without a body, a refusal keeps the connection.
	resp, err := http.Get(g.http.URL + "/api/presence?channel=a")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Close {
		t.Errorf("GET without a body: got %d (close %v), want 401, kept", resp.StatusCode, resp.Close)
	}
}

// slowBus takes every publish, after delay, unless the publish's context ends first.
type slowBus struct {
	failingBus
	delay time.Duration
}

func (b slowBus) Publish(ctx context.Context, m message.Message) (string, error) {
	select {
	case <-time.After(b.delay):
		return "slow-1", nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// TestStreamOutlastsReadTimeout holds what Handler's comment says of the server's read
// timeout: it bounds the reading of a request, not what the handler does after; a
// publish that takes longer still gets its answer, and a streaming response (as the
// coming Server-Sent Events endpoint) streams on with its context alive.
func TestStreamOutlastsReadTimeout(t *testing.T) {
	g := newTestGateway(t, gateway.Config{PublishTimeout: 5 * time.Second}, slowBus{delay: 600 * time.Millisecond})
	mux := http.NewServeMux()
	mux.Handle("/", g.srv.Handler())
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		for i := range 6 {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			fmt.Fprintf(w, "data: %d\n\n", i)
			http.NewResponseController(w).Flush()
		}
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ReadTimeout = 200 * time.Millisecond
	srv.Start()
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/publish", strings.NewReader(`{"data":1}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("a publish of 600ms behind a 200ms read timeout: got %d, want 202", resp.StatusCode)
	}
	resp, err = http.Get(srv.URL + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := strings.Count(string(body), "data:"); n != 6 {
		t.Errorf("a 600ms stream behind a 200ms read timeout: got %d events, want 6", n)
	}
}
