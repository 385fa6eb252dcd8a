// Command herald-gateway runs Herald's WebSocket gateway: on RabbitMQ when an AMQP URL is
// configured, else on the embedded in-process bus. Run with -help for every flag.
package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/logsample"
	"github.com/heraldgw/herald/gateway/internal/pending"
	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/redact"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stderr))
}

// run starts the gateway and serves until ctx ends, then drains. It returns the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "herald-gateway: %v\n", err)
		return 2
	}
	if cfg.CheckOnly {
		fmt.Fprintln(stderr, "herald-gateway: configuration ok")
		return 0
	}
	log := newLogger(cfg, stderr)
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("gateway failed", "err", err)
		return 1
	}
	return 0
}

// The parts main wires together fit the interfaces each side defines where it uses them.
var (
	_ consumer.Dispatcher      = (*gateway.Hub)(nil)
	_ consumer.PresenceHandler = (*gateway.Presence)(nil)
	_ gateway.PresenceSender   = (*consumer.PresenceLink)(nil)
	_ gateway.Publisher        = (*producer.Publisher)(nil)
	_ gateway.Publisher        = (*consumer.Embedded)(nil)
	_ gateway.Log              = (*consumer.Stream)(nil)
	_ gateway.Log              = (*consumer.Embedded)(nil)
	_ gateway.Bus              = (*consumer.Rabbit)(nil)
	_ gateway.Bus              = (*consumer.Embedded)(nil)
)

// bus is what the gateway runs on: a publisher, its health, and the loop that consumes.
type bus struct {
	gateway.Publisher
	gateway.BusHealth
	gateway.Log
	run   func(context.Context) error
	head  func(context.Context) (int64, bool) // the newest offset in the log, for the lag gauge
	ready <-chan struct{}                     // closed once the hub knows where the log stands and messages published from now on reach it
	close func()
	// probe, when set, runs once at start beside the bus: what the broker does to headers.
	probe func(context.Context)
	// detail, when set, is what /readyz shows of the bus.
	detail func() any
}

// serve runs the gateway until ctx ends, then drains it.
func serve(ctx context.Context, cfg config, log *slog.Logger) error {
	g, err := assemble(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer g.bus.close()
	busCtx, stopBus := context.WithCancel(context.Background())
	defer stopBus()
	errc := g.start(busCtx)
	log.Info("herald gateway listening", g.listening()...)
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("signal received: draining", "timeout", cfg.ShutdownTimeout)
	case runErr = <-errc:
	}
	g.drain(stopBus)
	log.Info("gateway stopped")
	return runErr
}

// parts is what serve wires together: each library's part, made from its configuration,
// and the goroutines that run them.
type parts struct {
	cfg      config
	log      *slog.Logger
	metrics  *gateway.Metrics
	hub      *gateway.Hub
	presence *gateway.Presence // nil: off
	link     *consumer.PresenceLink
	bus      bus
	cm       *clusterMetrics // nil on the embedded bus
	jwks     *gateway.JWKS   // nil: no JWKS
	srv      *gateway.Server

	ln     *pending.Listener
	aln    net.Listener // nil: no admin listener
	public *http.Server
	admin  *http.Server // nil: no admin listener

	wg           sync.WaitGroup // the goroutines start starts, but presence's
	presenceDone chan struct{}  // closed when presence's Run has returned
	stopPresence context.CancelFunc
}

// assemble makes the gateway's parts from cfg and opens its listeners; nothing runs yet.
func assemble(ctx context.Context, cfg config, log *slog.Logger) (*parts, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(), buildInfo())
	g := &parts{cfg: cfg, log: log, metrics: gateway.NewMetrics(reg)}
	g.presence = newPresence(cfg, log, g.metrics)
	hc := cfg.Hub
	hc.Logger, hc.Metrics, hc.Presence = log, g.metrics, g.presence
	if cfg.AMQPURL == "" {
		// The embedded bus keeps no history of its own: the tail is its retained log.
		hc.TailMessages, hc.TailBytes = cfg.Embedded.RetainMessages, cfg.Embedded.RetainBytes
	}
	g.hub = gateway.NewHub(hc)
	var err error
	if cfg.AMQPURL == "" {
		g.bus = embeddedBus(cfg, log, g.metrics, g.hub)
	} else {
		g.cm = newClusterMetrics(reg)
		if g.bus, err = rabbitBus(ctx, cfg, log, g.metrics, g.cm, g.hub); err != nil {
			return nil, err
		}
	}
	if cfg.Gateway.InsecureUserParam {
		log.Warn("INSECURE: --insecure-user-param is on: any client may claim any user with ?user=; for demos and tests only")
	}
	if cfg.Gateway.APIKey == "" {
		log.Info("the HTTP publish API is off (no API key); set HERALD_API_KEY to turn it on")
	}
	if g.jwks, err = authKey(ctx, &cfg, log, g.metrics); err != nil {
		g.bus.close()
		return nil, err
	}
	sc := cfg.Gateway
	sc.Log, sc.BusDetail, sc.Presence = g.bus.Log, g.bus.detail, g.presence
	sc.Logger, sc.Metrics, sc.Registry = log, g.metrics, reg
	sc.PrivateMetrics = cfg.Listen.AdminAddr != "" // not with the deprecated --debug-addr: as before, public too
	if g.srv, err = gateway.NewServer(sc, g.hub, g.bus.Publisher, g.bus.BusHealth); err != nil {
		g.bus.close()
		return nil, err
	}
	if err := g.listen(reg); err != nil {
		g.bus.close()
		return nil, err
	}
	if g.presence != nil && cfg.AMQPURL != "" {
		g.link = presenceLink(cfg, log, g.metrics, g.cm, g.presence)
	}
	return g, nil
}

// listen opens the public listener, and the admin one where configured, and makes their
// HTTP servers.
func (g *parts) listen(reg *prometheus.Registry) error {
	cfg := g.cfg.Listen
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if addr := cmp.Or(cfg.AdminAddr, cfg.DebugAddr); addr != "" {
		if g.aln, err = net.Listen("tcp", addr); err != nil {
			_ = ln.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
		g.admin = adminServer(g.srv.AdminHandler(), g.log)
	}
	g.public, g.ln = publicServer(cfg, g.srv.Handler(), ln, g.log, g.metrics)
	reg.MustRegister(listenerGauges(g.ln)...)
	warnDescriptors(g.cfg.Gateway.Limits.MaxConnections, cfg.Pending.Max, g.log)
	return nil
}

// start runs the gateway's goroutines: the bus, the listeners, the lag gauge, the header
// probe, presence and its link, the JWKS, and readiness once the bus is ready. What ends
// with an error sends it to the channel it returns.
func (g *parts) start(busCtx context.Context) <-chan error {
	errc := make(chan error, 4)
	goErr := func(what string, run func() error) {
		g.wg.Go(func() {
			if err := run(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", what, err)
			}
		})
	}
	goErr("bus", func() error { return g.bus.run(busCtx) })
	goErr("http", func() error { return g.public.Serve(g.ln) })
	if g.admin != nil {
		goErr("admin http", func() error { return g.admin.Serve(g.aln) })
	}
	if g.link != nil {
		goErr("presence link", func() error { return g.link.Run(busCtx) })
	}
	g.wg.Go(func() { watchLag(busCtx, g.bus, g.hub, g.metrics) })
	if g.bus.probe != nil {
		g.wg.Go(func() { g.bus.probe(busCtx) })
	}
	if g.jwks != nil {
		g.wg.Go(func() { g.jwks.Run(busCtx) })
	}
	// Presence's updates stop before its bye goes out (a delta after the bye would put
	// this gateway back in the others' views until the TTL).
	var presenceCtx context.Context
	presenceCtx, g.stopPresence = context.WithCancel(busCtx)
	g.presenceDone = make(chan struct{})
	go func() {
		defer close(g.presenceDone)
		var link gateway.PresenceSender // nil: presence is local (the embedded bus) or off
		if g.link != nil {
			link = g.link
		}
		g.presence.Run(presenceCtx, link)
	}()
	go func() {
		select {
		case <-g.bus.ready:
			g.srv.SetBusReady(true)
			g.log.Info("bus consuming; gateway ready")
		case <-busCtx.Done():
		}
	}()
	return errc
}

// listening is what the log line of a gateway that listens says.
func (g *parts) listening() []any {
	attrs := []any{"addr", g.ln.Addr().String(), "node", g.cfg.Gateway.NodeID, "bus", busName(g.cfg)}
	if g.aln != nil {
		if g.cfg.Listen.DebugAddr != "" {
			g.log.Warn("--debug-addr is deprecated: use --admin-addr, which serves /metrics there only")
		}
		attrs = append(attrs, "admin", g.aln.Addr().String())
	}
	if g.cfg.AMQPURL != "" {
		attrs = append(attrs, "amqp_url", redact.URL(g.cfg.AMQPURL))
	}
	return attrs
}

// drain turns the gateway unready, stops taking connections, closes clients with 1001
// in batches, then stops the HTTP server (in-flight publishes finish), presence (its bye
// goes out), the bus and, last, the admin listener, within the shutdown timeout.
func (g *parts) drain(stopBus context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout)
	defer cancel()
	if err := g.srv.Shutdown(ctx); err != nil {
		g.log.Warn("drain did not finish in time", "err", err)
	}
	if err := g.public.Shutdown(ctx); err != nil {
		g.log.Warn("HTTP shutdown did not finish in time", "err", err)
		_ = g.public.Close()
	}
	g.stopPresence()
	<-g.presenceDone
	if g.link != nil {
		g.presence.Leave(ctx, g.link) // the others drop this gateway's users now, not after the TTL
	}
	stopBus()
	if g.admin != nil {
		// Last: /readyz said draining to the load balancers until now.
		if err := g.admin.Shutdown(ctx); err != nil {
			_ = g.admin.Close()
		}
	}
	g.wg.Wait()
}

func busName(cfg config) string {
	if cfg.AMQPURL == "" {
		return "embedded"
	}
	return "rabbitmq"
}

func embeddedBus(cfg config, log *slog.Logger, metrics *gateway.Metrics, hub *gateway.Hub) bus {
	log.Warn("no AMQP URL: running on the embedded in-process bus; this gateway is a single node. Set HERALD_AMQP_URL to run several on RabbitMQ")
	ec := cfg.Embedded
	ec.Logger, ec.OnLagged = log, metrics.BusLagged
	e := consumer.NewEmbedded(ec, hub)
	hub.SetLogStart(e.Newest())
	ready := make(chan struct{})
	close(ready)
	head := func(context.Context) (int64, bool) { return e.Newest(), true }
	return bus{Publisher: e, BusHealth: e, Log: e, run: e.Run, head: head, ready: ready, close: func() {}}
}

func rabbitBus(ctx context.Context, cfg config, log *slog.Logger, metrics *gateway.Metrics, cm *clusterMetrics, hub *gateway.Hub) (bus, error) {
	tlsCfg, err := amqpTLS(cfg)
	if err != nil {
		return bus{}, fmt.Errorf("amqp TLS: %w", err)
	}
	r, err := consumer.NewRabbit(ctx, consumer.RabbitConfig{
		Stream:           streamConfig(cfg, log, metrics, cm, tlsCfg, hub),
		PublisherName:    "herald-gateway-publisher-" + cfg.Gateway.NodeID,
		Logger:           log,
		Node:             cfg.Gateway.NodeID,
		CanaryInterval:   canaryInterval(cfg),
		CanaryTimeout:    cfg.CanaryTimeout,
		OnPublisherState: func(up bool) { metrics.BusState("publisher", up) },
		OnCanary:         func(rtt time.Duration) { cm.roundTrip.Observe(rtt.Seconds()) },
		OnCanaryFailed:   cm.canaryErr.Inc,
		OnStall:          cm.stalls.Inc,
		OnStreamBounds:   cm.streamBounds,
	}, hub)
	if err != nil {
		return bus{}, fmt.Errorf("bus: %w", err)
	}
	cm.setBus(r)
	cm.streamLimits(cfg)
	headers := newHeaderReport()
	return bus{
		Publisher: r,
		BusHealth: r,
		Log:       r,
		run:       r.Run,
		head:      r.Head,
		ready:     r.Ready(),
		close:     func() { _ = r.Close() },
		probe: func(ctx context.Context) {
			probeHeaders(ctx, r.ProbeHeaders, log.With("part", "header-probe"), metrics, headers)
		},
		detail: func() any {
			d := headers.detail().(map[string]any)
			d["health"] = r.Detail()
			return d
		},
	}, nil
}

// streamConfig is the stream consumer's configuration: it reports to metrics and, once
// it has read the stream up to its head at start, tells hub where the log stands (until
// then the server admits no client).
func streamConfig(cfg config, log *slog.Logger, metrics *gateway.Metrics, cm *clusterMetrics, tlsCfg *tls.Config, hub *gateway.Hub) consumer.StreamConfig {
	sc := cfg.Stream
	sc.URL, sc.TLS, sc.Heartbeat = cfg.AMQPURL, tlsCfg, cfg.AMQPHeartbeat
	sc.Name = "herald-gateway-consumer-" + cfg.Gateway.NodeID
	sc.Logger = log.With("part", "consumer")
	sc.OnStateChange = func(up bool) { metrics.BusState("consumer", up) }
	sc.OnNode, sc.OnFailover = cm.linkNode, cm.failover
	sc.OnLogStart = hub.SetLogStart
	sc.OnDecodeError = func(err error) {
		if errors.Is(err, producer.ErrUnroutable) {
			metrics.BusUnroutable()
		} else {
			metrics.BusDecodeError()
		}
	}
	sc.OnBadHeader = metrics.BusBadHeader
	return sc
}

// newPresence returns the gateway's presence, or nil when it is off: no channel has it and
// the per-user view is off.
func newPresence(cfg config, log *slog.Logger, metrics *gateway.Metrics) *gateway.Presence {
	pc := cfg.Presence
	if len(pc.Channels) == 0 && pc.NoUsers {
		return nil
	}
	if len(pc.Channels) > 0 {
		log.Info("presence on", "channels", pc.Channels, "exclude", pc.Exclude)
	}
	pc.Node, pc.Logger, pc.Metrics = cfg.Gateway.NodeID, log.With("part", "presence"), metrics
	return gateway.NewPresence(pc)
}

// presenceLink returns the RabbitMQ link that carries presence between the gateways.
func presenceLink(cfg config, log *slog.Logger, metrics *gateway.Metrics, cm *clusterMetrics, p *gateway.Presence) *consumer.PresenceLink {
	tlsCfg, _ := amqpTLS(cfg) // loaded by rabbitBus already, which stops the start on an error
	lc := cfg.PresenceLink
	lc.URL, lc.Name, lc.TTL = cfg.AMQPURL, "herald-gateway-presence-"+cfg.Gateway.NodeID, cfg.Presence.TTL
	lc.TLS, lc.Heartbeat, lc.OnNode, lc.OnFailover = tlsCfg, cfg.AMQPHeartbeat, cm.linkNode, cm.failover
	lc.Logger = log.With("part", "presence-link")
	lc.OnStateChange = func(up bool) { metrics.BusState("presence", up) }
	return consumer.NewPresenceLink(lc, p)
}

// lagEvery is how often the consumer lag gauge is refreshed.
const lagEvery = 5 * time.Second

// watchLag keeps herald_bus_consumer_lag_messages up to date until ctx ends.
func watchLag(ctx context.Context, b bus, hub *gateway.Hub, metrics *gateway.Metrics) {
	t := time.NewTicker(lagEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		probe, cancel := context.WithTimeout(ctx, lagEvery)
		head, ok := b.head(probe)
		cancel()
		if !ok {
			continue
		}
		last, known := hub.Newest()
		if !known || last < 0 {
			last = -1
		}
		metrics.SetConsumerLag(head - last)
	}
}

// publicServer returns the public listener, which bounds the connections accepted and
// not yet answered or upgraded (and the idle keep-alive ones) to cfg.Pending.Max, and the
// http.Server that serves h on it. Every request is read within cfg.ReadTimeout, headers
// within cfg.ReadHeaderTimeout; an upgraded WebSocket keeps deadlines of its own (see
// gateway.Server.Handler).
func publicServer(cfg listenConfig, h http.Handler, ln net.Listener, log *slog.Logger, metrics *gateway.Metrics) (*http.Server, *pending.Listener) {
	refusals := logsample.New(log, logsample.Config{})
	pc := cfg.Pending
	pc.OnRefused = func(limit string, remote net.Addr) {
		metrics.ListenerRefused(limit)
		refusals.Log(slog.LevelWarn, limit, "connection closed at once: too many not yet answered (or idle)",
			"remote", remote.String(), "max", max(cfg.Pending.Max, 0), "max_per_ip", max(cfg.Pending.MaxPerAddr, 0))
	}
	pl := pending.NewListener(ln, pc)
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ConnState:         pl.ConnState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}, pl
}

// listenerGauges export how many connections the public listener holds that are not
// WebSockets.
func listenerGauges(pl *pending.Listener) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herald_http_pending_connections",
			Help: "HTTP connections accepted and not yet answered or upgraded to WebSocket (capped by --max-pending-connections).",
		}, func() float64 { p, _ := pl.Counts(); return float64(p) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herald_http_idle_connections",
			Help: "Idle HTTP keep-alive connections (capped by --max-pending-connections too).",
		}, func() float64 { _, i := pl.Counts(); return float64(i) }),
	}
}

// adminServer returns the http.Server of the admin listener: admin's endpoints (metrics,
// health) and net/http/pprof's, with timeouts of its own, so that they answer while the
// public listener is saturated. It has no write timeout: a CPU profile or a trace
// writes for as long as it was asked to run.
func adminServer(admin http.Handler, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/", admin)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// descriptorReserve is the descriptors a gateway needs besides its clients' sockets:
// listeners, broker connections, files.
const descriptorReserve = 100

// warnDescriptors logs a warning when the connections the limits allow (maxConns
// WebSockets, maxPending pending and as many idle HTTP connections; negative: no limit)
// could need more descriptors than the process may open: the limits would then not be
// what stops a flood, running out of descriptors would (and then nobody can connect).
func warnDescriptors(maxConns, maxPending int, log *slog.Logger) {
	limit, ok := descriptorLimit()
	if !ok {
		return
	}
	if maxConns < 0 || maxPending < 0 {
		log.Warn("--max-connections or --max-pending-connections is 0 (no limit): connections are bounded only by the descriptor limit",
			"descriptor_limit", limit)
		return
	}
	need := uint64(maxConns) + 2*uint64(maxPending) + descriptorReserve
	if need > limit {
		log.Warn("the connection limits exceed the descriptors this process may open: lower --max-connections or --max-pending-connections, or raise the limit (ulimit -n, LimitNOFILE)",
			"max_connections", maxConns, "max_pending", maxPending, "needed", need, "descriptor_limit", limit)
	}
}

// version is the release this binary is, set at build time with
// -ldflags "-X main.version=v1.2.3"; empty, the module's build information is used.
var version string

// buildInfo is herald_build_info: 1, labelled with the version and the Go version.
func buildInfo() prometheus.Collector {
	version := version
	if bi, ok := debug.ReadBuildInfo(); ok && version == "" {
		version = bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				version += "+" + s.Value
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "herald_build_info",
		Help:        "Always 1; its labels name the build.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	g.Set(1)
	return g
}
