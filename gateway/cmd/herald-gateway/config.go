package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// config is everything the gateway is started with: flags, each with an environment
// variable twin. A flag given on the command line wins over its variable.
type config struct {
	Addr              string
	NodeID            string
	APIKey            string
	AMQPURL           string
	Exchange          string
	Stream            string
	StreamMaxAge      time.Duration
	StreamMaxBytes    int64
	Prefetch          int
	RetainMessages    int
	RetainBytes       int64
	WriteQueueBytes   int
	MaxMessageBytes   int64
	WriteTimeout      time.Duration
	PingInterval      time.Duration
	PublishTimeout    time.Duration
	DedupWindow       time.Duration
	ShutdownTimeout   time.Duration
	NoClientPublish   bool
	InsecureUserParam bool
	DebugAddr         string
	LogFormat         string
	LogLevel          string
}

// envFlags defines flags whose defaults come from environment variables.
type envFlags struct {
	fs     *flag.FlagSet
	getenv func(string) string
	errs   []error
}

func (e *envFlags) env(name, envName, usage string) (string, string, bool) {
	v := e.getenv(envName)
	return v, fmt.Sprintf("%s (env %s)", usage, envName), v != ""
}

func (e *envFlags) str(p *string, name, envName, def, usage string) {
	v, usage, ok := e.env(name, envName, usage)
	if !ok {
		v = def
	}
	e.fs.StringVar(p, name, def, usage)
	*p = v
}

func (e *envFlags) dur(p *time.Duration, name, envName string, def time.Duration, usage string) {
	e.fs.DurationVar(p, name, def, "")
	e.fromEnv(name, envName, usage)
}

func (e *envFlags) int(p *int, name, envName string, def int, usage string) {
	e.fs.IntVar(p, name, def, "")
	e.fromEnv(name, envName, usage)
}

func (e *envFlags) int64(p *int64, name, envName string, def int64, usage string) {
	e.fs.Int64Var(p, name, def, "")
	e.fromEnv(name, envName, usage)
}

func (e *envFlags) bool(p *bool, name, envName string, usage string) {
	e.fs.BoolVar(p, name, false, "")
	e.fromEnv(name, envName, usage)
}

// fromEnv sets the usage of a defined flag and, when its variable is set, its value,
// through the flag's own parser so that the variable takes exactly what the flag takes.
func (e *envFlags) fromEnv(name, envName, usage string) {
	f := e.fs.Lookup(name)
	f.Usage = fmt.Sprintf("%s (env %s)", usage, envName)
	if v := e.getenv(envName); v != "" {
		if err := f.Value.Set(v); err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q: %w", envName, v, err))
		}
	}
}

// parseConfig reads flags from args, with defaults from the environment. It returns
// flag.ErrHelp after printing usage for -h or --help.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("herald-gateway", flag.ContinueOnError)
	fs.SetOutput(out)
	e := &envFlags{fs: fs, getenv: getenv}
	host, _ := os.Hostname()
	if host == "" {
		host = "herald"
	}

	e.str(&c.Addr, "addr", "HERALD_ADDR", ":8080", "address to listen on")
	e.str(&c.NodeID, "node-id", "HERALD_NODE_ID", host, "this gateway's name in welcome frames and logs")
	e.str(&c.APIKey, "api-key", "HERALD_API_KEY", "", "bearer key of POST /api/publish; empty turns the API off")
	e.str(&c.AMQPURL, "amqp-url", "HERALD_AMQP_URL", "", "RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/; empty runs the embedded bus (one gateway)")
	e.str(&c.Exchange, "exchange", "HERALD_EXCHANGE", "herald", "RabbitMQ fanout exchange that publishers publish to")
	e.str(&c.Stream, "stream", "HERALD_STREAM", "herald.stream", "RabbitMQ stream queue bound to the exchange; it gives messages their offsets")
	e.dur(&c.StreamMaxAge, "stream-max-age", "HERALD_STREAM_MAX_AGE", 24*time.Hour, "how long the stream retains messages")
	e.int64(&c.StreamMaxBytes, "stream-max-bytes", "HERALD_STREAM_MAX_BYTES", 1<<30, "how many bytes the stream retains")
	e.int(&c.Prefetch, "prefetch", "HERALD_PREFETCH", 1000, "unacknowledged stream messages the consumer may hold")
	e.int(&c.RetainMessages, "retain-messages", "HERALD_RETAIN_MESSAGES", 10000, "embedded bus: messages kept for resume")
	e.int64(&c.RetainBytes, "retain-bytes", "HERALD_RETAIN_BYTES", 64<<20, "embedded bus: bytes of data kept for resume")
	e.int(&c.WriteQueueBytes, "write-queue-bytes", "HERALD_WRITE_QUEUE_BYTES", 1<<20, "per-connection write queue cap; over it the client is closed with 4008")
	e.int64(&c.MaxMessageBytes, "max-message-bytes", "HERALD_MAX_MESSAGE_BYTES", 64<<10, "largest client frame (else close 1009) and HTTP publish body (else 413)")
	e.dur(&c.WriteTimeout, "write-timeout", "HERALD_WRITE_TIMEOUT", 10*time.Second, "deadline of each socket write")
	e.dur(&c.PingInterval, "ping-interval", "HERALD_PING_INTERVAL", 25*time.Second, "how often clients are pinged; one silent for this plus 10s is dropped")
	e.dur(&c.PublishTimeout, "publish-timeout", "HERALD_PUBLISH_TIMEOUT", 5*time.Second, "bound on one publish to the bus")
	e.dur(&c.DedupWindow, "dedup-window", "HERALD_DEDUP_WINDOW", 2*time.Minute, "a message id seen again within this window is delivered once")
	e.dur(&c.ShutdownTimeout, "shutdown-timeout", "HERALD_SHUTDOWN_TIMEOUT", 30*time.Second, "how long a drain on SIGTERM may take")
	e.bool(&c.NoClientPublish, "no-client-publish", "HERALD_NO_CLIENT_PUBLISH", "refuse publish ops from WebSocket clients")
	e.bool(&c.InsecureUserParam, "insecure-user-param", "HERALD_INSECURE_USER_PARAM", "INSECURE, demos and tests only: take the user from ?user= with no authentication")
	e.str(&c.DebugAddr, "debug-addr", "HERALD_DEBUG_ADDR", "", "address of a separate listener with /debug/pprof for profiling, e.g. 127.0.0.1:6060; empty: off")
	e.str(&c.LogFormat, "log-format", "HERALD_LOG_FORMAT", "text", "log format: text or json")
	e.str(&c.LogLevel, "log-level", "HERALD_LOG_LEVEL", "info", "log level: debug, info, warn or error")

	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: herald-gateway [flags]\n\nHerald's WebSocket gateway. Every flag has an environment variable twin; a flag wins over its variable.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if err := errors.Join(e.errs...); err != nil {
		return c, err
	}
	return c, c.validate()
}

func (c *config) validate() error {
	var errs []error
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("log-format %q: want text or json", c.LogFormat))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	positive := map[string]int64{
		"prefetch": int64(c.Prefetch), "retain-messages": int64(c.RetainMessages),
		"retain-bytes": c.RetainBytes, "write-queue-bytes": int64(c.WriteQueueBytes),
		"max-message-bytes": c.MaxMessageBytes, "stream-max-bytes": c.StreamMaxBytes,
		"write-timeout": int64(c.WriteTimeout), "ping-interval": int64(c.PingInterval),
		"publish-timeout": int64(c.PublishTimeout), "shutdown-timeout": int64(c.ShutdownTimeout),
		"stream-max-age": int64(c.StreamMaxAge),
	}
	for name, v := range positive {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(c config, out io.Writer) *slog.Logger {
	level, _ := parseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(out, opts))
	}
	return slog.New(slog.NewTextHandler(out, opts))
}
