// Command herald-gateway runs Herald's WebSocket gateway: on RabbitMQ when an AMQP URL is
// configured, else on the embedded in-process bus. Run with -help for every flag.
package main

import (
	"cmp"
	"context"
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

func serve(ctx context.Context, cfg config, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	reg.MustRegister(buildInfo())
	metrics := gateway.NewMetrics(reg)
	presence := newPresence(cfg, log, metrics)
	hub := gateway.NewHub(gateway.HubConfig{DedupWindow: cfg.DedupWindow, Logger: log, Metrics: metrics, Presence: presence})

	var b bus
	var err error
	if cfg.AMQPURL == "" {
		b = embeddedBus(cfg, log, metrics, hub)
	} else if b, err = rabbitBus(ctx, cfg, log, metrics, hub); err != nil {
		return err
	}
	defer b.close()

	if cfg.InsecureUserParam {
		log.Warn("INSECURE: --insecure-user-param is on: any client may claim any user with ?user=; for demos and tests only")
	}
	if cfg.APIKey == "" {
		log.Info("the HTTP publish API is off (no API key); set HERALD_API_KEY to turn it on")
	}
	edge, err := edgeConfig(ctx, cfg, log, metrics)
	if err != nil {
		return err
	}
	srv, err := gateway.NewServer(gateway.Config{
		Auth:                 edge.auth,
		Limits:               edge.limits,
		AllowedOrigins:       edge.origins,
		NodeID:               cfg.NodeID,
		APIKey:               cfg.APIKey,
		WriteQueueBytes:      cfg.WriteQueueBytes,
		MaxMessageBytes:      cfg.MaxMessageBytes,
		WriteTimeout:         cfg.WriteTimeout,
		PingInterval:         cfg.PingInterval,
		PublishTimeout:       cfg.PublishTimeout,
		FlushInterval:        cfg.FlushInterval,
		WriteWorkers:         cfg.WriteWorkers,
		Compression:          cfg.Compression,
		CompressionMinBytes:  cfg.CompressMinBytes,
		CompressionLevel:     cfg.CompressLevel,
		SocketSendBuffer:     cfg.SocketSendBuffer,
		DisableClientPublish: cfg.NoClientPublish,
		InsecureUserParam:    cfg.InsecureUserParam,
		Log:                  b.Log,
		BusDetail:            b.detail,
		Presence:             presence,
		Logger:               log,
		Metrics:              metrics,
		Registry:             reg,
		PrivateMetrics:       cfg.AdminAddr != "", // not with the deprecated --debug-addr: as before, public too
	}, hub, b.Publisher, b.BusHealth)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var aln net.Listener // nil: no admin listener
	if addr := cmp.Or(cfg.AdminAddr, cfg.DebugAddr); addr != "" {
		if aln, err = net.Listen("tcp", addr); err != nil {
			_ = ln.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
	}
	httpSrv, pl := publicServer(cfg, srv.Handler(), ln, log, metrics)
	reg.MustRegister(listenerGauges(pl)...)
	warnDescriptors(cfg, log)

	busCtx, stopBus := context.WithCancel(context.Background())
	defer stopBus()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Go(func() {
		if err := b.run(busCtx); err != nil {
			errc <- fmt.Errorf("bus: %w", err)
		}
	})
	wg.Go(func() {
		if err := httpSrv.Serve(pl); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	})
	wg.Go(func() { watchLag(busCtx, b, hub, metrics) })
	if b.probe != nil {
		wg.Go(func() { b.probe(busCtx) })
	}
	var link gateway.PresenceSender // nil: presence is local (the embedded bus) or off
	if presence != nil && cfg.AMQPURL != "" {
		l := presenceLink(cfg, log, metrics, presence)
		link = l
		wg.Go(func() {
			if err := l.Run(busCtx); err != nil {
				errc <- fmt.Errorf("presence link: %w", err)
			}
		})
	}
	// Presence's updates stop before its bye goes out (a delta after the bye would put
	// this gateway back in the others' views until the TTL).
	presenceCtx, stopPresence := context.WithCancel(busCtx)
	defer stopPresence()
	presenceDone := make(chan struct{})
	go func() {
		defer close(presenceDone)
		presence.Run(presenceCtx, link)
	}()
	if edge.jwks != nil {
		wg.Go(func() { edge.jwks.Run(busCtx) })
	}
	go func() {
		select {
		case <-b.ready:
			srv.SetBusReady(true)
			log.Info("bus consuming; gateway ready")
		case <-busCtx.Done():
		}
	}()
	var admin *http.Server // nil: no admin listener
	listening := []any{"addr", ln.Addr().String(), "node", cfg.NodeID, "bus", busName(cfg)}
	if aln != nil {
		admin = adminServer(srv.AdminHandler(), log)
		wg.Go(func() {
			if err := admin.Serve(aln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin http: %w", err)
			}
		})
		if cfg.DebugAddr != "" {
			log.Warn("--debug-addr is deprecated: use --admin-addr, which serves /metrics there only")
		}
		listening = append(listening, "admin", aln.Addr().String())
	}
	if cfg.AMQPURL != "" {
		listening = append(listening, "amqp_url", redact.URL(cfg.AMQPURL))
	}
	log.Info("herald gateway listening", listening...)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("signal received: draining", "timeout", cfg.ShutdownTimeout)
	case runErr = <-errc:
	}

	// Drain: turn unready, stop taking connections, close clients with 1001 in batches,
	// then stop the HTTP server (in-flight publishes finish) and the bus.
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(drainCtx); err != nil {
		log.Warn("drain did not finish in time", "err", err)
	}
	if err := httpSrv.Shutdown(drainCtx); err != nil {
		log.Warn("HTTP shutdown did not finish in time", "err", err)
		_ = httpSrv.Close()
	}
	stopPresence()
	<-presenceDone
	if link != nil {
		presence.Leave(drainCtx, link) // the others drop this gateway's users now, not after the TTL
	}
	stopBus()
	if admin != nil {
		// Last: /readyz said draining to the load balancers until now.
		if err := admin.Shutdown(drainCtx); err != nil {
			_ = admin.Close()
		}
	}
	wg.Wait()
	log.Info("gateway stopped")
	return runErr
}

func busName(cfg config) string {
	if cfg.AMQPURL == "" {
		return "embedded"
	}
	return "rabbitmq"
}

func embeddedBus(cfg config, log *slog.Logger, metrics *gateway.Metrics, hub *gateway.Hub) bus {
	log.Warn("no AMQP URL: running on the embedded in-process bus; this gateway is a single node. Set HERALD_AMQP_URL to run several on RabbitMQ")
	e := consumer.NewEmbedded(consumer.EmbeddedConfig{
		RetainMessages: cfg.RetainMessages,
		RetainBytes:    cfg.RetainBytes,
		Logger:         log,
		OnLagged:       metrics.BusLagged,
	}, hub)
	hub.SetLogStart(e.Newest())
	ready := make(chan struct{})
	close(ready)
	head := func(context.Context) (int64, bool) { return e.Newest(), true }
	return bus{Publisher: e, BusHealth: e, Log: e, run: e.Run, head: head, ready: ready, close: func() {}}
}

// rabbitHealth is connected when both the publisher and the stream consumer are.
type rabbitHealth struct {
	p *producer.Publisher
	s *consumer.Stream
}

func (h rabbitHealth) Connected() bool { return h.p.Connected() && h.s.Connected() }

func rabbitBus(ctx context.Context, cfg config, log *slog.Logger, metrics *gateway.Metrics, hub *gateway.Hub) (bus, error) {
	pub, err := producer.New(ctx, producer.Config{
		URL:           cfg.AMQPURL,
		Exchange:      cfg.Exchange,
		Name:          "herald-gateway-publisher-" + cfg.NodeID,
		Logger:        log.With("part", "publisher"),
		OnStateChange: func(up bool) { metrics.BusState("publisher", up) },
	})
	if err != nil {
		return bus{}, fmt.Errorf("publisher: %w", err)
	}
	stream := consumer.NewStream(streamConfig(cfg, log, metrics, hub), hub)
	headers := newHeaderReport()
	return bus{
		Publisher: pub,
		BusHealth: rabbitHealth{p: pub, s: stream},
		Log:       stream,
		run:       stream.Run,
		head:      stream.Head,
		ready:     stream.Ready(),
		close:     func() { _ = pub.Close() },
		probe: func(ctx context.Context) {
			probeHeaders(ctx, stream.ProbeHeaders, log.With("part", "header-probe"), metrics, headers)
		},
		detail: headers.detail,
	}, nil
}

// streamConfig is the stream consumer's configuration: it reports to metrics and, once
// it has read the stream up to its head at start, tells hub where the log stands (until
// then the server admits no client).
func streamConfig(cfg config, log *slog.Logger, metrics *gateway.Metrics, hub *gateway.Hub) consumer.StreamConfig {
	return consumer.StreamConfig{
		URL:           cfg.AMQPURL,
		Exchange:      cfg.Exchange,
		Stream:        cfg.Stream,
		MaxAge:        cfg.StreamMaxAge,
		MaxBytes:      cfg.StreamMaxBytes,
		SegmentBytes:  cfg.StreamSegment,
		Prefetch:      cfg.Prefetch,
		Name:          "herald-gateway-consumer-" + cfg.NodeID,
		Logger:        log.With("part", "consumer"),
		OnStateChange: func(up bool) { metrics.BusState("consumer", up) },
		OnLogStart:    hub.SetLogStart,
		OnDecodeError: func(err error) {
			if errors.Is(err, producer.ErrUnroutable) {
				metrics.BusUnroutable()
			} else {
				metrics.BusDecodeError()
			}
		},
		OnBadHeader: metrics.BusBadHeader,
	}
}

// newPresence returns the gateway's presence, or nil when it is off: no channel has it and
// the per-user view is off.
func newPresence(cfg config, log *slog.Logger, metrics *gateway.Metrics) *gateway.Presence {
	channels := splitList(cfg.PresenceChannels)
	if len(channels) == 0 && cfg.NoUserPresence {
		return nil
	}
	if len(channels) > 0 {
		log.Info("presence on", "channels", channels, "exclude", splitList(cfg.PresenceExclude))
	}
	return gateway.NewPresence(gateway.PresenceConfig{
		Node:             cfg.NodeID,
		Channels:         channels,
		Exclude:          splitList(cfg.PresenceExclude),
		NoUsers:          cfg.NoUserPresence,
		Interval:         cfg.PresenceInterval,
		SnapshotInterval: cfg.PresenceSnapshot,
		TTL:              cfg.PresenceTTL,
		MaxList:          cfg.PresenceMaxList,
		Logger:           log.With("part", "presence"),
		Metrics:          metrics,
	})
}

// presenceLink returns the RabbitMQ link that carries presence between the gateways.
func presenceLink(cfg config, log *slog.Logger, metrics *gateway.Metrics, p *gateway.Presence) *consumer.PresenceLink {
	return consumer.NewPresenceLink(consumer.PresenceConfig{
		URL:           cfg.AMQPURL,
		Exchange:      cfg.PresenceExchange,
		Name:          "herald-gateway-presence-" + cfg.NodeID,
		TTL:           cfg.PresenceTTL,
		Logger:        log.With("part", "presence-link"),
		OnStateChange: func(up bool) { metrics.BusState("presence", up) },
	}, p)
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
// not yet answered or upgraded (and the idle keep-alive ones) to cfg.MaxPending, and the
// http.Server that serves h on it. Every request is read within cfg.ReadTimeout, headers
// within cfg.ReadHeaderTimeout; an upgraded WebSocket keeps deadlines of its own (see
// gateway.Server.Handler).
func publicServer(cfg config, h http.Handler, ln net.Listener, log *slog.Logger, metrics *gateway.Metrics) (*http.Server, *pending.Listener) {
	refusals := logsample.New(log, logsample.Config{})
	pl := pending.NewListener(ln, pending.Config{
		Max:        off(cfg.MaxPending),
		MaxPerAddr: off(cfg.MaxPendingPerIP),
		OnRefused: func(limit string, remote net.Addr) {
			metrics.ListenerRefused(limit)
			refusals.Log(slog.LevelWarn, limit, "connection closed at once: too many not yet answered (or idle)",
				"remote", remote.String(), "max", cfg.MaxPending, "max_per_ip", cfg.MaxPendingPerIP)
		},
	})
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

// warnDescriptors logs a warning when the connections the limits allow (WebSockets,
// pending and idle HTTP connections) could need more descriptors than the process may
// open: the limits would then not be what stops a flood, running out of descriptors
// would (and then nobody can connect).
func warnDescriptors(cfg config, log *slog.Logger) {
	limit, ok := descriptorLimit()
	if !ok {
		return
	}
	if cfg.MaxConnections == 0 || cfg.MaxPending == 0 {
		log.Warn("--max-connections or --max-pending-connections is 0 (no limit): connections are bounded only by the descriptor limit",
			"descriptor_limit", limit)
		return
	}
	need := uint64(cfg.MaxConnections) + 2*uint64(cfg.MaxPending) + descriptorReserve
	if need > limit {
		log.Warn("the connection limits exceed the descriptors this process may open: lower --max-connections or --max-pending-connections, or raise the limit (ulimit -n, LimitNOFILE)",
			"max_connections", cfg.MaxConnections, "max_pending", cfg.MaxPending, "needed", need, "descriptor_limit", limit)
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
