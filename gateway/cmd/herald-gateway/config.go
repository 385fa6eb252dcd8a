package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// config is everything the gateway is started with: flags, each with an environment
// variable twin. A flag given on the command line wins over its variable.
type config struct {
	Addr             string
	NodeID           string
	APIKey           string
	AMQPURL          string
	Exchange         string
	Stream           string
	StreamMaxAge     time.Duration
	StreamMaxBytes   int64
	StreamSegment    int64
	Prefetch         int
	RetainMessages   int
	RetainBytes      int64
	WriteQueueBytes  int
	MaxMessageBytes  int64
	WriteTimeout     time.Duration
	PingInterval     time.Duration
	PublishTimeout   time.Duration
	FlushInterval    time.Duration
	WriteWorkers     int
	Compression      bool
	CompressMinBytes int
	CompressLevel    int
	SocketSendBuffer int
	DedupWindow      time.Duration
	ShutdownTimeout  time.Duration

	// Presence (README "Presence").
	PresenceChannels  string // comma-separated patterns
	PresenceExclude   string // comma-separated patterns
	NoUserPresence    bool
	PresenceInterval  time.Duration
	PresenceSnapshot  time.Duration
	PresenceTTL       time.Duration
	PresenceExchange  string
	PresenceMaxList   int
	NoClientPublish   bool
	InsecureUserParam bool
	DebugAddr         string
	CheckOnly         bool
	LogFormat         string
	LogLevel          string

	// Authentication, origins and limits (README "Authentication and limits").
	JWTSecret           string
	JWTPublicKey        string // path of a PEM file
	JWKSURL             string
	JWKSRefresh         time.Duration
	JWTAlg              string
	JWTAudience         string
	JWTIssuer           string
	JWTLeeway           time.Duration
	AllowAnonymous      bool
	DefaultChannels     string // comma-separated patterns
	DefaultPublish      string // comma-separated patterns
	AllowedOrigins      string // comma-separated
	TrustedProxies      string // comma-separated CIDRs or addresses
	MaxConnections      int
	MaxConnectionsPerIP int
	HandshakeRate       float64
	HandshakeBurst      int
	MessageRate         float64
	MessageBurst        int
	MaxViolations       int
	MaxSubscriptions    int
	ReadHeaderTimeout   time.Duration
	IdleTimeout         time.Duration
	MaxHeaderBytes      int

	// The listeners (README "Operating it").
	ReadTimeout     time.Duration
	MaxPending      int
	MaxPendingPerIP int
	AdminAddr       string

	// WebSocket frames (README "Authentication and limits").
	FrameRate    float64
	FrameBurst   int
	MaxFragments int
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

func (e *envFlags) float(p *float64, name, envName string, def float64, usage string) {
	e.fs.Float64Var(p, name, def, "")
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
	e.int64(&c.StreamSegment, "stream-segment-bytes", "HERALD_STREAM_SEGMENT_BYTES", 0, "size of the stream's segment files, the unit retention deletes; 0: the broker's default (500 MB)")
	e.int(&c.Prefetch, "prefetch", "HERALD_PREFETCH", 1000, "unacknowledged stream messages the consumer may hold")
	e.int(&c.RetainMessages, "retain-messages", "HERALD_RETAIN_MESSAGES", 10000, "embedded bus: messages kept for resume")
	e.int64(&c.RetainBytes, "retain-bytes", "HERALD_RETAIN_BYTES", 64<<20, "embedded bus: bytes of data kept for resume")
	e.int(&c.WriteQueueBytes, "write-queue-bytes", "HERALD_WRITE_QUEUE_BYTES", 1<<20, "per-connection write queue cap; over it the client is closed with 4008")
	e.int64(&c.MaxMessageBytes, "max-message-bytes", "HERALD_MAX_MESSAGE_BYTES", 64<<10, "largest client frame (else close 1009) and HTTP publish body (else 413)")
	e.dur(&c.WriteTimeout, "write-timeout", "HERALD_WRITE_TIMEOUT", 10*time.Second, "deadline of each socket write")
	e.dur(&c.PingInterval, "ping-interval", "HERALD_PING_INTERVAL", 25*time.Second, "how often clients are pinged; one silent for this plus 10s is dropped")
	e.int(&c.SocketSendBuffer, "socket-send-buffer", "HERALD_SOCKET_SEND_BUFFER", 0, "kernel send buffer per connection (SO_SNDBUF) in bytes; bounds kernel memory per client; 0: the kernel's autotuning")
	e.dur(&c.FlushInterval, "flush-interval", "HERALD_FLUSH_INTERVAL", 10*time.Millisecond, "a connection that wrote within this interval waits for the next one, and its frames go out in one write; negative: write each at once")
	e.bool(&c.Compression, "compression", "HERALD_COMPRESSION", "negotiate permessage-deflate with clients that offer it (each message is compressed once for all of them)")
	e.int(&c.CompressMinBytes, "compression-min-bytes", "HERALD_COMPRESSION_MIN_BYTES", 256, "frames smaller than this go uncompressed")
	e.int(&c.CompressLevel, "compression-level", "HERALD_COMPRESSION_LEVEL", 1, "deflate level: 1 (fastest) to 9 (smallest)")
	e.int(&c.WriteWorkers, "write-workers", "HERALD_WRITE_WORKERS", 0, "writer workers that write the connections' queues, each on its own core; 0: one per core but one (GOMAXPROCS-1, at least 1); negative: a goroutine per write instead")
	e.dur(&c.PublishTimeout, "publish-timeout", "HERALD_PUBLISH_TIMEOUT", 5*time.Second, "bound on one publish to the bus")
	e.dur(&c.DedupWindow, "dedup-window", "HERALD_DEDUP_WINDOW", 2*time.Minute, "a message id seen again within this window is delivered once")
	e.dur(&c.ShutdownTimeout, "shutdown-timeout", "HERALD_SHUTDOWN_TIMEOUT", 30*time.Second, "how long a drain on SIGTERM may take")
	e.str(&c.PresenceChannels, "presence-channels", "HERALD_PRESENCE_CHANNELS", "", "channels with presence (who is online), comma-separated names or prefix* patterns, * for all; empty: none")
	e.str(&c.PresenceExclude, "presence-exclude", "HERALD_PRESENCE_EXCLUDE", "", "channels without presence even where --presence-channels names them, as patterns")
	e.bool(&c.NoUserPresence, "no-user-presence", "HERALD_NO_USER_PRESENCE", "do not track which users are online at all (GET /api/users/{id})")
	e.dur(&c.PresenceInterval, "presence-interval", "HERALD_PRESENCE_INTERVAL", time.Second, "how often presence changes go to the other gateways; join and leave events are coalesced over it")
	e.dur(&c.PresenceSnapshot, "presence-snapshot-interval", "HERALD_PRESENCE_SNAPSHOT_INTERVAL", 5*time.Second, "how often each gateway sends its whole presence state")
	e.dur(&c.PresenceTTL, "presence-ttl", "HERALD_PRESENCE_TTL", 15*time.Second, "a gateway with no presence update within this leaves the others' views (killed or cut off)")
	e.str(&c.PresenceExchange, "presence-exchange", "HERALD_PRESENCE_EXCHANGE", "herald.presence", "RabbitMQ fanout exchange that carries presence between gateways")
	e.int(&c.PresenceMaxList, "presence-max-list", "HERALD_PRESENCE_MAX_LIST", 1000, "most users one presence answer lists (clients page with after)")
	e.bool(&c.NoClientPublish, "no-client-publish", "HERALD_NO_CLIENT_PUBLISH", "refuse publish ops from WebSocket clients")
	e.bool(&c.InsecureUserParam, "insecure-user-param", "HERALD_INSECURE_USER_PARAM", "INSECURE, demos and tests only: take the user from ?user= with no authentication")
	e.str(&c.DebugAddr, "debug-addr", "HERALD_DEBUG_ADDR", "", "deprecated, use --admin-addr: the same listener, but /metrics stays on the public one too")
	e.str(&c.JWTSecret, "jwt-secret", "HERALD_JWT_SECRET", "", "HS256 shared secret that verifies client tokens (JWT); one of --jwt-secret, --jwt-public-key, --jwks-url turns authentication on")
	e.str(&c.JWTPublicKey, "jwt-public-key", "HERALD_JWT_PUBLIC_KEY", "", "PEM file of the RSA (RS256) or ECDSA P-256 (ES256) public key that verifies client tokens")
	e.str(&c.JWKSURL, "jwks-url", "HERALD_JWKS_URL", "", "URL of a JSON Web Key Set whose keys (by kid) verify client tokens")
	e.dur(&c.JWKSRefresh, "jwks-refresh", "HERALD_JWKS_REFRESH", 10*time.Minute, "how often the JWKS is fetched again")
	e.str(&c.JWTAlg, "jwt-alg", "HERALD_JWT_ALG", "", "the only token algorithm accepted: HS256, RS256 or ES256 (default: the key's; RS256 for a JWKS)")
	e.str(&c.JWTAudience, "jwt-audience", "HERALD_JWT_AUDIENCE", "", "when set, tokens must name it in aud")
	e.str(&c.JWTIssuer, "jwt-issuer", "HERALD_JWT_ISSUER", "", "when set, tokens must have it as iss")
	e.dur(&c.JWTLeeway, "jwt-leeway", "HERALD_JWT_LEEWAY", 30*time.Second, "clock skew allowed on exp and nbf")
	e.bool(&c.AllowAnonymous, "allow-anonymous", "HERALD_ALLOW_ANONYMOUS", "with authentication on, admit clients without a token (no user; the default permissions)")
	e.str(&c.DefaultChannels, "default-channels", "HERALD_DEFAULT_CHANNELS", "*", "channel patterns a token without a channels claim (or an anonymous client) may subscribe to; empty: none")
	e.str(&c.DefaultPublish, "default-publish", "HERALD_DEFAULT_PUBLISH", "", "channel patterns a token without a publish claim (or an anonymous client) may publish to; empty: none")
	e.str(&c.AllowedOrigins, "allowed-origins", "HERALD_ALLOWED_ORIGINS", "", "browser origins allowed besides the gateway's own, comma-separated: https://app.example.com, https://*.example.com, or *")
	e.str(&c.TrustedProxies, "trusted-proxies", "HERALD_TRUSTED_PROXIES", "", "CIDRs of proxies whose X-Forwarded-For names the client's address, comma-separated")
	e.int(&c.MaxConnections, "max-connections", "HERALD_MAX_CONNECTIONS", 100000, "open WebSocket connections this gateway takes (else 503); 0: no limit")
	e.int(&c.MaxConnectionsPerIP, "max-connections-per-ip", "HERALD_MAX_CONNECTIONS_PER_IP", 1000, "open connections one client address may hold (else 429); 0: no limit")
	e.float(&c.HandshakeRate, "handshake-rate", "HERALD_HANDSHAKE_RATE", 20, "handshakes per second one client address may make (else 429); 0: no limit")
	e.int(&c.HandshakeBurst, "handshake-burst", "HERALD_HANDSHAKE_BURST", 100, "handshakes one client address may make at once")
	e.float(&c.MessageRate, "message-rate", "HERALD_MESSAGE_RATE", 50, "frames per second a connection may send (else error rate_limited); 0: no limit")
	e.int(&c.MessageBurst, "message-burst", "HERALD_MESSAGE_BURST", 100, "frames a connection may send at once")
	e.float(&c.FrameRate, "frame-rate", "HERALD_FRAME_RATE", 0, "WebSocket frames per second a connection may send, every kind counted (pings, pongs, fragments...); over it the connection is closed with 4029; 0: four times --message-rate; negative: no limit")
	e.int(&c.FrameBurst, "frame-burst", "HERALD_FRAME_BURST", 0, "frames a connection may send at once; 0: four times --message-burst")
	e.int(&c.MaxFragments, "max-fragments", "HERALD_MAX_FRAGMENTS", 256, "frames one client message may come in (else close 1009); 0: no limit")
	e.int(&c.MaxViolations, "max-rate-violations", "HERALD_MAX_RATE_VIOLATIONS", 10, "frames over the rate within 10s before the connection is closed with 4029; 0: never closed")
	e.int(&c.MaxSubscriptions, "max-subscriptions", "HERALD_MAX_SUBSCRIPTIONS", 256, "channel subscriptions per connection (else error too_large); 0: no limit")
	e.dur(&c.ReadHeaderTimeout, "read-header-timeout", "HERALD_READ_HEADER_TIMEOUT", 10*time.Second, "time a client has to send its request headers (a handshake that never completes is dropped)")
	e.dur(&c.IdleTimeout, "idle-timeout", "HERALD_IDLE_TIMEOUT", 2*time.Minute, "how long an idle HTTP keep-alive connection is kept")
	e.int(&c.MaxHeaderBytes, "max-header-bytes", "HERALD_MAX_HEADER_BYTES", 16<<10, "largest request header (else 431)")
	e.dur(&c.ReadTimeout, "read-timeout", "HERALD_READ_TIMEOUT", 10*time.Second, "time a client has to send a whole request, headers and body (a WebSocket, once upgraded, is not bounded by it)")
	e.int(&c.MaxPending, "max-pending-connections", "HERALD_MAX_PENDING_CONNECTIONS", 10000, "connections accepted and not yet answered or upgraded (and, as many again, idle keep-alive ones); over it a new connection is closed at once; 0: no limit")
	e.int(&c.MaxPendingPerIP, "max-pending-connections-per-ip", "HERALD_MAX_PENDING_CONNECTIONS_PER_IP", 0, "of those, how many one client address may hold; 0: no limit (clients behind a NAT or proxy share an address)")
	e.str(&c.AdminAddr, "admin-addr", "HERALD_ADMIN_ADDR", "", "address of a separate listener with /metrics, /healthz, /readyz and /debug/pprof, e.g. 127.0.0.1:9090; then /metrics is served there only; empty: off")
	fs.BoolVar(&c.CheckOnly, "check-config", false, "check the configuration (flags and environment) and exit: 0 when the gateway would start with it, 2 otherwise")
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
		"stream-max-age":    int64(c.StreamMaxAge),
		"presence-interval": int64(c.PresenceInterval), "presence-snapshot-interval": int64(c.PresenceSnapshot),
		"presence-ttl": int64(c.PresenceTTL), "presence-max-list": int64(c.PresenceMaxList),
		"jwks-refresh": int64(c.JWKSRefresh), "read-header-timeout": int64(c.ReadHeaderTimeout),
		"idle-timeout": int64(c.IdleTimeout), "max-header-bytes": int64(c.MaxHeaderBytes),
		"read-timeout":    int64(c.ReadTimeout),
		"handshake-burst": int64(c.HandshakeBurst), "message-burst": int64(c.MessageBurst),
	}
	for name, v := range positive {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	nonNegative := map[string]float64{
		"max-connections": float64(c.MaxConnections), "max-connections-per-ip": float64(c.MaxConnectionsPerIP),
		"handshake-rate": c.HandshakeRate, "message-rate": c.MessageRate,
		"max-rate-violations": float64(c.MaxViolations), "max-subscriptions": float64(c.MaxSubscriptions),
		"jwt-leeway": float64(c.JWTLeeway), "max-pending-connections": float64(c.MaxPending),
		"max-pending-connections-per-ip": float64(c.MaxPendingPerIP),
		"frame-burst":                    float64(c.FrameBurst), "max-fragments": float64(c.MaxFragments),
	}
	for name, v := range nonNegative {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
	errs = append(errs, c.validateAuth()...)
	if c.CompressLevel < 1 || c.CompressLevel > 9 {
		errs = append(errs, fmt.Errorf("compression-level %d: want 1 to 9", c.CompressLevel))
	}
	if c.CompressMinBytes < 0 {
		errs = append(errs, errors.New("compression-min-bytes must not be negative"))
	}
	if c.PresenceTTL <= c.PresenceSnapshot {
		errs = append(errs, errors.New("presence-ttl must be longer than presence-snapshot-interval (three times it is usual), or live gateways would flicker out of the view"))
	}
	if _, err := parsePrefixes(c.TrustedProxies); err != nil {
		errs = append(errs, err)
	}
	if c.ReadHeaderTimeout > c.ReadTimeout {
		errs = append(errs, errors.New("read-header-timeout must not exceed read-timeout (the headers are part of the request)"))
	}
	for name, addr := range map[string]string{"admin-addr": c.AdminAddr, "debug-addr": c.DebugAddr} {
		if _, _, err := net.SplitHostPort(addr); addr != "" && err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port, e.g. 127.0.0.1:9090: %w", name, addr, err))
		}
	}
	if c.AdminAddr != "" && c.DebugAddr != "" {
		errs = append(errs, errors.New("admin-addr and debug-addr: give admin-addr only (debug-addr is its deprecated alias)"))
	}
	return errors.Join(errs...)
}

// jwtKeys counts the token keys configured.
func (c *config) jwtKeys() int {
	n := 0
	for _, v := range []string{c.JWTSecret, c.JWTPublicKey, c.JWKSURL} {
		if v != "" {
			n++
		}
	}
	return n
}

func (c *config) validateAuth() []error {
	var errs []error
	keys := c.jwtKeys()
	if keys > 1 {
		errs = append(errs, errors.New("jwt-secret, jwt-public-key and jwks-url: give one, not several"))
	}
	if keys > 0 && c.InsecureUserParam {
		errs = append(errs, errors.New("insecure-user-param cannot be used with authentication (jwt-secret, jwt-public-key, jwks-url): it would let any client claim any user"))
	}
	switch c.JWTAlg {
	case "", "HS256", "RS256", "ES256":
	default:
		errs = append(errs, fmt.Errorf("jwt-alg %q: want HS256, RS256 or ES256", c.JWTAlg))
	}
	if keys == 0 && (c.JWTAlg != "" || c.JWTAudience != "" || c.JWTIssuer != "" || c.AllowAnonymous) {
		errs = append(errs, errors.New("jwt-alg, jwt-audience, jwt-issuer and allow-anonymous need a key: jwt-secret, jwt-public-key or jwks-url"))
	}
	if c.JWTSecret != "" && len(c.JWTSecret) < 32 {
		errs = append(errs, errors.New("jwt-secret must be at least 32 bytes (HS256 wants a key as long as its hash)"))
	}
	return errs
}

// parsePrefixes reads a comma-separated list of CIDRs or single addresses.
func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range splitList(s) {
		if p, err := netip.ParsePrefix(v); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("trusted-proxies: %q is not a CIDR or an address", v)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// splitList splits a comma-separated list, dropping empty items: a non-nil empty slice
// when there are none.
func splitList(s string) []string {
	out := []string{}
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
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
