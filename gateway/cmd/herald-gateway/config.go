package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/producer/amqplink"
	"github.com/heraldgw/herald/producer/redact"
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
	JWKSAllowHTTP       bool
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

	// The broker cluster (README "Running on a RabbitMQ cluster").
	AMQPCAFile          string
	AMQPCertFile        string
	AMQPKeyFile         string
	AMQPHeartbeat       time.Duration
	StreamReplicas      int
	StreamLeaderLocator string
	CanaryInterval      time.Duration
	CanaryTimeout       time.Duration
}

// parseConfig reads flags from args, with defaults from the environment. It returns
// flag.ErrHelp after printing usage for -h or --help.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("herald-gateway", flag.ContinueOnError)
	e := &envFlags{fs: fs, getenv: getenv}
	host, _ := os.Hostname()
	if host == "" {
		host = "herald"
	}

	e.str(&c.Addr, "addr", "HERALD_ADDR", ":8080", "address to listen on")
	e.str(&c.NodeID, "node-id", "HERALD_NODE_ID", host, "this gateway's name in welcome frames and logs")
	e.str(&c.APIKey, "api-key", "HERALD_API_KEY", "", "bearer key of POST /api/publish; empty turns the API off")
	e.str(&c.AMQPURL, "amqp-url", "HERALD_AMQP_URL", "", "RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/, or the comma-separated URLs of a cluster's nodes (each connection goes to the first that answers, then the next); empty runs the embedded bus (one gateway)")
	e.str(&c.Exchange, "exchange", "HERALD_EXCHANGE", "herald", "RabbitMQ fanout exchange that publishers publish to")
	e.str(&c.Stream, "stream", "HERALD_STREAM", "herald.stream", "RabbitMQ stream queue bound to the exchange; it gives messages their offsets")
	e.dur(&c.StreamMaxAge, "stream-max-age", "HERALD_STREAM_MAX_AGE", 24*time.Hour, "how long the stream retains messages")
	e.size(&c.StreamMaxBytes, "stream-max-bytes", "HERALD_STREAM_MAX_BYTES", 1<<30, math.MaxInt64, "how many bytes the stream retains")
	e.size(&c.StreamSegment, "stream-segment-bytes", "HERALD_STREAM_SEGMENT_BYTES", 0, math.MaxInt64, "size of the stream's segment files, the unit retention deletes; 0: the broker's default (500 MB)")
	e.int(&c.Prefetch, "prefetch", "HERALD_PREFETCH", 1000, "unacknowledged stream messages the consumer may hold")
	e.int(&c.RetainMessages, "retain-messages", "HERALD_RETAIN_MESSAGES", 10000, "embedded bus: messages kept for resume")
	e.size(&c.RetainBytes, "retain-bytes", "HERALD_RETAIN_BYTES", 64<<20, math.MaxInt64, "embedded bus: bytes of data kept for resume")
	e.sizeInt(&c.WriteQueueBytes, "write-queue-bytes", "HERALD_WRITE_QUEUE_BYTES", 1<<20, math.MaxInt64, "per-connection write queue cap; over it the client is closed with 4008")
	e.size(&c.MaxMessageBytes, "max-message-bytes", "HERALD_MAX_MESSAGE_BYTES", 64<<10, math.MaxInt64, "largest client frame (else close 1009) and HTTP publish body (else 413)")
	e.dur(&c.WriteTimeout, "write-timeout", "HERALD_WRITE_TIMEOUT", 10*time.Second, "deadline of each socket write")
	e.dur(&c.PingInterval, "ping-interval", "HERALD_PING_INTERVAL", 25*time.Second, "how often clients are pinged; one silent for this plus 10s is dropped")
	e.sizeInt(&c.SocketSendBuffer, "socket-send-buffer", "HERALD_SOCKET_SEND_BUFFER", 0, math.MaxInt32, "kernel send buffer per connection (SO_SNDBUF); bounds kernel memory per client; 0: the kernel's autotuning")
	e.dur(&c.FlushInterval, "flush-interval", "HERALD_FLUSH_INTERVAL", 10*time.Millisecond, "a connection that wrote within this interval waits for the next one, and its frames go out in one write; negative: write each at once")
	e.bool(&c.Compression, "compression", "HERALD_COMPRESSION", "negotiate permessage-deflate with clients that offer it (each message is compressed once for all of them)")
	e.sizeInt(&c.CompressMinBytes, "compression-min-bytes", "HERALD_COMPRESSION_MIN_BYTES", 256, math.MaxInt64, "frames smaller than this go uncompressed")
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
	e.bool(&c.JWKSAllowHTTP, "jwks-allow-http", "HERALD_JWKS_ALLOW_HTTP", "accept a plain http:// --jwks-url (logged loudly at start): only for a key server on a network you trust, since whoever can alter the traffic can sign any token")
	e.str(&c.JWTAlg, "jwt-alg", "HERALD_JWT_ALG", "", "the only token algorithm accepted: HS256, RS256 or ES256 (default: the key's; RS256 for a JWKS)")
	e.str(&c.JWTAudience, "jwt-audience", "HERALD_JWT_AUDIENCE", "", "when set, tokens must name it in aud")
	e.str(&c.JWTIssuer, "jwt-issuer", "HERALD_JWT_ISSUER", "", "when set, tokens must have it as iss")
	e.dur(&c.JWTLeeway, "jwt-leeway", "HERALD_JWT_LEEWAY", 30*time.Second, "clock skew allowed on exp and nbf")
	e.bool(&c.AllowAnonymous, "allow-anonymous", "HERALD_ALLOW_ANONYMOUS", "with authentication on, admit clients without a token (no user; the default permissions)")
	e.str(&c.DefaultChannels, "default-channels", "HERALD_DEFAULT_CHANNELS", "", "channel patterns a token without a channels claim (or an anonymous client) may subscribe to, e.g. public:*,user:{sub}:*; empty: none")
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
	e.sizeInt(&c.MaxHeaderBytes, "max-header-bytes", "HERALD_MAX_HEADER_BYTES", 16<<10, math.MaxInt64, "largest request header (else 431)")
	e.dur(&c.ReadTimeout, "read-timeout", "HERALD_READ_TIMEOUT", 10*time.Second, "time a client has to send a whole request, headers and body (a WebSocket, once upgraded, is not bounded by it)")
	e.int(&c.MaxPending, "max-pending-connections", "HERALD_MAX_PENDING_CONNECTIONS", 10000, "connections accepted and not yet answered or upgraded (and, as many again, idle keep-alive ones); over it a new connection is closed at once; 0: no limit")
	e.int(&c.MaxPendingPerIP, "max-pending-connections-per-ip", "HERALD_MAX_PENDING_CONNECTIONS_PER_IP", 0, "of those, how many one client address may hold; 0: no limit (clients behind a NAT or proxy share an address)")
	e.str(&c.AdminAddr, "admin-addr", "HERALD_ADMIN_ADDR", "", "address of a separate listener with /metrics, /healthz, /readyz and /debug/pprof, e.g. 127.0.0.1:9090; then /metrics is served there only; empty: off")
	fs.BoolVar(&c.CheckOnly, "check-config", false, "check the configuration (flags and environment) and exit: 0 when the gateway would start with it, 2 otherwise")
	e.str(&c.AMQPCAFile, "amqp-ca-file", "HERALD_AMQP_CA_FILE", "", "PEM file of the CAs that sign the brokers' certificates, for amqps:// URLs; empty: the system's CAs")
	e.str(&c.AMQPCertFile, "amqp-cert-file", "HERALD_AMQP_CERT_FILE", "", "PEM file of the client certificate presented to the brokers over amqps:// (with --amqp-key-file)")
	e.str(&c.AMQPKeyFile, "amqp-key-file", "HERALD_AMQP_KEY_FILE", "", "PEM file of the client certificate's private key")
	e.dur(&c.AMQPHeartbeat, "amqp-heartbeat", "HERALD_AMQP_HEARTBEAT", 5*time.Second, "AMQP heartbeat of every broker connection: a node silent for 1.5 times it is given up, and the connection moves to the next node; whole seconds")
	e.int(&c.StreamReplicas, "stream-replicas", "HERALD_STREAM_REPLICAS", 3, "nodes that hold a copy of the stream when it is declared (x-initial-cluster-size; capped at the cluster's size)")
	e.str(&c.StreamLeaderLocator, "stream-leader-locator", "HERALD_STREAM_LEADER_LOCATOR", "balanced", "where a new stream's leader goes (x-queue-leader-locator): balanced or client-local")
	e.dur(&c.CanaryInterval, "canary-interval", "HERALD_CANARY_INTERVAL", 5*time.Second, "how often the gateway sends a canary through the exchange and times its return through its own consumer; 0: no canary")
	e.dur(&c.CanaryTimeout, "canary-timeout", "HERALD_CANARY_TIMEOUT", 20*time.Second, "no canary back within this: /readyz answers 503 with the reason, and the gateway declares its topology again and attaches again")
	e.str(&c.LogFormat, "log-format", "HERALD_LOG_FORMAT", "text", "log format: text or json")
	e.str(&c.LogLevel, "log-level", "HERALD_LOG_LEVEL", "info", "log level: debug, info, warn or error")

	// The flag package prints nothing: -help prints the usage, an error is returned (and
	// names the setting).
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(out, fs)
			return c, err
		}
		if len(e.errs) > 0 {
			return c, errors.Join(e.errs...)
		}
		return c, fmt.Errorf("%w (--help lists every flag)", err)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if err := errors.Join(e.errs...); err != nil {
		return c, err
	}
	return c, c.validate()
}

// invalid is an error that names the setting it is about (flag and variable).
func invalid(name, format string, args ...any) error {
	return fmt.Errorf("%s: "+format, append([]any{setting(name)}, args...)...)
}

// validate checks everything the gateway would refuse at start, so that --check-config
// says so before a deploy: each error names its setting.
func (c *config) validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		add(invalid("log-format", "%q: want text or json", c.LogFormat))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		add(invalid("log-level", "%v", err))
	}
	add(checkAddr("addr", c.Addr, false))
	add(checkAddr("debug-addr", c.DebugAddr, true))
	if c.AMQPURL != "" {
		add(checkAMQPURLs("amqp-url", c.AMQPURL))
	}
	errs = append(errs, c.validateCluster()...)
	for name, v := range map[string]string{"exchange": c.Exchange, "stream": c.Stream, "presence-exchange": c.PresenceExchange} {
		if v == "" || len(v) > 255 {
			add(invalid(name, "%.64q: want a name of 1 to 255 bytes", v))
		}
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
			add(invalid(name, "must be positive"))
		}
	}
	nonNegative := map[string]float64{
		"max-connections": float64(c.MaxConnections), "max-connections-per-ip": float64(c.MaxConnectionsPerIP),
		"handshake-rate": c.HandshakeRate, "message-rate": c.MessageRate,
		"max-rate-violations": float64(c.MaxViolations), "max-subscriptions": float64(c.MaxSubscriptions),
		"jwt-leeway": float64(c.JWTLeeway), "prefetch": float64(c.Prefetch),
		"max-pending-connections":        float64(c.MaxPending),
		"max-pending-connections-per-ip": float64(c.MaxPendingPerIP),
		"frame-burst":                    float64(c.FrameBurst), "max-fragments": float64(c.MaxFragments),
	}
	for name, v := range nonNegative {
		if v < 0 {
			add(invalid(name, "must not be negative"))
		}
	}
	if c.Prefetch > 65535 {
		add(invalid("prefetch", "%d: at most 65535 (AMQP's limit)", c.Prefetch))
	}
	errs = append(errs, c.validateAuth()...)
	if c.CompressLevel < 1 || c.CompressLevel > 9 {
		add(invalid("compression-level", "%d: want 1 to 9", c.CompressLevel))
	}
	if c.PresenceTTL <= c.PresenceSnapshot {
		add(invalid("presence-ttl", "must be longer than --presence-snapshot-interval (three times it is usual), or live gateways would flicker out of the view"))
	}
	if _, err := parsePrefixes(c.TrustedProxies); err != nil {
		add(invalid("trusted-proxies", "%v", err))
	}
	if err := gateway.CheckAllowedOrigins(splitList(c.AllowedOrigins)); err != nil {
		add(invalid("allowed-origins", "%v", err))
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
		errs = append(errs, fmt.Errorf("%s, %s and %s: give one, not several", setting("jwt-secret"), setting("jwt-public-key"), setting("jwks-url")))
	}
	if keys > 0 && c.InsecureUserParam {
		errs = append(errs, invalid("insecure-user-param", "cannot be used with authentication (--jwt-secret, --jwt-public-key, --jwks-url): it would let any client claim any user"))
	}
	switch c.JWTAlg {
	case "", "HS256", "RS256", "ES256":
	default:
		errs = append(errs, invalid("jwt-alg", "%q: want HS256, RS256 or ES256", c.JWTAlg))
	}
	if keys == 0 {
		for name, set := range map[string]bool{"jwt-alg": c.JWTAlg != "", "jwt-audience": c.JWTAudience != "",
			"jwt-issuer": c.JWTIssuer != "", "allow-anonymous": c.AllowAnonymous} {
			if set {
				errs = append(errs, invalid(name, "needs a key: --jwt-secret, --jwt-public-key or --jwks-url"))
			}
		}
	}
	switch {
	case c.JWTSecret != "":
		if len(c.JWTSecret) < 32 {
			errs = append(errs, invalid("jwt-secret", "must be at least 32 bytes (HS256 wants a key as long as its hash)"))
		}
		if c.JWTAlg != "" && c.JWTAlg != gateway.AlgHS256 {
			errs = append(errs, invalid("jwt-alg", "%s: a shared secret verifies HS256 only", c.JWTAlg))
		}
	case c.JWTPublicKey != "":
		pem, err := os.ReadFile(c.JWTPublicKey)
		if err != nil {
			errs = append(errs, invalid("jwt-public-key", "%v", err))
			break
		}
		key, err := gateway.ParsePublicKeyPEM(pem)
		if err != nil {
			errs = append(errs, invalid("jwt-public-key", "%s: %v", c.JWTPublicKey, err))
			break
		}
		if alg, _ := gateway.PublicKeyAlgorithm(key); c.JWTAlg != "" && c.JWTAlg != alg {
			errs = append(errs, invalid("jwt-alg", "%s: the key in --jwt-public-key verifies %s", c.JWTAlg, alg))
		}
	case c.JWKSURL != "":
		if c.JWTAlg == gateway.AlgHS256 {
			errs = append(errs, invalid("jwt-alg", "HS256: a JWKS verifies RS256 or ES256"))
		}
	}
	if c.JWKSURL != "" {
		if err := gateway.CheckJWKSURL(c.JWKSURL, c.JWKSAllowHTTP); err != nil {
			errs = append(errs, invalid("jwks-url", "%v", err))
		}
	} else if c.JWKSAllowHTTP {
		errs = append(errs, invalid("jwks-allow-http", "is only for a --jwks-url"))
	}
	for name, v := range map[string]string{"default-channels": c.DefaultChannels, "default-publish": c.DefaultPublish} {
		if err := gateway.CheckPatterns(splitList(v)); err != nil {
			errs = append(errs, invalid(name, "%v", err))
		}
	}
	return errs
}

// checkAddr checks a listen address (of setting name) as net.Listen would take it:
// host:port or :port, the host an IP address or a host name, the port a number or a
// service name. Empty is an error unless optional.
func checkAddr(name, addr string, optional bool) error {
	if addr == "" {
		if optional {
			return nil
		}
		return invalid(name, "empty: want host:port or :port, e.g. :8080")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		why := err.Error()
		var ae *net.AddrError
		if errors.As(err, &ae) {
			why = ae.Err
		}
		return invalid(name, "%.100q: want host:port or :port, e.g. :8080 or 127.0.0.1:8080 (%s)", addr, why)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return invalid(name, "%.100q: port %.20q is not a port number (0 to 65535) or a service name", addr, port)
	}
	if host != "" && !validHost(host) {
		return invalid(name, "%.100q: %.64q is not an IP address or a host name", addr, host)
	}
	return nil
}

// validHost reports whether host is an IP address (IPv6 with a zone included) or a
// syntactically valid host name. It does not resolve it.
func validHost(host string) bool {
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	if len(host) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// maxAMQPURLs is how many URLs --amqp-url may list: the nodes of a cluster.
const maxAMQPURLs = 32

// checkAMQPURLs checks an AMQP URL, or a comma-separated list of them, element by
// element, as the AMQP client will read them: amqp:// or amqps://, a host, a port in
// range, a well-escaped password, known parameters. Errors show the URLs redacted.
func checkAMQPURLs(name, list string) error {
	urls := amqplink.SplitURLs(list)
	var errs []error
	for i, raw := range urls {
		where := redact.URL(raw)
		if len(urls) > 1 {
			where = fmt.Sprintf("URL %d of %d, %s", i+1, len(urls), where)
		}
		u, err := url.Parse(raw)
		if err != nil {
			var ue *url.Error
			if err = redact.Error(err, raw); errors.As(err, &ue) {
				err = ue.Err // the URL is in where
			}
			errs = append(errs, invalid(name, "%s: %v (a reserved character in the user name or password, such as @ : / ? # %% or a space, must be percent-encoded)", where, err))
			continue
		}
		if s := strings.ToLower(u.Scheme); s != "amqp" && s != "amqps" {
			errs = append(errs, invalid(name, "%s: want an amqp:// or amqps:// URL, e.g. amqp://user:password@rabbitmq.example.com:5672/", where))
			continue
		}
		if u.Hostname() == "" {
			errs = append(errs, invalid(name, "%s: no host", where))
			continue
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				errs = append(errs, invalid(name, "%s: port %s: want 1 to 65535", where, p))
				continue
			}
		}
		for _, param := range []string{"cacertfile", "certfile", "keyfile"} {
			if f := u.Query().Get(param); f != "" {
				if _, err := os.Stat(f); err != nil {
					errs = append(errs, invalid(name, "%s: %s: %v", where, param, err))
				}
			}
		}
		if _, err := amqp.ParseURI(raw); err != nil {
			errs = append(errs, invalid(name, "%s: %v", where, redact.Error(err, raw)))
		}
	}
	if len(urls) > maxAMQPURLs {
		errs = append(errs, invalid(name, "%d URLs: at most %d", len(urls), maxAMQPURLs))
	}
	seen := map[string]bool{}
	for _, raw := range urls {
		if seen[raw] {
			errs = append(errs, invalid(name, "%s is listed twice", redact.URL(raw)))
		}
		seen[raw] = true
	}
	return errors.Join(errs...)
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
			return nil, fmt.Errorf("%q is not a CIDR or an address", v)
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
