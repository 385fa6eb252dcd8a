package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestRunEmbedded runs the gateway as `go run` does with no broker configured: it serves
// the demo, takes a publish and delivers it, and on cancellation (SIGTERM) drains the
// client with 1001 and exits 0.
func TestRunEmbedded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"--addr", "127.0.0.1:0", "--api-key", "k", "--log-format", "json"}, func(string) string { return "" }, pw)
		pw.Close()
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec struct{ Msg, Addr, Bus string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "herald gateway listening" {
				if rec.Bus != "embedded" {
					t.Errorf("bus: got %q, want embedded", rec.Bus)
				}
				addr <- rec.Addr
			}
			t.Log(sc.Text())
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not start")
	}
	for _, path := range []string{"/", "/herald.js", "/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: got %d, want 200", path, resp.StatusCode)
		}
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(base, "http")+"/ws?channels=demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	read := func() map[string]any {
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		var f map[string]any
		if err := ws.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := read(); f["op"] != "welcome" {
		t.Fatalf("got %v, want welcome", f)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/api/publish", strings.NewReader(`{"channel":"demo","data":"hi"}`))
	req.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("publish: got %d, want 202", resp.StatusCode)
	}
	if f := read(); f["op"] != "message" || f["data"] != "hi" || f["offset"] != float64(0) {
		t.Fatalf("got %v, want the message at offset 0", f)
	}

	cancel() // as SIGTERM does
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = ws.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("got %v, want close 1001", err)
	}
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("exit code %d, want 0", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not exit after the drain")
	}
}
