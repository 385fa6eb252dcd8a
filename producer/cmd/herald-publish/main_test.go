package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqptest"
)

// result is what one run of the command did.
type result struct {
	code           int
	stdout, stderr string
}

// runCmd runs the command with args and stdin, bounded by a timeout.
func runCmd(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &stdout, &stderr)
	t.Logf("herald-publish %s: exit %d\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return result{code, stdout.String(), stderr.String()}
}

// receive returns the next n deliveries, or fails the test after 5s.
func receive(t *testing.T, deliveries <-chan amqp.Delivery, n int) []producer.Message {
	t.Helper()
	var out []producer.Message
	deadline := time.After(5 * time.Second)
	for len(out) < n {
		select {
		case d := <-deliveries:
			m, skipped, err := producer.Decode(d)
			if err != nil || len(skipped) > 0 {
				t.Fatalf("Decode: got %v (headers left out: %v), want nil", err, skipped)
			}
			out = append(out, m)
		case <-deadline:
			t.Fatalf("received %d deliveries in 5s, want %d", len(out), n)
		}
	}
	return out
}

func TestPublish(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	deliveries := amqptest.BindQueue(t, url, exchange, nil)
	base := []string{"-url", url, "-exchange", exchange}

	tests := []struct {
		name        string
		stdin       string
		args        []string
		wantIDs     []string // nil: n generated ids
		n           int
		wantData    string
		wantChannel string
		wantUsers   []string
	}{
		{name: "data as argument", args: []string{"-channel", "news", "-users", "alice, bob", `{"a": 1}`},
			n: 1, wantData: `{"a": 1}`, wantChannel: "news", wantUsers: []string{"alice", "bob"}},
		{name: "data from stdin", stdin: "[1, 2]\n", n: 1, wantData: `[1, 2]`},
		{name: "data from stdin with -", stdin: `"x"`, args: []string{"-id", "dash", "-"}, wantIDs: []string{"dash"}, n: 1, wantData: `"x"`},
		{name: "count with id", args: []string{"-count", "3", "-id", "batch", "7"},
			wantIDs: []string{"batch-1", "batch-2", "batch-3"}, n: 3, wantData: "7"},
		{name: "count without id", args: []string{"-count", "3", "null"}, n: 3, wantData: "null"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCmd(t, tc.stdin, append(slices.Clone(base), tc.args...)...)
			if r.code != exitOK {
				t.Fatalf("exit code: got %d, want %d; stderr: %s", r.code, exitOK, r.stderr)
			}
			ids := strings.Fields(r.stdout)
			if len(ids) != tc.n || (tc.wantIDs != nil && !slices.Equal(ids, tc.wantIDs)) {
				t.Fatalf("stdout ids: got %q, want %d ids %q", ids, tc.n, tc.wantIDs)
			}
			got := receive(t, deliveries, tc.n)
			for i, m := range got {
				if m.ID != ids[i] {
					t.Errorf("delivery %d id: got %q, want %q", i, m.ID, ids[i])
				}
				if string(m.Data) != tc.wantData {
					t.Errorf("delivery %d data: got %s, want %s", i, m.Data, tc.wantData)
				}
				if m.Channel != tc.wantChannel {
					t.Errorf("delivery %d channel: got %q, want %q", i, m.Channel, tc.wantChannel)
				}
				if !slices.Equal(m.Users, tc.wantUsers) {
					t.Errorf("delivery %d users: got %q, want %q", i, m.Users, tc.wantUsers)
				}
			}
			if tc.wantIDs == nil && tc.n > 1 && len(slices.Compact(slices.Sorted(slices.Values(ids)))) != tc.n {
				t.Errorf("generated ids: got %q, want %d distinct", ids, tc.n)
			}
		})
	}
}

func TestEnvironment(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url)
	deliveries := amqptest.BindQueue(t, url, exchange, nil)
	t.Setenv("HERALD_AMQP_URL", url)
	t.Setenv("HERALD_EXCHANGE", exchange)
	t.Setenv("HERALD_PUBLISH_CHANNEL", "from-env")
	t.Setenv("HERALD_PUBLISH_USERS", "erin")

	tests := []struct {
		name        string
		args        []string
		wantChannel string
	}{
		{"environment only", []string{"{}"}, "from-env"},
		{"flag overrides environment", []string{"-channel", "from-flag", "{}"}, "from-flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCmd(t, "", tc.args...)
			if r.code != exitOK {
				t.Fatalf("exit code: got %d, want %d", r.code, exitOK)
			}
			m := receive(t, deliveries, 1)[0]
			if m.Channel != tc.wantChannel {
				t.Errorf("channel: got %q, want %q", m.Channel, tc.wantChannel)
			}
			if !slices.Equal(m.Users, []string{"erin"}) {
				t.Errorf("users: got %q, want [erin]", m.Users)
			}
		})
	}
}

func TestNotConfirmed(t *testing.T) {
	url := amqptest.URL(t)
	exchange, _ := amqptest.Names(t, url) // nothing bound: every publish is returned

	tests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{"unroutable", []string{"-url", url, "-exchange", exchange, "{}"}, "unroutable"},
		{"unroutable, count 2", []string{"-url", url, "-exchange", exchange, "-count", "2", "{}"}, "unroutable"},
		{"broker unreachable", []string{"-url", "amqp://guest:guest@127.0.0.1:1/", "-exchange", exchange, "{}"}, "connection refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCmd(t, "", tc.args...)
			if r.code != exitUnconfirmed {
				t.Errorf("exit code: got %d, want %d", r.code, exitUnconfirmed)
			}
			if r.stdout != "" {
				t.Errorf("stdout: got %q, want nothing", r.stdout)
			}
			if !strings.Contains(r.stderr, tc.wantStderr) {
				t.Errorf("stderr: got %q, want it to contain %q", r.stderr, tc.wantStderr)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	// None of these reaches a broker: nothing listens on this URL.
	url := "amqp://guest:guest@127.0.0.1:1/"
	tests := []struct {
		name       string
		stdin      string
		args       []string
		env        map[string]string
		wantStderr string
	}{
		{name: "invalid JSON argument", args: []string{"{nope"}, wantStderr: "not valid JSON"},
		{name: "invalid JSON on stdin", stdin: "hello", wantStderr: "not valid JSON"},
		{name: "empty stdin", wantStderr: "not valid JSON"},
		{name: "two arguments", args: []string{"1", "2"}, wantStderr: "want at most one"},
		{name: "unknown flag", args: []string{"-nope", "1"}, wantStderr: "flag provided but not defined"},
		{name: "count zero", args: []string{"-count", "0", "1"}, wantStderr: "-count"},
		{name: "bad timeout", args: []string{"-timeout", "-1s", "1"}, wantStderr: "-timeout"},
		{name: "bad channel", args: []string{"-channel", "a b", "1"}, wantStderr: "invalid channel name"},
		{name: "empty user", args: []string{"-users", "a,,b", "1"}, wantStderr: "invalid user"},
		{name: "bad environment value", args: []string{"1"}, env: map[string]string{"HERALD_PUBLISH_COUNT": "many"}, wantStderr: "HERALD_PUBLISH_COUNT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r := runCmd(t, tc.stdin, append([]string{"-url", url}, tc.args...)...)
			if r.code != exitUsage {
				t.Errorf("exit code: got %d, want %d", r.code, exitUsage)
			}
			if r.stdout != "" {
				t.Errorf("stdout: got %q, want nothing", r.stdout)
			}
			if !strings.Contains(r.stderr, tc.wantStderr) {
				t.Errorf("stderr: got %q, want it to contain %q", r.stderr, tc.wantStderr)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	r := runCmd(t, "", "-help")
	if r.code != exitOK {
		t.Errorf("exit code: got %d, want %d", r.code, exitOK)
	}
	for _, want := range []string{
		"usage: herald-publish",
		"HERALD_AMQP_URL", "HERALD_EXCHANGE", "HERALD_PUBLISH_CHANNEL", "HERALD_PUBLISH_USERS",
		"HERALD_PUBLISH_ID", "HERALD_PUBLISH_COUNT", "HERALD_PUBLISH_TIMEOUT",
		`(default "amqp://guest:guest@127.0.0.1:5672/")`, `(default "herald")`, "(default 10s)", "(default 1)",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("help: got %q, want it to contain %q", r.stderr, want)
		}
	}
}

// errReader fails every read.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, fmt.Errorf("broken stdin") }

func TestStdinError(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), nil, io.Reader(errReader{}), &stdout, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), "broken stdin") {
		t.Errorf("run with a failing stdin: got exit %d, stderr %q; want %d and the read error", code, stderr.String(), exitUsage)
	}
}
