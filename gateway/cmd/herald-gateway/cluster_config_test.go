package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClusterSettings: the broker cluster's settings, their defaults and what
// --check-config refuses, each error naming its setting.
func TestClusterSettings(t *testing.T) {
	c, err := parseConfig(nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.AMQPHeartbeat != 5*time.Second || c.Stream.Replicas != 3 || c.Stream.LeaderLocator != "balanced" ||
		c.CanaryInterval != 5*time.Second || c.CanaryTimeout != 20*time.Second {
		t.Errorf("defaults: got heartbeat %v, replicas %d, locator %q, canary %v/%v; want 5s, 3, balanced, 5s/20s",
			c.AMQPHeartbeat, c.Stream.Replicas, c.Stream.LeaderLocator, c.CanaryInterval, c.CanaryTimeout)
	}
	if canaryInterval(c) != 5*time.Second {
		t.Errorf("canaryInterval: got %v", canaryInterval(c))
	}
	c.CanaryInterval = 0
	if canaryInterval(c) >= 0 {
		t.Errorf("canaryInterval of --canary-interval 0: got %v, want negative (off)", canaryInterval(c))
	}

	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	three := "amqp://guest:guest@a:5672/,amqp://guest:guest@b:5672/,amqp://guest:guest@c:5672/"
	tlsList := "amqps://guest:s3cret@a:5671/,amqps://guest:s3cret@b:5671/"
	for _, tt := range []struct {
		name string
		env  map[string]string
		want string // "" when valid
	}{
		{"three nodes", map[string]string{"HERALD_AMQP_URL": three}, ""},
		{"tls list without files", map[string]string{"HERALD_AMQP_URL": tlsList}, ""},
		{"a node twice", map[string]string{"HERALD_AMQP_URL": "amqp://a/,amqp://a/"}, "--amqp-url (HERALD_AMQP_URL): amqp://a/ is listed twice"},
		{"CA file missing", map[string]string{"HERALD_AMQP_URL": tlsList, "HERALD_AMQP_CA_FILE": filepath.Join(dir, "none.pem")}, "--amqp-ca-file (HERALD_AMQP_CA_FILE)"},
		{"CA file not PEM", map[string]string{"HERALD_AMQP_URL": tlsList, "HERALD_AMQP_CA_FILE": junk}, "no PEM certificate"},
		{"cert without key", map[string]string{"HERALD_AMQP_URL": tlsList, "HERALD_AMQP_CERT_FILE": junk}, "--amqp-cert-file (HERALD_AMQP_CERT_FILE): a client certificate needs both"},
		{"TLS files with amqp://", map[string]string{"HERALD_AMQP_URL": "amqps://a/,amqp://guest:s3cret@b/", "HERALD_AMQP_CA_FILE": junk}, "URL 2, amqp://guest:xxxxx@b/: TLS files are given, but it is not amqps://"},
		{"heartbeat under a second", map[string]string{"HERALD_AMQP_HEARTBEAT": "500ms"}, "--amqp-heartbeat (HERALD_AMQP_HEARTBEAT)"},
		{"replicas", map[string]string{"HERALD_STREAM_REPLICAS": "0"}, "--stream-replicas (HERALD_STREAM_REPLICAS): 0: want 1 to 255"},
		{"leader locator", map[string]string{"HERALD_STREAM_LEADER_LOCATOR": "random"}, "--stream-leader-locator (HERALD_STREAM_LEADER_LOCATOR)"},
		{"canary timeout not above the interval", map[string]string{"HERALD_CANARY_INTERVAL": "10s", "HERALD_CANARY_TIMEOUT": "10s"}, "--canary-timeout (HERALD_CANARY_TIMEOUT): 10s must be longer"},
		{"canary off", map[string]string{"HERALD_CANARY_INTERVAL": "0"}, ""},
		{"negative canary interval", map[string]string{"HERALD_CANARY_INTERVAL": "-1s"}, "--canary-interval (HERALD_CANARY_INTERVAL)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			code := run(t.Context(), []string{"--check-config", "--addr", "127.0.0.1:1"}, env(tt.env), &out)
			switch {
			case tt.want == "" && code != 0:
				t.Fatalf("--check-config: exit %d, want 0: %s", code, out.String())
			case tt.want != "" && (code != 2 || !strings.Contains(out.String(), tt.want)):
				t.Fatalf("--check-config: exit %d, %q; want 2 and an error containing %q", code, out.String(), tt.want)
			}
			if strings.Contains(out.String(), "s3cret") {
				t.Errorf("--check-config shows a password: %s", out.String())
			}
		})
	}
}
