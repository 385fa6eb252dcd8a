package main

import (
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestConfigFlagsAndEnvironment(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(c config) string
	}{
		{"defaults", nil, nil, func(c config) string {
			if c.Addr != ":8080" || c.AMQPURL != "" || c.APIKey != "" || c.WriteQueueBytes != 1<<20 ||
				c.MaxMessageBytes != 64<<10 || c.Exchange != "herald" || c.StreamMaxAge != 24*time.Hour {
				return "defaults differ from the documented ones"
			}
			return ""
		}},
		{"environment", nil, map[string]string{
			"HERALD_ADDR": "127.0.0.1:9000", "HERALD_AMQP_URL": "amqp://x", "HERALD_API_KEY": "k",
			"HERALD_NODE_ID": "n1", "HERALD_WRITE_QUEUE_BYTES": "2048", "HERALD_PING_INTERVAL": "3s",
			"HERALD_INSECURE_USER_PARAM": "true",
		}, func(c config) string {
			if c.Addr != "127.0.0.1:9000" || c.AMQPURL != "amqp://x" || c.APIKey != "k" || c.NodeID != "n1" ||
				c.WriteQueueBytes != 2048 || c.PingInterval != 3*time.Second || !c.InsecureUserParam {
				return "environment not applied"
			}
			return ""
		}},
		{"presence, compression and writers", nil, map[string]string{
			"HERALD_PRESENCE_CHANNELS": "room,chat:*", "HERALD_PRESENCE_EXCLUDE": "chat:secret",
			"HERALD_PRESENCE_INTERVAL": "250ms", "HERALD_PRESENCE_TTL": "20s", "HERALD_NO_USER_PRESENCE": "true",
			"HERALD_COMPRESSION": "true", "HERALD_COMPRESSION_LEVEL": "6", "HERALD_COMPRESSION_MIN_BYTES": "512",
			"HERALD_WRITE_WORKERS": "3",
		}, func(c config) string {
			if c.PresenceChannels != "room,chat:*" || c.PresenceExclude != "chat:secret" || c.PresenceInterval != 250*time.Millisecond ||
				c.PresenceTTL != 20*time.Second || !c.NoUserPresence || c.PresenceSnapshot != 5*time.Second ||
				!c.Compression || c.CompressLevel != 6 || c.CompressMinBytes != 512 || c.WriteWorkers != 3 {
				return "presence, compression or writer settings not applied"
			}
			return ""
		}},
		{"flag wins over environment", []string{"--addr", ":7000", "--write-queue-bytes", "4096"},
			map[string]string{"HERALD_ADDR": ":9000", "HERALD_WRITE_QUEUE_BYTES": "2048"}, func(c config) string {
				if c.Addr != ":7000" || c.WriteQueueBytes != 4096 {
					return "flag did not win"
				}
				return ""
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig(tt.args, env(tt.env), &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if msg := tt.check(c); msg != "" {
				t.Errorf("%s: got %+v", msg, c)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"bad env number", nil, map[string]string{"HERALD_WRITE_QUEUE_BYTES": "lots"}, "HERALD_WRITE_QUEUE_BYTES"},
		{"bad env duration", nil, map[string]string{"HERALD_PING_INTERVAL": "5"}, "HERALD_PING_INTERVAL"},
		{"bad log format", []string{"--log-format", "xml"}, nil, "log-format"},
		{"bad log level", []string{"--log-level", "loud"}, nil, "log-level"},
		{"zero queue", []string{"--write-queue-bytes", "0"}, nil, "write-queue-bytes"},
		{"stray argument", []string{"serve"}, nil, "unexpected arguments"},
		{"unknown flag", []string{"--nope"}, nil, "nope"},
		{"compression level", []string{"--compression-level", "10"}, nil, "compression-level"},
		{"presence ttl under the snapshot interval", []string{"--presence-ttl", "2s", "--presence-snapshot-interval", "5s"}, nil, "presence-ttl"},
		{"bad env bool", nil, map[string]string{"HERALD_COMPRESSION": "bogus"}, "HERALD_COMPRESSION"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := parseConfig(tt.args, env(tt.env), &out)
			if err == nil || !strings.Contains(err.Error()+out.String(), tt.want) {
				t.Errorf("got %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

// TestHelpDocumentsEveryFlag: -help lists every flag with its environment twin.
func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseConfig([]string{"-help"}, env(nil), &out); err != flag.ErrHelp {
		t.Fatalf("got %v, want flag.ErrHelp", err)
	}
	for _, name := range []string{"addr", "amqp-url", "api-key", "node-id", "write-queue-bytes", "max-message-bytes",
		"exchange", "stream", "stream-max-age", "stream-max-bytes", "prefetch", "shutdown-timeout", "insecure-user-param",
		"log-format", "log-level", "dedup-window", "retain-messages"} {
		if !strings.Contains(out.String(), "-"+name+" ") && !strings.Contains(out.String(), "-"+name+"\n") {
			t.Errorf("-help does not list -%s", name)
		}
	}
	if n := strings.Count(out.String(), "(env HERALD_"); n < 20 {
		t.Errorf("-help names %d environment variables, want one per flag (22)", n)
	}
}

// TestCheckConfig: --check-config exits 0 for a configuration the gateway starts with and
// 2 for one it refuses, without starting anything.
func TestCheckConfig(t *testing.T) {
	for _, tt := range []struct {
		env  map[string]string
		want int
	}{
		{map[string]string{"HERALD_PRESENCE_CHANNELS": "room", "HERALD_COMPRESSION": "true"}, 0},
		{map[string]string{"HERALD_COMPRESSION": "yes please"}, 2},
		{map[string]string{"HERALD_JWT_SECRET": "short"}, 2},
	} {
		var out bytes.Buffer
		if got := run(t.Context(), []string{"--check-config", "--addr", "127.0.0.1:1"}, env(tt.env), &out); got != tt.want {
			t.Errorf("%v: exit %d, want %d (%s)", tt.env, got, tt.want, strings.TrimSpace(out.String()))
		}
	}
}
