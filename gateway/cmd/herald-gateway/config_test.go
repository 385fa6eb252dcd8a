package main

import (
	"bytes"
	"flag"
	"math"
	"regexp"
	"slices"
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
			if c.Listen.Addr != ":8080" || c.AMQPURL != "" || c.Gateway.APIKey != "" || c.Gateway.WriteQueueBytes != 1<<20 ||
				c.Gateway.MaxMessageBytes != 64<<10 || c.Stream.Exchange != "herald" || c.Stream.MaxAge != 24*time.Hour {
				return "defaults differ from the documented ones"
			}
			return ""
		}},
		{"environment", nil, map[string]string{
			"HERALD_ADDR": "127.0.0.1:9000", "HERALD_AMQP_URL": "amqp://x", "HERALD_API_KEY": "k",
			"HERALD_NODE_ID": "n1", "HERALD_WRITE_QUEUE_BYTES": "2048", "HERALD_PING_INTERVAL": "3s",
			"HERALD_INSECURE_USER_PARAM": "true",
		}, func(c config) string {
			if c.Listen.Addr != "127.0.0.1:9000" || c.AMQPURL != "amqp://x" || c.Gateway.APIKey != "k" || c.Gateway.NodeID != "n1" ||
				c.Gateway.WriteQueueBytes != 2048 || c.Gateway.PingInterval != 3*time.Second || !c.Gateway.InsecureUserParam {
				return "environment not applied"
			}
			return ""
		}},
		{"presence, compression and writers", nil, map[string]string{
			"HERALD_PRESENCE_CHANNELS": "room,chat:*", "HERALD_PRESENCE_EXCLUDE": "chat:secret",
			"HERALD_PRESENCE_INTERVAL": "250ms", "HERALD_PRESENCE_TTL": "20s", "HERALD_NO_USER_PRESENCE": "true",
			"HERALD_COMPRESSION": "true", "HERALD_COMPRESSION_LEVEL": "6", "HERALD_COMPRESSION_MIN_BYTES": "512",
			"HERALD_WRITE_WORKERS": "3", "HERALD_WRITE_SPREAD_AFTER": "5ms",
		}, func(c config) string {
			if !slices.Equal(c.Presence.Channels, []string{"room", "chat:*"}) || !slices.Equal(c.Presence.Exclude, []string{"chat:secret"}) || c.Presence.Interval != 250*time.Millisecond ||
				c.Presence.TTL != 20*time.Second || !c.Presence.NoUsers || c.Presence.SnapshotInterval != 5*time.Second ||
				!c.Gateway.Compression || c.Gateway.CompressionLevel != 6 || c.Gateway.CompressionMinBytes != 512 || c.Gateway.WriteWorkers != 3 || c.Gateway.WriteSpreadAfter != 5*time.Millisecond {
				return "presence, compression or writer settings not applied"
			}
			return ""
		}},
		{"flag wins over environment", []string{"--addr", ":7000", "--write-queue-bytes", "4096"},
			map[string]string{"HERALD_ADDR": ":9000", "HERALD_WRITE_QUEUE_BYTES": "2048"}, func(c config) string {
				if c.Listen.Addr != ":7000" || c.Gateway.WriteQueueBytes != 4096 {
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
		{"addr without a port", []string{"--addr", "nonsense"}, nil, "missing port"},
		{"addr port out of range", []string{"--addr", ":70000"}, nil, "is not a port number"},
		{"addr host", []string{"--addr", "bad_host!:80"}, nil, "is not an IP address or a host name"},
		{"debug addr", []string{"--debug-addr", "6060"}, nil, "--debug-addr (HERALD_DEBUG_ADDR)"},
		{"amqp url of another scheme", []string{"--amqp-url", "http://x"}, nil, "want an amqp:// or amqps:// URL"},
		{"amqp url without a host", []string{"--amqp-url", "amqp://"}, nil, "no host"},
		{"amqp url port", []string{"--amqp-url", "amqp://guest:guest@h:99999/"}, nil, "port 99999"},
		{"amqp url parameter", nil, map[string]string{"HERALD_AMQP_URL": "amqp://h/?heartbeat=often"}, "heartbeat"},
		{"amqp url list, one bad", []string{"--amqp-url", "amqp://a/,http://b/"}, nil, "URL 2 of 2"},
		{"size with an unknown unit", []string{"--write-queue-bytes", "2XB"}, nil, "KiB, MiB, GiB"},
		{"negative size", nil, map[string]string{"HERALD_STREAM_MAX_BYTES": "-1GiB"}, "must not be negative"},
		{"size overflow", []string{"--retain-bytes", "9999999999TiB"}, nil, "too large"},
		{"size over an int32 setting", []string{"--socket-send-buffer", "3GiB"}, nil, "over the most"},
		{"fraction of a byte", []string{"--max-message-bytes", "1.5"}, nil, "not a whole number of bytes"},
		{"allowed origin", []string{"--allowed-origins", "https://*"}, nil, "--allowed-origins (HERALD_ALLOWED_ORIGINS)"},
		{"secret with another alg", []string{"--jwt-secret", strings.Repeat("s", 32), "--jwt-alg", "ES256"}, nil, "HS256 only"},
		{"public key file missing", []string{"--jwt-public-key", "/nonexistent.pem"}, nil, "--jwt-public-key (HERALD_JWT_PUBLIC_KEY)"},
		{"exchange too long", []string{"--exchange", strings.Repeat("x", 256)}, nil, "1 to 255 bytes"},
		{"prefetch over AMQP's limit", []string{"--prefetch", "70000"}, nil, "65535"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := parseConfig(tt.args, env(tt.env), &out)
			if err == nil || !strings.Contains(err.Error()+out.String(), tt.want) {
				t.Fatalf("got %v, want an error naming %q", err, tt.want)
			}
			// Every error names its setting, flag and variable.
			if tt.name != "stray argument" && tt.name != "unknown flag" &&
				!regexp.MustCompile(`--[a-z-]+ \(HERALD_[A-Z_]+\)`).MatchString(err.Error()) {
				t.Errorf("error %q does not name its setting as --flag (HERALD_VARIABLE)", err)
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
		// Sizes as the README writes them.
		{map[string]string{"HERALD_STREAM_MAX_BYTES": "2GiB", "HERALD_WRITE_QUEUE_BYTES": "256KiB", "HERALD_MAX_MESSAGE_BYTES": "1MB"}, 0},
		{map[string]string{"HERALD_AMQP_URL": "amqps://herald:s3cret@rabbit.example.com:5671/prod?heartbeat=30"}, 0},
		// What the gateway would fail on at start.
		{map[string]string{"HERALD_ADDR": "nonsense"}, 2},
		{map[string]string{"HERALD_AMQP_URL": "http://x"}, 2},
		{map[string]string{"HERALD_ALLOWED_ORIGINS": "https://*"}, 2},
	} {
		var out bytes.Buffer
		args := []string{"--check-config"}
		if tt.env["HERALD_ADDR"] == "" {
			args = append(args, "--addr", "127.0.0.1:1")
		}
		if got := run(t.Context(), args, env(tt.env), &out); got != tt.want {
			t.Errorf("%v: exit %d, want %d (%s)", tt.env, got, tt.want, strings.TrimSpace(out.String()))
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64 // -1: an error
	}{
		{"0", 0}, {"1048576", 1 << 20}, {"1b", 1}, {"64KiB", 64 << 10}, {"64kib", 64 << 10}, {"2GiB", 2 << 30},
		{"2 GiB", 2 << 30}, {" 2gib ", 2 << 30}, {"1.5GiB", 3 << 29}, {"1MiB", 1 << 20}, {"1TiB", 1 << 40},
		{"500KB", 500_000}, {"500kb", 500_000}, {"1MB", 1_000_000}, {"2GB", 2_000_000_000}, {"1.5MB", 1_500_000},
		{"0.5KiB", 512}, {"9223372036854775807", math.MaxInt64}, {"8388607TiB", 8388607 << 40},
		{"-1", -1}, {"-1GiB", -1}, {"", -1}, {"GiB", -1}, {"2XB", -1}, {"2 G", -1}, {"1.5", -1}, {".5GiB", -1},
		{"1..5GiB", -1}, {"1.GiB", -1}, {"0.1b", -1}, {"1e6", -1}, {"0x10", -1}, {"+5", -1},
		{"9223372036854775808", -1}, {"8388608TiB", -1}, {"9999999999999999999999", -1},
		{"0.0000000000000000001GiB", -1},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		switch {
		case tt.want < 0 && err == nil:
			t.Errorf("parseSize(%q): got %d, want an error", tt.in, got)
		case tt.want >= 0 && (err != nil || got != tt.want):
			t.Errorf("parseSize(%q): got %d, %v, want %d", tt.in, got, err, tt.want)
		}
	}
	for _, n := range []int64{0, 1, 1000, 1 << 10, 3 << 29, 1 << 30, 1<<40 + 1, math.MaxInt64} {
		if got, err := parseSize(formatSize(n)); err != nil || got != n {
			t.Errorf("parseSize(formatSize(%d) = %q): got %d, %v", n, formatSize(n), got, err)
		}
	}
}

// TestSizeSettingsTakeUnits: every size setting takes units, from a flag or its variable.
func TestSizeSettingsTakeUnits(t *testing.T) {
	c, err := parseConfig([]string{"--write-queue-bytes", "2MiB", "--max-header-bytes", "32KiB", "--compression-min-bytes", "1KiB"},
		env(map[string]string{"HERALD_STREAM_MAX_BYTES": "2GiB", "HERALD_STREAM_SEGMENT_BYTES": "100MB", "HERALD_RETAIN_BYTES": "128mib",
			"HERALD_MAX_MESSAGE_BYTES": "1MB", "HERALD_SOCKET_SEND_BUFFER": "64KiB"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Gateway.WriteQueueBytes != 2<<20 || c.Listen.MaxHeaderBytes != 32<<10 || c.Gateway.CompressionMinBytes != 1<<10 || c.Stream.MaxBytes != 2<<30 ||
		c.Stream.SegmentBytes != 100_000_000 || c.Embedded.RetainBytes != 128<<20 || c.Gateway.MaxMessageBytes != 1_000_000 || c.Gateway.SocketSendBuffer != 64<<10 {
		t.Errorf("sizes not applied: %+v", c)
	}
}

// TestEveryFlagHasItsTwin: every flag has the environment variable its errors name, and
// -help says what each takes.
func TestEveryFlagHasItsTwin(t *testing.T) {
	var help bytes.Buffer
	if _, err := parseConfig([]string{"-help"}, env(nil), &help); err != flag.ErrHelp {
		t.Fatalf("got %v, want flag.ErrHelp", err)
	}
	flags := regexp.MustCompile(`(?m)^  --([a-z-]+)( [a-z]+)?\n\s+(.*)$`).FindAllStringSubmatch(help.String(), -1)
	if len(flags) < 60 {
		t.Fatalf("-help lists %d flags, want every one:\n%s", len(flags), help.String())
	}
	for _, f := range flags {
		if f[1] == "check-config" {
			continue
		}
		if !strings.Contains(f[3], "(env "+envName(f[1])+")") {
			t.Errorf("--%s: usage %q does not name its variable %s", f[1], f[3], envName(f[1]))
		}
	}
	for _, want := range []string{"--write-queue-bytes size", "--ping-interval duration", "--prefetch integer",
		"--handshake-rate number", "--addr string", "--compression\n"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("-help lacks %q", want)
		}
	}
	if !strings.Contains(help.String(), "(default 1MiB)") {
		t.Errorf("-help does not show the write queue's default as a size:\n%s", help.String())
	}
}
