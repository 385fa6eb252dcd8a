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

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/pending"
	"github.com/heraldgw/herald/producer/amqplink"
	"github.com/heraldgw/herald/producer/redact"
)

// config is everything the gateway is started with. Each setting is a flag with an
// environment twin (flags.go), bound straight onto the field of the library configuration
// it sets, whose zero means the library's documented default; main's own settings (the
// listeners, the bus's URL, logging) are the rest. Defaults shown by -help are the
// libraries' constants.
type config struct {
	Gateway      gateway.Config         // the server, its edge (Auth, Limits, AllowedOrigins) and writers
	Hub          gateway.HubConfig      // deduplication
	Presence     gateway.PresenceConfig // off when it has no channel and NoUsers
	Stream       consumer.StreamConfig  // on RabbitMQ: the exchange and the stream
	PresenceLink consumer.PresenceConfig
	Embedded     consumer.EmbeddedConfig // without RabbitMQ
	JWKS         gateway.JWKSConfig      // with a JWKS URL
	Listen       listenConfig

	AMQPURL string // empty: the embedded bus; or the comma-separated URLs of a cluster's nodes
	// The broker cluster (README "Running on a RabbitMQ cluster"): every AMQP link's TLS
	// files and heartbeat, and the canary.
	AMQPCAFile      string
	AMQPCertFile    string
	AMQPKeyFile     string
	AMQPHeartbeat   time.Duration
	CanaryInterval  time.Duration
	CanaryTimeout   time.Duration
	JWTPublicKey    string // path of a PEM file
	ShutdownTimeout time.Duration
	LogFormat       string
	LogLevel        string
	CheckOnly       bool
}

// listenConfig is how the gateway listens (README "Operating it").
type listenConfig struct {
	Addr              string
	AdminAddr         string
	DebugAddr         string // the deprecated alias of AdminAddr
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	Pending           pending.Config // Max and MaxPerAddr
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
	g, l, a := &c.Gateway, &c.Gateway.Limits, &c.Gateway.Auth

	e.str(&c.Listen.Addr, "addr", ":8080", "address to listen on")
	e.str(&g.NodeID, "node-id", host, "this gateway's name in welcome frames and logs")
	e.str(&g.APIKey, "api-key", "", "bearer key of POST /api/publish; empty turns the API off")
	e.str(&c.AMQPURL, "amqp-url", "", "RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/, or the comma-separated URLs of a cluster's nodes (each connection goes to the first that answers, then the next); empty runs the embedded bus (one gateway)")
	e.str(&c.Stream.Exchange, "exchange", "herald", "RabbitMQ fanout exchange that publishers publish to")
	e.str(&c.Stream.Stream, "stream", "herald.stream", "RabbitMQ stream queue bound to the exchange; it gives messages their offsets")
	e.dur(&c.Stream.MaxAge, "stream-max-age", 24*time.Hour, "how long the stream retains messages")
	e.size(&c.Stream.MaxBytes, "stream-max-bytes", 1<<30, math.MaxInt64, "how many bytes the stream retains")
	e.size(&c.Stream.SegmentBytes, "stream-segment-bytes", 0, math.MaxInt64, "size of the stream's segment files, the unit retention deletes; 0: the broker's default (500 MB)")
	e.int(&c.Stream.Prefetch, "prefetch", 1000, "unacknowledged stream messages the consumer may hold")
	e.size(&c.Hub.TailBytes, "tail-bytes", 64<<20, math.MaxInt64, "bytes of the newest messages each gateway holds in memory (the tail of the log) to serve resumes and history without reading the stream")
	e.dur(&c.Hub.TailAge, "tail-age", 10*time.Minute, "how long a message stays in the tail of the log in memory")
	e.int(&g.HistoryMax, "history-max", gateway.DefaultHistoryMax, "most messages a subscribe's history (and GET /api/history) gives, from the tail of the log")
	e.int(&g.ResumeReaders, "resume-readers", 8, "reads of the stream at once for resumes older than the tail (resumes whose since are close share one; the others wait, first come first served)")
	e.int(&c.Embedded.RetainMessages, "retain-messages", 10000, "embedded bus: messages kept for resume")
	e.size(&c.Embedded.RetainBytes, "retain-bytes", 64<<20, math.MaxInt64, "embedded bus: bytes of data kept for resume")
	e.sizeInt(&g.WriteQueueBytes, "write-queue-bytes", gateway.DefaultWriteQueueBytes, math.MaxInt64, "per-connection write queue cap; over it the client is closed with 4008")
	e.size(&g.MaxMessageBytes, "max-message-bytes", gateway.DefaultMaxMessageBytes, math.MaxInt64, "largest client frame (else close 1009) and HTTP publish body (else 413)")
	e.dur(&g.WriteTimeout, "write-timeout", gateway.DefaultWriteTimeout, "deadline of each socket write")
	e.dur(&g.PingInterval, "ping-interval", gateway.DefaultPingInterval, "how often clients are pinged; one silent for this plus 10s is dropped")
	e.sizeInt(&g.SocketSendBuffer, "socket-send-buffer", 0, math.MaxInt32, "kernel send buffer per connection (SO_SNDBUF); bounds kernel memory per client; 0: the kernel's autotuning")
	e.dur(&g.FlushInterval, "flush-interval", gateway.DefaultFlushInterval, "a connection that wrote within this interval waits for the next one, and its frames go out in one write; negative: write each at once")
	e.bool(&g.Compression, "compression", "negotiate permessage-deflate with clients that offer it (each message is compressed once for all of them)")
	e.sizeInt(&g.CompressionMinBytes, "compression-min-bytes", gateway.DefaultCompressionMinBytes, math.MaxInt64, "frames smaller than this go uncompressed")
	e.int(&g.CompressionLevel, "compression-level", gateway.DefaultCompressionLevel, "deflate level: 1 (fastest) to 9 (smallest)")
	e.int(&g.WriteWorkers, "write-workers", 0, "writer workers that write the connections' queues; 0: one per core (GOMAXPROCS), the first writing alone until its backlog is deep (--write-spread-after); negative: a goroutine per write instead")
	e.dur(&g.WriteSpreadAfter, "write-spread-after", gateway.DefaultWriteSpreadAfter, "the first writer worker writes alone while its backlog would take it less than this, and shares a longer one with the other workers; negative: every backlog is shared")
	e.dur(&g.PublishTimeout, "publish-timeout", gateway.DefaultPublishTimeout, "bound on one publish to the bus")
	e.dur(&c.Hub.DedupWindow, "dedup-window", gateway.DefaultDedupWindow, "a message id seen again within this window is delivered once")
	e.dur(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "how long a drain on SIGTERM may take")
	e.list(&c.Presence.Channels, "presence-channels", "channels with presence (who is online), comma-separated names or prefix* patterns, * for all; empty: none")
	e.list(&c.Presence.Exclude, "presence-exclude", "channels without presence even where --presence-channels names them, as patterns")
	e.bool(&c.Presence.NoUsers, "no-user-presence", "do not track which users are online at all (GET /api/users/{id})")
	e.dur(&c.Presence.Interval, "presence-interval", gateway.DefaultPresenceInterval, "how often presence changes go to the other gateways; join and leave events are coalesced over it")
	e.dur(&c.Presence.SnapshotInterval, "presence-snapshot-interval", gateway.DefaultPresenceSnapshotInterval, "how often each gateway sends its whole presence state")
	e.dur(&c.Presence.TTL, "presence-ttl", 3*gateway.DefaultPresenceSnapshotInterval, "a gateway with no presence update within this leaves the others' views (killed or cut off)")
	e.str(&c.PresenceLink.Exchange, "presence-exchange", "herald.presence", "RabbitMQ fanout exchange that carries presence between gateways")
	e.int(&c.Presence.MaxList, "presence-max-list", gateway.DefaultPresenceMaxList, "most users one presence answer lists (clients page with after)")
	e.bool(&g.DisableClientPublish, "no-client-publish", "refuse publish ops from WebSocket clients")
	e.bool(&g.InsecureUserParam, "insecure-user-param", "INSECURE, demos and tests only: take the user from ?user= with no authentication")
	e.str(&c.Listen.DebugAddr, "debug-addr", "", "deprecated, use --admin-addr: the same listener, but /metrics stays on the public one too")
	e.int(&c.Hub.TraceDispatches, "trace-dispatches", 0, "stamp every message's way through the gateway (its publish, the hub's dispatch, its last enqueue, its last write) and keep the newest this many, served as JSON by GET /debug/dispatches on the admin listener (--admin-addr); 0: off, nothing stamped")
	e.secret(&a.Secret, "jwt-secret", "HS256 shared secret that verifies client tokens (JWT); one of --jwt-secret, --jwt-public-key, --jwks-url turns authentication on")
	e.str(&c.JWTPublicKey, "jwt-public-key", "", "PEM file of the RSA (RS256) or ECDSA P-256 (ES256) public key that verifies client tokens")
	e.str(&c.JWKS.URL, "jwks-url", "", "URL of a JSON Web Key Set whose keys (by kid) verify client tokens")
	e.dur(&c.JWKS.Refresh, "jwks-refresh", gateway.DefaultJWKSRefresh, "how often the JWKS is fetched again")
	e.bool(&c.JWKS.AllowHTTP, "jwks-allow-http", "accept a plain http:// --jwks-url (logged loudly at start): only for a key server on a network you trust, since whoever can alter the traffic can sign any token")
	e.str(&a.Algorithm, "jwt-alg", "", "the only token algorithm accepted: HS256, RS256 or ES256 (default: the key's; RS256 for a JWKS)")
	e.str(&a.Audience, "jwt-audience", "", "when set, tokens must name it in aud")
	e.str(&a.Issuer, "jwt-issuer", "", "when set, tokens must have it as iss")
	e.durLimit(&a.Leeway, "jwt-leeway", gateway.DefaultLeeway, "clock skew allowed on exp and nbf")
	e.bool(&a.AllowAnonymous, "allow-anonymous", "with authentication on, admit clients without a token (no user; the default permissions)")
	e.list(&a.DefaultChannels, "default-channels", "channel patterns a token without a channels claim (or an anonymous client) may subscribe to, e.g. public:*,user:{sub}:*; empty: none")
	e.list(&a.DefaultPublish, "default-publish", "channel patterns a token without a publish claim (or an anonymous client) may publish to; empty: none")
	e.str(&a.Cookie, "auth-cookie", "", "name of a cookie that holds the client's token (JWT), read at /ws and /sse where the request gives none, and only from the gateway's own origin or one in --allowed-origins (not \"*\")")
	e.list(&g.AllowedOrigins, "allowed-origins", "browser origins allowed besides the gateway's own, comma-separated: https://app.example.com, https://*.example.com, or *")
	e.prefixes(&l.TrustedProxies, "trusted-proxies", "CIDRs of proxies whose X-Forwarded-For names the client's address, comma-separated")
	e.limit(&l.MaxConnections, "max-connections", gateway.DefaultMaxConnections, "open WebSocket connections this gateway takes (else 503); 0: no limit")
	e.limit(&l.MaxConnectionsPerIP, "max-connections-per-ip", gateway.DefaultMaxConnectionsPerIP, "open connections one client address may hold (else 429); 0: no limit")
	e.rateLimit(&l.HandshakeRate, "handshake-rate", gateway.DefaultHandshakeRate, "handshakes per second one client address may make (else 429); 0: no limit")
	e.int(&l.HandshakeBurst, "handshake-burst", gateway.DefaultHandshakeBurst, "handshakes one client address may make at once")
	e.rateLimit(&l.MessageRate, "message-rate", gateway.DefaultMessageRate, "frames per second a connection may send (else error rate_limited); 0: no limit")
	e.int(&l.MessageBurst, "message-burst", gateway.DefaultMessageBurst, "frames a connection may send at once")
	e.float(&l.FrameRate, "frame-rate", 0, "WebSocket frames per second a connection may send, every kind counted (pings, pongs, fragments...); over it the connection is closed with 4029; 0: four times --message-rate; negative: no limit")
	e.int(&l.FrameBurst, "frame-burst", 0, "frames a connection may send at once; 0: four times --message-burst")
	e.limit(&l.MaxFragments, "max-fragments", gateway.DefaultMaxFragments, "frames one client message may come in (else close 1009); 0: no limit")
	e.limit(&l.MaxViolations, "max-rate-violations", gateway.DefaultMaxViolations, "frames over the rate within 10s before the connection is closed with 4029; 0: never closed")
	e.limit(&l.MaxSubscriptions, "max-subscriptions", gateway.DefaultMaxSubscriptions, "channel subscriptions per connection (else error too_large); 0: no limit")
	e.dur(&c.Listen.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "time a client has to send its request headers (a handshake that never completes is dropped)")
	e.dur(&c.Listen.IdleTimeout, "idle-timeout", 2*time.Minute, "how long an idle HTTP keep-alive connection is kept")
	e.sizeInt(&c.Listen.MaxHeaderBytes, "max-header-bytes", 16<<10, math.MaxInt64, "largest request header (else 431)")
	e.dur(&c.Listen.ReadTimeout, "read-timeout", 10*time.Second, "time a client has to send a whole request, headers and body (a WebSocket, once upgraded, is not bounded by it)")
	e.limit(&c.Listen.Pending.Max, "max-pending-connections", pending.DefaultMax, "connections accepted and not yet answered or upgraded (and, as many again, idle keep-alive ones); over it a new connection is closed at once; 0: no limit")
	e.limit(&c.Listen.Pending.MaxPerAddr, "max-pending-connections-per-ip", 0, "of those, how many one client address may hold; 0: no limit (clients behind a NAT or proxy share an address)")
	e.str(&c.Listen.AdminAddr, "admin-addr", "", "address of a separate listener with /metrics, /healthz, /readyz and /debug/pprof, e.g. 127.0.0.1:9090; then /metrics is served there only; empty: off")
	e.str(&c.AMQPCAFile, "amqp-ca-file", "", "PEM file of the CAs that sign the brokers' certificates, for amqps:// URLs; empty: the system's CAs")
	e.str(&c.AMQPCertFile, "amqp-cert-file", "", "PEM file of the client certificate presented to the brokers over amqps:// (with --amqp-key-file)")
	e.str(&c.AMQPKeyFile, "amqp-key-file", "", "PEM file of the client certificate's private key")
	e.dur(&c.AMQPHeartbeat, "amqp-heartbeat", 5*time.Second, "AMQP heartbeat of every broker connection: a node silent for 1.5 times it is given up, and the connection moves to the next node; whole seconds")
	e.int(&c.Stream.Replicas, "stream-replicas", 3, "nodes that hold a copy of the stream when it is declared (x-initial-cluster-size; capped at the cluster's size)")
	e.str(&c.Stream.LeaderLocator, "stream-leader-locator", "balanced", "where a new stream's leader goes (x-queue-leader-locator): balanced or client-local")
	e.dur(&c.CanaryInterval, "canary-interval", 5*time.Second, "how often the gateway sends a canary through the exchange and times its return through its own consumer; 0: no canary")
	e.dur(&c.CanaryTimeout, "canary-timeout", 20*time.Second, "no canary back within this: /readyz answers 503 with the reason, and the gateway declares its topology again and attaches again")
	fs.BoolVar(&c.CheckOnly, "check-config", false, "check the configuration (flags and environment) and exit: 0 when the gateway would start with it, 2 otherwise")
	e.str(&c.LogFormat, "log-format", "text", "log format: text or json")
	e.str(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")

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
// says so before a deploy: each error names its setting. (The limits whose 0 means "no
// limit" refuse a negative number as they are parsed.)
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
	add(checkAddr("addr", c.Listen.Addr, false))
	add(checkAddr("debug-addr", c.Listen.DebugAddr, true))
	if c.AMQPURL != "" {
		add(checkAMQPURLs("amqp-url", c.AMQPURL))
	}
	for name, v := range map[string]string{"exchange": c.Stream.Exchange, "stream": c.Stream.Stream, "presence-exchange": c.PresenceLink.Exchange} {
		if v == "" || len(v) > 255 {
			add(invalid(name, "%.64q: want a name of 1 to 255 bytes", v))
		}
	}
	g, l := &c.Gateway, &c.Gateway.Limits
	positive := map[string]int64{
		"prefetch": int64(c.Stream.Prefetch), "retain-messages": int64(c.Embedded.RetainMessages),
		"retain-bytes": c.Embedded.RetainBytes, "write-queue-bytes": int64(g.WriteQueueBytes),
		"max-message-bytes": g.MaxMessageBytes, "stream-max-bytes": c.Stream.MaxBytes,
		"write-timeout": int64(g.WriteTimeout), "ping-interval": int64(g.PingInterval),
		"publish-timeout": int64(g.PublishTimeout), "shutdown-timeout": int64(c.ShutdownTimeout),
		"stream-max-age": int64(c.Stream.MaxAge),
		"tail-bytes":     c.Hub.TailBytes, "tail-age": int64(c.Hub.TailAge), "resume-readers": int64(g.ResumeReaders), "history-max": int64(g.HistoryMax),
		"presence-interval": int64(c.Presence.Interval), "presence-snapshot-interval": int64(c.Presence.SnapshotInterval),
		"presence-ttl": int64(c.Presence.TTL), "presence-max-list": int64(c.Presence.MaxList),
		"jwks-refresh": int64(c.JWKS.Refresh), "read-header-timeout": int64(c.Listen.ReadHeaderTimeout),
		"idle-timeout": int64(c.Listen.IdleTimeout), "max-header-bytes": int64(c.Listen.MaxHeaderBytes),
		"read-timeout":    int64(c.Listen.ReadTimeout),
		"handshake-burst": int64(l.HandshakeBurst), "message-burst": int64(l.MessageBurst),
	}
	for name, v := range positive {
		if v <= 0 {
			add(invalid(name, "must be positive"))
		}
	}
	if l.FrameBurst < 0 {
		add(invalid("frame-burst", "must not be negative"))
	}
	if c.Stream.Prefetch > 65535 {
		add(invalid("prefetch", "%d: at most 65535 (AMQP's limit)", c.Stream.Prefetch))
	}
	errs = append(errs, c.validateAuth()...)
	errs = append(errs, c.validateCluster()...)
	if g.CompressionLevel < 1 || g.CompressionLevel > 9 {
		add(invalid("compression-level", "%d: want 1 to 9", g.CompressionLevel))
	}
	if c.Presence.TTL <= c.Presence.SnapshotInterval {
		add(invalid("presence-ttl", "must be longer than --presence-snapshot-interval (three times it is usual), or live gateways would flicker out of the view"))
	}
	if err := gateway.CheckAllowedOrigins(g.AllowedOrigins); err != nil {
		add(invalid("allowed-origins", "%v", err))
	}
	if c.Listen.ReadHeaderTimeout > c.Listen.ReadTimeout {
		errs = append(errs, errors.New("read-header-timeout must not exceed read-timeout (the headers are part of the request)"))
	}
	for name, addr := range map[string]string{"admin-addr": c.Listen.AdminAddr, "debug-addr": c.Listen.DebugAddr} {
		if _, _, err := net.SplitHostPort(addr); addr != "" && err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port, e.g. 127.0.0.1:9090: %w", name, addr, err))
		}
	}
	if c.Listen.AdminAddr != "" && c.Listen.DebugAddr != "" {
		errs = append(errs, errors.New("admin-addr and debug-addr: give admin-addr only (debug-addr is its deprecated alias)"))
	}
	return errors.Join(errs...)
}

// jwtKeys counts the token keys configured.
func (c *config) jwtKeys() int {
	n := 0
	for _, set := range []bool{len(c.Gateway.Auth.Secret) > 0, c.JWTPublicKey != "", c.JWKS.URL != ""} {
		if set {
			n++
		}
	}
	return n
}

func (c *config) validateAuth() []error {
	var errs []error
	a := &c.Gateway.Auth
	keys := c.jwtKeys()
	if keys > 1 {
		errs = append(errs, fmt.Errorf("%s, %s and %s: give one, not several", setting("jwt-secret"), setting("jwt-public-key"), setting("jwks-url")))
	}
	if keys > 0 && c.Gateway.InsecureUserParam {
		errs = append(errs, invalid("insecure-user-param", "cannot be used with authentication (--jwt-secret, --jwt-public-key, --jwks-url): it would let any client claim any user"))
	}
	switch a.Algorithm {
	case "", "HS256", "RS256", "ES256":
	default:
		errs = append(errs, invalid("jwt-alg", "%q: want HS256, RS256 or ES256", a.Algorithm))
	}
	if keys == 0 {
		for name, set := range map[string]bool{"jwt-alg": a.Algorithm != "", "jwt-audience": a.Audience != "",
			"jwt-issuer": a.Issuer != "", "allow-anonymous": a.AllowAnonymous, "auth-cookie": a.Cookie != ""} {
			if set {
				errs = append(errs, invalid(name, "needs a key: --jwt-secret, --jwt-public-key or --jwks-url"))
			}
		}
	}
	switch {
	case len(a.Secret) > 0:
		if len(a.Secret) < 32 {
			errs = append(errs, invalid("jwt-secret", "must be at least 32 bytes (HS256 wants a key as long as its hash)"))
		}
		if a.Algorithm != "" && a.Algorithm != gateway.AlgHS256 {
			errs = append(errs, invalid("jwt-alg", "%s: a shared secret verifies HS256 only", a.Algorithm))
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
		if alg, _ := gateway.PublicKeyAlgorithm(key); a.Algorithm != "" && a.Algorithm != alg {
			errs = append(errs, invalid("jwt-alg", "%s: the key in --jwt-public-key verifies %s", a.Algorithm, alg))
		}
	case c.JWKS.URL != "":
		if a.Algorithm == gateway.AlgHS256 {
			errs = append(errs, invalid("jwt-alg", "HS256: a JWKS verifies RS256 or ES256"))
		}
	}
	if c.JWKS.URL != "" {
		if err := gateway.CheckJWKSURL(c.JWKS.URL, c.JWKS.AllowHTTP); err != nil {
			errs = append(errs, invalid("jwks-url", "%v", err))
		}
	} else if c.JWKS.AllowHTTP {
		errs = append(errs, invalid("jwks-allow-http", "is only for a --jwks-url"))
	}
	for name, v := range map[string][]string{"default-channels": a.DefaultChannels, "default-publish": a.DefaultPublish} {
		if err := gateway.CheckPatterns(v); err != nil {
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
