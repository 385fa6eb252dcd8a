package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestListenerFlags(t *testing.T) {
	c, err := parseConfig(nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.ReadTimeout != 10*time.Second || c.Listen.Pending.Max != 10000 || c.Listen.Pending.MaxPerAddr > 0 || c.Listen.AdminAddr != "" {
		t.Errorf("defaults differ from the documented ones: %+v", c)
	}
	c, err = parseConfig(nil, env(map[string]string{
		"HERALD_READ_TIMEOUT": "3s", "HERALD_MAX_PENDING_CONNECTIONS": "50", "HERALD_MAX_PENDING_CONNECTIONS_PER_IP": "5",
		"HERALD_ADMIN_ADDR": "127.0.0.1:9090", "HERALD_READ_HEADER_TIMEOUT": "2s",
	}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.ReadTimeout != 3*time.Second || c.Listen.Pending.Max != 50 || c.Listen.Pending.MaxPerAddr != 5 || c.Listen.AdminAddr != "127.0.0.1:9090" {
		t.Errorf("environment not applied: %+v", c)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--read-timeout", "0s"}, "--read-timeout (HERALD_READ_TIMEOUT): must be positive"},
		{[]string{"--read-timeout", "5s", "--read-header-timeout", "6s"}, "must not exceed read-timeout"},
		{[]string{"--max-pending-connections", "-1"}, "--max-pending-connections (HERALD_MAX_PENDING_CONNECTIONS): must not be negative"},
		{[]string{"--max-pending-connections-per-ip", "-1"}, "--max-pending-connections-per-ip (HERALD_MAX_PENDING_CONNECTIONS_PER_IP): must not be negative"},
		{[]string{"--admin-addr", "nonsense"}, "admin-addr"},
		{[]string{"--admin-addr", ":9090", "--debug-addr", ":6060"}, "give admin-addr only"},
	} {
		if _, err := parseConfig(tt.args, env(nil), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: got %v, want an error naming %q", tt.args, err, tt.want)
		}
	}
	var help bytes.Buffer
	_, _ = parseConfig([]string{"-help"}, env(nil), &help)
	for _, name := range []string{"read-timeout", "max-pending-connections", "max-pending-connections-per-ip", "admin-addr", "debug-addr"} {
		if !strings.Contains(help.String(), "-"+name+" ") {
			t.Errorf("-help does not list -%s", name)
		}
	}
}

// TestDebugAddrIsAdminAlias: the deprecated --debug-addr opens the admin listener, and
// /metrics stays on the public one, as it was.
func TestDebugAddrIsAdminAlias(t *testing.T) {
	addr, logs := runGateway(t, "--debug-addr", "127.0.0.1:0")
	var admin string
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec struct{ Msg, Admin string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "herald gateway listening" {
			admin = rec.Admin
		}
	}
	if admin == "" {
		t.Fatalf("no admin listener in the log:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "--debug-addr is deprecated") {
		t.Error("no deprecation warning")
	}
	for _, url := range []string{"http://" + addr + "/metrics", "http://" + admin + "/metrics", "http://" + admin + "/debug/pprof/", "http://" + admin + "/readyz"} {
		resp, err := noKeepAlive.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: got %d, want 200", url, resp.StatusCode)
		}
	}
}

// TestFrameFlags: --frame-rate, --frame-burst and --max-fragments (and their variables)
// reach the gateway: 20 pings at once over a burst of 5 close the connection with 4029.
func TestFrameFlags(t *testing.T) {
	c, err := parseConfig(nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Gateway.Limits.FrameRate != 0 || c.Gateway.Limits.FrameBurst != 0 || c.Gateway.Limits.MaxFragments != 256 {
		t.Errorf("defaults differ from the documented ones: %+v", c)
	}
	c, err = parseConfig(nil, env(map[string]string{"HERALD_FRAME_RATE": "-1", "HERALD_FRAME_BURST": "7", "HERALD_MAX_FRAGMENTS": "0"}), &bytes.Buffer{})
	// --max-fragments 0 is no limit: the library's negative.
	if err != nil || c.Gateway.Limits.FrameRate != -1 || c.Gateway.Limits.FrameBurst != 7 || c.Gateway.Limits.MaxFragments != -1 {
		t.Errorf("environment not applied: %+v %v", c, err)
	}
	for _, args := range [][]string{{"--frame-burst", "-1"}, {"--max-fragments", "-1"}} {
		if _, err := parseConfig(args, env(nil), &bytes.Buffer{}); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}

	addr, _ := runGateway(t, "--frame-rate", "1", "--frame-burst", "5")
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 20 {
		_ = ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second))
	}
	for {
		if _, _, err = ws.ReadMessage(); err != nil {
			break
		}
	}
	if !websocket.IsCloseError(err, 4029) {
		t.Errorf("20 pings over a burst of 5: got %v, want close 4029", err)
	}
}

// TestDrainStopsTheAdminListener: the admin listener serves until the gateway stops,
// and is closed then.
func TestDrainStopsTheAdminListener(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json"},
			func(string) string { return "" }, pw)
		pw.Close()
	}()
	admin := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec struct{ Msg, Admin string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "herald gateway listening" {
				admin <- rec.Admin
			}
		}
	}()
	var addr string
	select {
	case addr = <-admin:
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not start")
	}
	resp, err := noKeepAlive.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel() // as SIGTERM does
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not stop")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the admin listener still accepts connections after the gateway stopped")
	}
}
