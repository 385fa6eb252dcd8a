// Package gateway is Herald's WebSocket gateway, and its API: the Server (the HTTP side,
// with /ws, /api/publish, health and metrics; it admits clients and creates, tracks and
// drains their sessions), the Hub that routes every message from the bus to the sessions
// it addresses, the session with one handler per client op, and resume. Its mechanisms
// (the write path, the WebSocket transport, the edge, presence, frames, metrics) are
// internal packages that know nothing of this one; docs/ARCHITECTURE.md draws them.
//
// The gateway sees the bus through small interfaces, Publisher, BusHealth and Log, and
// is fed by it through Hub.Dispatch; it never imports an AMQP client. The wire contract
// is docs/PROTOCOL.md.
package gateway

import (
	"compress/flate"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/heraldgw/herald/gateway/internal/edge"
	"github.com/heraldgw/herald/gateway/internal/logsample"
	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/ssetransport"
	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/gateway/internal/writer"
	"github.com/heraldgw/herald/gateway/internal/wstransport"
	"github.com/heraldgw/herald/producer/message"
)

// Publisher puts messages on the bus. Publish returns the message's id (generated when
// m.ID is empty) once the bus has taken the message: with RabbitMQ, once the broker has
// confirmed it. An error wrapping one of message's validation errors means the message
// is invalid; any other error means the bus did not take it and the caller may retry.
type Publisher interface {
	Publish(ctx context.Context, m message.Message) (string, error)
}

// BusHealth tells whether the bus is usable now.
type BusHealth interface {
	Connected() bool
}

// Config configures a Server. Each zero field has the default its comment gives.
type Config struct {
	// NodeID names this gateway in welcome frames and logs. Default "herald".
	NodeID string
	// APIKey is the bearer key of POST /api/publish. Empty turns the HTTP publish API off
	// (it answers 404): it is never open without a key.
	APIKey string
	// WriteQueueBytes caps each connection's write queue; a connection over it is closed
	// with 4008. Default 1 MiB.
	WriteQueueBytes int
	// MaxMessageBytes caps a client frame, reassembled (else close 1009), and an HTTP
	// publish body (else 413). Default 64 KiB.
	MaxMessageBytes int64
	// WriteTimeout bounds each write to a socket. Default 10s.
	WriteTimeout time.Duration
	// PingInterval is how often the gateway pings each client. Default 25s.
	PingInterval time.Duration
	// PongTimeout is how long after a ping is due the client may stay silent before the
	// connection is dropped. Default 10s.
	PongTimeout time.Duration
	// PublishTimeout bounds one publish to the bus. Default 5s.
	PublishTimeout time.Duration
	// DisableClientPublish refuses publish ops from WebSocket clients (error forbidden).
	DisableClientPublish bool
	// InsecureUserParam takes a connection's user from the ?user= query parameter, with no
	// authentication at all: for demos and tests only. NewServer refuses it together with
	// Auth.
	InsecureUserParam bool
	// Auth is how WebSocket clients authenticate (JWT) and what their tokens permit.
	// Default: authentication off, every client anonymous and allowed everything.
	Auth AuthConfig
	// AllowedOrigins are the browser origins, besides the gateway's own, that may open
	// WebSocket connections: exact ("https://app.example.com"), a wildcard first label
	// ("https://*.example.com") or "*" for any. Others get 403. Default: same origin only.
	AllowedOrigins []string
	// Limits bounds what clients may take; see Limits for each default.
	Limits Limits
	// SocketSendBuffer, when positive, sets each connection's kernel send buffer
	// (SO_SNDBUF) to this many bytes instead of letting the kernel size it: it bounds the
	// kernel memory a connection holds, and a client that stops reading backs its write
	// queue up (and is found slow) sooner. Default 0: the kernel's autotuning.
	SocketSendBuffer int
	// FlushInterval is how often a busy connection writes: frames queued to a connection
	// that has written within the current interval wait for the next one and go out in
	// one write, saving system calls at high rates; a quiet connection's frame is written
	// at once. Default 10ms; negative writes every frame at once.
	FlushInterval time.Duration
	// Compression negotiates permessage-deflate (RFC 7692) with clients that offer it:
	// each message is compressed once, by the first writer that needs it, and shared by
	// every connection that negotiated it; the others get it plain. Default off.
	Compression bool
	// CompressionMinBytes is the smallest frame that is compressed; smaller ones go
	// plain (compressing them costs more CPU than it saves bytes). Default 256.
	CompressionMinBytes int
	// CompressionLevel is the deflate level, 1 (fastest) to 9 (smallest). Default 1.
	CompressionLevel int
	// WriteWorkers is how many writer workers write the connections' queues, with no
	// goroutine per write (see the writer package's pool). Default GOMAXPROCS: one per
	// core, of which the first writes alone until its backlog is deep (WriteSpreadAfter).
	// Negative gives every write a goroutine of its own instead (the way to compare).
	WriteWorkers int
	// WriteSpreadAfter is the writer's spread policy: the first worker writes every
	// connection alone while its backlog of connections to write would take it less than
	// this, and shares a longer one (one message's fan-out to ten thousand, say) with the
	// other workers, one contiguous share each. A worker on every core of a small machine
	// preempts the read pumps and the rest, and each write costs more, so the others join
	// only when the backlog makes the wait worth it. Default 20ms; negative: every backlog
	// is shared.
	WriteSpreadAfter time.Duration
	// DrainBatch is how many connections Shutdown closes at a time. Default 500.
	DrainBatch int
	// DrainInterval is the pause between Shutdown's batches. Default 50ms.
	DrainInterval time.Duration
	// Log is the bus's history, read to resume clients that connect or subscribe with
	// since. Default nil: such clients get reset.
	Log Log
	// HistoryMax caps the history a subscribe may ask for (history: N) and GET
	// /api/history's limit. Default 100.
	HistoryMax int
	// ResumeReaders bounds the reads of the bus's log at once for resumes older than the
	// tail of the log in memory; resumes whose since are close share one, and the others
	// wait their turn, first come, first served. Default 8.
	ResumeReaders int
	// BusDetail, when set, is called by each GET /readyz and its answer is shown under
	// "bus" in the JSON: what an operator should know of the bus (with RabbitMQ, whether
	// the broker keeps array and table headers in streams). It never changes readiness: a
	// warning there is not an outage. Called from request goroutines. Default nil: none.
	BusDetail func() any
	// Presence answers who is online: the presence op, GET /api/presence and
	// GET /api/users/{id}. The Hub must share it. Default nil: presence is off.
	Presence *Presence
	// Logger receives the gateway's logs. Default: discard.
	Logger *slog.Logger
	// Metrics counts what the gateway does; the Hub should share it. Default: nothing counted.
	Metrics *Metrics
	// Registry is where NewServer registers its live-state gauges and what /metrics
	// serves. Default: a new registry.
	Registry *prometheus.Registry
	// PrivateMetrics serves /metrics on AdminHandler only, not on Handler (for a
	// separate admin listener that need not be public). Default false: on both.
	PrivateMetrics bool
}

// The defaults of Config's zero fields.
const (
	DefaultNodeID              = "herald"
	DefaultWriteQueueBytes     = 1 << 20
	DefaultMaxMessageBytes     = 64 << 10
	DefaultWriteTimeout        = 10 * time.Second
	DefaultPingInterval        = 25 * time.Second
	DefaultPongTimeout         = 10 * time.Second
	DefaultPublishTimeout      = 5 * time.Second
	DefaultFlushInterval       = 10 * time.Millisecond
	DefaultWriteSpreadAfter    = 20 * time.Millisecond
	DefaultCompressionMinBytes = 256
	DefaultCompressionLevel    = flate.BestSpeed
	DefaultDrainBatch          = 500
	DefaultDrainInterval       = 50 * time.Millisecond
)

// DefaultHistoryMax is Config.HistoryMax's default.
const DefaultHistoryMax = 100

func (c *Config) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.NodeID == "" {
		c.NodeID = DefaultNodeID
	}
	if c.WriteQueueBytes <= 0 {
		c.WriteQueueBytes = DefaultWriteQueueBytes
	}
	if c.HistoryMax <= 0 {
		c.HistoryMax = DefaultHistoryMax
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	def(&c.WriteTimeout, DefaultWriteTimeout)
	def(&c.PingInterval, DefaultPingInterval)
	def(&c.PongTimeout, DefaultPongTimeout)
	def(&c.PublishTimeout, DefaultPublishTimeout)
	def(&c.DrainInterval, DefaultDrainInterval)
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.CompressionMinBytes <= 0 {
		c.CompressionMinBytes = DefaultCompressionMinBytes
	}
	if c.CompressionLevel == 0 {
		c.CompressionLevel = DefaultCompressionLevel
	}
	if c.WriteWorkers == 0 {
		c.WriteWorkers = runtime.GOMAXPROCS(0)
	}
	if c.WriteSpreadAfter == 0 {
		c.WriteSpreadAfter = DefaultWriteSpreadAfter
	}
	if c.DrainBatch <= 0 {
		c.DrainBatch = DefaultDrainBatch
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	c.Limits.SetDefaults()
}

//go:embed web/index.html web/*.js web/*.css
var webFiles embed.FS

// Server is the gateway's HTTP side: it admits clients at /ws, creates their sessions
// and tracks them until they end (Shutdown drains them), takes publishes over HTTP, and
// serves health, metrics and the demo page.
type Server struct {
	// sessionDeps is what the sessions share (the hub, presence, metrics, the writer,
	// resume, the authenticator...); the Server uses it too.
	sessionDeps

	cfg      Config
	bus      BusHealth
	upgrader *wstransport.Upgrader
	sse      ssetransport.Config
	apiKey   [sha256.Size]byte
	mux      *http.ServeMux
	// admin has AdminHandler's routes.
	admin *http.ServeMux

	busReady atomic.Bool

	// The edge: who may connect, from where, how often (package internal/edge).
	origins    *edge.Origins
	slots      edge.Slots
	handshakes *edge.AddrRates // nil: no handshake rate limit
	// clientRates is the rate of the client endpoints (/api/client/), per address; nil:
	// no limit.
	clientRates *edge.AddrRates
}

// connSet is the sessions a Server has open, for Shutdown to drain.
type connSet struct {
	// mu protects draining and all; wg is added to only under it, while not draining, so
	// that Shutdown's Wait never races an Add.
	mu       sync.Mutex
	draining atomic.Bool // written under mu; read anywhere
	all      map[*session]struct{}
	wg       sync.WaitGroup // one per session in all
}

// publisher puts messages on the bus and times how long the bus takes to accept them.
type publisher struct {
	pub     Publisher
	metrics *Metrics
}

// NewServer returns a server for hub that publishes with pub and reports bus health from
// bus. It registers its gauges with cfg.Registry.
func NewServer(cfg Config, hub *Hub, pub Publisher, bus BusHealth) (*Server, error) {
	cfg.setDefaults()
	s := &Server{
		sessionDeps: sessionDeps{
			nodeID:         cfg.NodeID,
			disablePublish: cfg.DisableClientPublish,
			publishTimeout: cfg.PublishTimeout,
			pingInterval:   cfg.PingInterval,
			historyMax:     cfg.HistoryMax,
			logger:         cfg.Logger,
			metrics:        cfg.Metrics,
			hub:            hub,
			presence:       cfg.Presence,
			pub:            publisher{pub: pub, metrics: cfg.Metrics},
			refusals:       logsample.New(cfg.Logger, logsample.Config{}),
			conns:          connSet{all: make(map[*session]struct{})},
		},
		cfg:    cfg,
		bus:    bus,
		apiKey: sha256.Sum256([]byte(cfg.APIKey)),
		mux:    http.NewServeMux(),
		admin:  http.NewServeMux(),
	}
	s.limits = &s.cfg.Limits
	var rerr error
	s.resume, rerr = newResumer(cfg.Log, hub, cfg.Metrics, (cfg.PingInterval+cfg.PongTimeout)/4, cfg.ResumeReaders, cfg.Logger)
	if rerr != nil {
		return nil, fmt.Errorf("gateway: resume: %w", rerr)
	}
	if err := s.setupEdge(); err != nil {
		return nil, err
	}
	l := &s.cfg.Limits
	var err error
	s.upgrader, err = wstransport.NewUpgrader(wstransport.Config{
		Subprotocol:         Subprotocol,
		Compression:         cfg.Compression,
		CompressionMinBytes: cfg.CompressionMinBytes,
		CompressionLevel:    cfg.CompressionLevel,
		CheckOrigin:         s.origins.Allows,
		Refuse:              s.handshakeError,
		PingInterval:        cfg.PingInterval,
		PongTimeout:         cfg.PongTimeout,
		WriteTimeout:        cfg.WriteTimeout,
		SocketSendBuffer:    cfg.SocketSendBuffer,
		MaxMessageBytes:     cfg.MaxMessageBytes,
		FrameRate:           l.FrameRate,
		FrameBurst:          l.FrameBurst,
		MaxFragments:        l.MaxFragments,
		Metrics:             cfg.Metrics,
		Refusals:            s.refusals,
	})
	if err != nil {
		return nil, err
	}
	s.sse = ssetransport.Config{PingInterval: cfg.PingInterval, Retry: sseRetry, WriteTimeout: cfg.WriteTimeout,
		SocketSendBuffer: cfg.SocketSendBuffer}
	if err := cfg.Registry.Register(newStateCollector(s, hub, bus)); err != nil {
		return nil, fmt.Errorf("gateway: register metrics: %w", err)
	}
	if cfg.Presence != nil {
		if err := cfg.Registry.Register(cfg.Presence.Collector()); err != nil {
			return nil, fmt.Errorf("gateway: register presence metrics: %w", err)
		}
	}
	web, err := fs.Sub(webFiles, "web")
	if err != nil {
		return nil, fmt.Errorf("gateway: web files: %w", err)
	}
	s.mux.HandleFunc("GET /ws", s.serveWS)
	s.mux.HandleFunc("GET /ws/info", s.serveInfo)
	s.mux.HandleFunc("GET /sse", s.serveSSE)
	for path := range clientOps {
		s.mux.HandleFunc("POST "+path, s.serveClientOp)
		s.mux.HandleFunc("OPTIONS "+path, s.serveClientPreflight)
	}
	s.mux.HandleFunc("POST /api/publish", s.servePublish)
	s.mux.HandleFunc("GET /api/presence", s.servePresence)
	s.mux.HandleFunc("GET /api/history", s.serveHistory)
	s.mux.HandleFunc("GET /api/users/{id}", s.serveUser)
	s.mux.HandleFunc("GET /healthz", serveHealth)
	s.mux.HandleFunc("GET /readyz", s.serveReady)
	metricsHandler := promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{Registry: cfg.Registry})
	if !cfg.PrivateMetrics {
		s.mux.Handle("GET /metrics", metricsHandler)
	}
	s.mux.Handle("GET /", http.FileServerFS(web))
	s.admin.HandleFunc("GET /healthz", serveHealth)
	s.admin.HandleFunc("GET /readyz", s.serveReady)
	s.admin.Handle("GET /metrics", metricsHandler)
	if hub.traces != nil {
		s.admin.HandleFunc("GET /debug/dispatches", s.serveDispatches)
	}
	// Last, once nothing can fail: its goroutines end with Shutdown.
	s.writer = writer.New(writer.Config{QueueBytes: cfg.WriteQueueBytes, FlushInterval: cfg.FlushInterval,
		Workers: cfg.WriteWorkers, SpreadAfter: cfg.WriteSpreadAfter, Metrics: cfg.Metrics})
	return s, nil
}

// Handler returns the server's public HTTP handler: /ws, the backend API, health,
// metrics (unless PrivateMetrics) and the demo page.
//
// A refusal does not wait for a request body it does not read: every request that
// declares one (a Content-Length or a chunked body) is answered with Connection: close,
// except by the one route that reads its body, POST /api/publish (which does so on its
// own refusals). Without it, net/http would read the body to keep the connection,
// before it writes the answer (a client that sends headers and then nothing would wait
// for the read timeout, holding its connection, for a 401 or a 404).
//
// The http.Server should bound the reading of every request (ReadTimeout, counted from
// its first byte), and set no WriteTimeout. What a handler does once it has read its
// request is then not bounded by the server: the upgrade of /ws clears the deadlines
// (the WebSocket connection keeps its own), and net/http clears the read deadline when
// the request's body has been read, before its background read (which watches for the
// client going away, and cancels the request's context if it does). A long-lived
// streaming response, such as a Server-Sent Events endpoint, so needs nothing for the
// read timeout; it must not read its request body after the deadline, and where a
// WriteTimeout is set, it must move its write deadline on with
// http.ResponseController.SetWriteDeadline as it streams (TestStreamOutlastsReadTimeout).
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !(r.Method == http.MethodPost && (r.URL.Path == "/api/publish" || clientOps[r.URL.Path] != "")) {
			closeUnread(w, r)
		}
		s.mux.ServeHTTP(w, r)
	})
}

// AdminHandler returns the handler of an admin listener: /metrics, /healthz and
// /readyz, for operators and load balancers, apart from the public traffic.
func (s *Server) AdminHandler() http.Handler { return s.admin }

// closeUnread has the answer to r close the connection where r declares a body, for an
// answer that does not read it.
func closeUnread(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 { // declared, or -1: chunked
		w.Header().Set("Connection", "close")
	}
}

func serveHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// SetBusReady marks whether the bus is consuming, so that messages published from now
// on reach this gateway's clients; /readyz answers 503 until then.
func (s *Server) SetBusReady(ready bool) { s.busReady.Store(ready) }

// Ready reports whether the gateway should get traffic: the bus is connected and
// consuming, and the gateway is not draining.
func (s *Server) Ready() bool {
	return s.busReady.Load() && s.bus.Connected() && !s.conns.draining.Load()
}

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	status, code := "ready", http.StatusOK
	switch {
	case s.conns.draining.Load():
		status, code = "draining", http.StatusServiceUnavailable
	case !s.busReady.Load() && s.bus.Connected():
		status, code = "starting", http.StatusServiceUnavailable
	case !s.busReady.Load() || !s.bus.Connected():
		status, code = "bus unavailable", http.StatusServiceUnavailable
	}
	body := map[string]any{"status": status}
	if s.cfg.BusDetail != nil {
		body["bus"] = s.cfg.BusDetail()
	}
	writeJSON(w, code, body)
}

// serveWS checks the query, admits the client, upgrades the request, creates the
// session, joins it to the hub (or starts its resume) and starts its transport.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	a, ok := s.admitClient(w, r, "")
	if !ok {
		return // answered and counted
	}
	t, err := s.upgrader.Upgrade(w, r)
	if err != nil {
		a.release()
		return // the upgrader has answered and counted it
	}
	c := newSession(&s.sessionDeps, a.user, t, t.Socket(), t.Encoding())
	t.Init(c, &c.Queue)
	s.startSession(c, t, a, t.Refuse, c.welcome)
}

// admission is what admitClient found in a client's request: its identity, user,
// channels and resume point, and its connection slots (release gives them back).
type admission struct {
	id       *edge.Identity
	user     string
	channels []string
	since    *int64
	presence bool
	release  func()
}

// admitClient checks a connection request (WebSocket or Server-Sent Events) before its
// transport takes it: draining, the handshake rate, the bus, the query (channels, since
// or lastEventID where not empty, presence) and the edge's checks (admit). It answers
// and counts a refusal itself.
func (s *Server) admitClient(w http.ResponseWriter, r *http.Request, lastEventID string) (a admission, ok bool) {
	if s.conns.draining.Load() {
		s.refuse(w, http.StatusServiceUnavailable, "draining", "the gateway is shutting down; connect to another")
		return a, false
	}
	ip, ok := s.handshakeAllowed(w, r)
	if !ok {
		return a, false // answered 429 and counted
	}
	if _, known := s.hub.Newest(); s.resume.history != nil && !known {
		// The bus is still reading the tail of its log (the hub's SetLogStart): a client
		// admitted now would get messages published before it came.
		w.Header().Set("Retry-After", "1")
		s.refuse(w, http.StatusServiceUnavailable, "starting", "the gateway is catching up with the bus; retry")
		return a, false
	}
	q := r.URL.Query()
	channels, err := parseChannels(q.Get("channels"))
	if err != nil {
		s.refuse(w, http.StatusBadRequest, "bad_query", err.Error())
		return a, false
	}
	what, v := "since", q.Get("since")
	if lastEventID != "" {
		what, v = "Last-Event-ID", lastEventID // the header wins
	}
	if v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < -1 {
			s.refuse(w, http.StatusBadRequest, "bad_query", what+" must be -1 or an offset")
			return a, false
		}
		a.since = &n
	}
	a.presence = q.Get("presence") == "1" || q.Get("presence") == "true"
	a.id, a.release, ok = s.admit(w, r, ip, channels)
	if !ok {
		return a, false // admit has answered and counted it
	}
	a.channels, a.user = channels, a.id.User
	if s.cfg.InsecureUserParam {
		a.user = q.Get("user")
	}
	return a, true
}

// startSession starts the session c over transport t, admitted as a: its edge state,
// tracking (refuse closes t where the gateway began draining meanwhile), its join to the
// hub with welcome as its first frame (or its resume), its presence watch where asked,
// and t.
func (s *Server) startSession(c *session, t transport, a admission, refuse func(code int, text string), welcome func(newest int64, known bool)) {
	c.edge = edge.NewConn(a.id, s.limits, a.release)
	c.edge.ArmExpiry(s.auth.Leeway(), c.tokenExpired)
	s.metrics.Accepted(c.kind)
	if !s.conns.track(c) {
		// Draining began during the upgrade: tell the client to go elsewhere.
		refuse(wire.CloseGoingAway, "gateway shutting down")
		c.edge.Stop()
		s.metrics.Closed(wire.CloseGoingAway, c.kind)
		return
	}
	if a.since == nil {
		s.hub.join(c, a.channels, welcome)
		s.watchPresence(c, a)
		// The handler returns, and with it the request and its buffers; the session
		// lives on in its transport (End untracks it).
		t.Start()
		return
	}
	c.welcome(s.hub.Newest()) // c joins the hub when its replay is done
	go func() {
		defer func() {
			if v := recover(); v != nil {
				c.Recovered(v)
			}
		}()
		s.resume.connect(c, *a.since, a.channels)
		s.watchPresence(c, a)
		t.Start()
	}()
}

// watchPresence has c, joined to the hub, watch the presence of its channels that have
// presence, where it asked at connect (presence=1).
func (s *Server) watchPresence(c *session, a admission) {
	if !a.presence {
		return
	}
	for _, ch := range a.channels {
		if s.presence.Enabled(ch) {
			s.hub.subscribe(c, ch, true, func() {})
		}
	}
}

// clientInfo is the answer of GET /ws/info: what a client (the demo page) needs to know
// before it connects. It tells nothing a client could not learn by trying.
type clientInfo struct {
	// Auth is "off" (no token is asked for or used), "optional" (a token names the user;
	// without one a client is anonymous) or "required" (a client without a valid token
	// is refused with 401).
	Auth string `json:"auth"`
	// UserParam says that ?user= names the connection's user, unauthenticated
	// (InsecureUserParam: demos and tests).
	UserParam bool `json:"user_param"`
	// API says that the backend API (POST /api/publish...) is on: an API key is set.
	API bool `json:"api"`
}

// serveInfo is GET /ws/info.
func (s *Server) serveInfo(w http.ResponseWriter, _ *http.Request) {
	info := clientInfo{Auth: "off", UserParam: s.cfg.InsecureUserParam, API: s.cfg.APIKey != ""}
	switch {
	case s.auth.Enabled() && s.auth.Anonymous():
		info.Auth = "optional"
	case s.auth.Enabled():
		info.Auth = "required"
	}
	writeJSON(w, http.StatusOK, info)
}

// track adds c to the sessions that Shutdown drains; false once draining.
func (cs *connSet) track(c *session) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.draining.Load() {
		return false
	}
	cs.all[c] = struct{}{}
	cs.wg.Add(1)
	return true
}

// forEach calls fn for every session tracked, holding the set's lock.
func (cs *connSet) forEach(fn func(*session)) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for c := range cs.all {
		fn(c)
	}
}

// untrack removes c, which has ended.
func (cs *connSet) untrack(c *session) {
	cs.mu.Lock()
	delete(cs.all, c)
	cs.mu.Unlock()
	cs.wg.Done()
}

// drain marks the set draining (track refuses from now on) and returns the sessions it
// holds.
func (cs *connSet) drain() []*session {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.draining.Store(true)
	all := make([]*session, 0, len(cs.all))
	for c := range cs.all {
		all = append(all, c)
	}
	return all
}

// setupEdge builds the server's authenticator, origin policy and handshake limiter
// from its config.
func (s *Server) setupEdge() error {
	auth, err := edge.NewAuthenticator(s.cfg.Auth)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if auth.Enabled() && s.cfg.InsecureUserParam {
		return errors.New("gateway: InsecureUserParam cannot be used with authentication: it would let any client claim any user")
	}
	s.auth = auth
	if s.origins, err = edge.NewOrigins(s.cfg.AllowedOrigins); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	l := &s.cfg.Limits
	if l.HandshakeRate > 0 {
		s.handshakes = edge.NewAddrRates(l.HandshakeRate, max(l.HandshakeBurst, 1), max(l.TrackedAddresses, 1))
	}
	if l.MessageRate > 0 {
		s.clientRates = edge.NewAddrRates(l.MessageRate, max(l.MessageBurst, 1), max(l.TrackedAddresses, 1))
	}
	return nil
}

// Reasons of sampled refusal log lines (logsample.Sampler): a client may repeat any of
// them at will, so each is written a few times, then at most once a second.
const (
	logOrigin        = "origin"
	logToken         = "token"
	logChannel       = "channel"
	logConnections   = "connections"
	logConnectionsIP = "connections_per_ip"
	logHandshakeRate = "handshake_rate"
	logRateClosed    = "message_rate_closed"
	logRefresh       = "refresh"
)

// handshakeAllowed takes a token from the handshake rate of the request's client
// address, first of all checks (so that a flood of handshakes costs the gateway no
// origin or token check, and no log line, past the burst): over it, 429. It returns the
// address, which the connection's limits count it under.
func (s *Server) handshakeAllowed(w http.ResponseWriter, r *http.Request) (netip.Addr, bool) {
	ip := edge.AddrKey(edge.ClientIP(r, s.cfg.Limits.TrustedProxies))
	if s.handshakes != nil && !s.handshakes.Allow(ip) {
		s.metrics.LimitHit(metrics.LimitHandshakeRate)
		s.refusals.Log(slog.LevelDebug, logHandshakeRate, "handshake refused: rate", "ip", ip)
		w.Header().Set("Retry-After", "1")
		s.refuse(w, http.StatusTooManyRequests, "rate_limited", "too many connection attempts; retry later")
		return ip, false
	}
	return ip, true
}

// admit decides, before the upgrade, whether a client whose handshake rate allowed it
// (handshakeAllowed) may connect: its origin (else 403), its token (401), its permission
// to subscribe to the channels it names (403; too many: 400), and room for one more
// connection (503 for the gateway, 429 for its address). It answers and counts a refusal
// itself, and logs it sampled, with at most a bounded prefix of what the client sent.
// When it admits, release gives the connection's slots back and must be called once.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, ip netip.Addr, channels []string) (id *edge.Identity, release func(), ok bool) {
	if !s.origins.Allows(r) {
		s.refusals.Log(slog.LevelInfo, logOrigin, "handshake refused: origin not allowed",
			"origin", logsample.Clip(r.Header.Get("Origin")), "ip", ip)
		s.refuse(w, http.StatusForbidden, "origin", "origin not allowed")
		return nil, nil, false
	}
	id, terr := s.auth.Authenticate(r, s.origins.TrustsCookies(r))
	if terr != nil {
		s.refusals.Log(slog.LevelInfo, logToken, "handshake refused: token", "why", terr.Reason,
			"err", logsample.ClipErr(terr.Err), "ip", ip)
		w.Header().Set("WWW-Authenticate", `Bearer realm="herald", error="invalid_token"`)
		s.refuse(w, http.StatusUnauthorized, terr.Reason, "token refused: "+terr.Err.Error())
		return nil, nil, false
	}
	if max := s.cfg.Limits.MaxSubscriptions; max > 0 && len(channels) > max {
		s.metrics.LimitHit(metrics.LimitSubscriptions)
		s.refuse(w, http.StatusBadRequest, "bad_query", fmt.Sprintf("channels names %d channels; at most %d per connection", len(channels), max))
		return nil, nil, false
	}
	for _, ch := range channels {
		if !id.Subscribe.Allows(ch) {
			s.refusals.Log(slog.LevelInfo, logChannel, "handshake refused: channel not permitted",
				"user", logsample.Clip(id.User), "channel", ch, "ip", ip)
			s.refuse(w, http.StatusForbidden, CodeForbidden, fmt.Sprintf("not permitted to subscribe to %q", ch))
			return nil, nil, false
		}
	}
	release, limit := s.slots.Acquire(ip, s.cfg.Limits.MaxConnections, s.cfg.Limits.MaxConnectionsPerIP)
	switch limit {
	case metrics.LimitConnections:
		s.metrics.LimitHit(limit)
		s.refusals.Log(slog.LevelWarn, logConnections, "handshake refused: the gateway is at its connection limit", "max", s.cfg.Limits.MaxConnections)
		s.refuse(w, http.StatusServiceUnavailable, "too_many_connections", "this gateway is full; connect to another")
		return nil, nil, false
	case metrics.LimitConnectionsPerIP:
		s.metrics.LimitHit(limit)
		s.refusals.Log(slog.LevelDebug, logConnectionsIP, "handshake refused: connections per address", "ip", ip)
		w.Header().Set("Retry-After", "5")
		s.refuse(w, http.StatusTooManyRequests, "too_many_connections_per_ip", "too many connections from this address")
		return nil, nil, false
	}
	return id, release, true
}

func (s *Server) handshakeError(w http.ResponseWriter, _ *http.Request, status int, reason error) {
	s.refuse(w, status, "bad_handshake", reason.Error())
}

// refuse answers a request that is not upgraded, and counts it.
func (s *Server) refuse(w http.ResponseWriter, status int, reason, msg string) {
	s.metrics.RefusedHandshake(reason)
	writeError(w, status, reason, msg)
}

// parseChannels reads the comma-separated channels query parameter.
func parseChannels(v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	list := strings.Split(v, ",")
	for _, ch := range list {
		if !message.ValidChannel(ch) {
			return nil, fmt.Errorf("invalid channel %q in channels: names are 1 to 128 characters of A-Z a-z 0-9 _ - . : /", ch)
		}
	}
	return list, nil
}

// publishRequest is the body of POST /api/publish.
type publishRequest struct {
	ID      string          `json:"id"`
	Channel string          `json:"channel"`
	Users   []string        `json:"users"`
	Data    json.RawMessage `json:"data"`
}

// apiAllowed answers a request to the backend API that may not go on: 404 where the API
// is off (no key configured), 401 without the right key. It reports whether it may.
func (s *Server) apiAllowed(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.APIKey == "" {
		closeUnread(w, r) // its body is not read
		writeError(w, http.StatusNotFound, "api_disabled", "the backend API is off: start the gateway with an API key")
		return false
	}
	if !s.authorized(r) {
		closeUnread(w, r)
		w.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong API key")
		return false
	}
	return true
}

// queryChannel returns the query's channel, or answers 400 when it is not a valid one.
func queryChannel(w http.ResponseWriter, q url.Values) (string, bool) {
	ch := q.Get("channel")
	if !message.ValidChannel(ch) {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "channel must be 1 to 128 characters of A-Z a-z 0-9 _ - . : /")
		return "", false
	}
	return ch, true
}

// servePresence is GET /api/presence?channel=C[&limit=N][&after=U]: a page of who is
// online on C over every gateway (ChannelPresence).
func (s *Server) servePresence(w http.ResponseWriter, r *http.Request) {
	if !s.apiAllowed(w, r) {
		return
	}
	q := r.URL.Query()
	ch, ok := queryChannel(w, q)
	if !ok {
		return
	}
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "limit must be a positive integer")
			return
		}
		limit = n
	}
	if !s.presence.Enabled(ch) {
		writeError(w, http.StatusNotFound, "presence_off", fmt.Sprintf("presence is off for %q on this gateway (see --presence-channels)", ch))
		return
	}
	writeJSON(w, http.StatusOK, s.presence.Channel(ch, q.Get("after"), limit))
}

// serveUser is GET /api/users/{id}: whether the user is online over every gateway, on
// how many connections (UserPresence).
func (s *Server) serveUser(w http.ResponseWriter, r *http.Request) {
	if !s.apiAllowed(w, r) {
		return
	}
	id := r.PathValue("id")
	if id == "" || len(id) > message.MaxUserLen {
		writeError(w, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("a user id is 1 to %d bytes", message.MaxUserLen))
		return
	}
	if !s.presence.TracksUsers() {
		writeError(w, http.StatusNotFound, "presence_off", "user presence is off on this gateway")
		return
	}
	writeJSON(w, http.StatusOK, s.presence.User(id))
}

// servePublish is POST /api/publish (docs/PROTOCOL.md section 14).
func (s *Server) servePublish(w http.ResponseWriter, r *http.Request) {
	if !s.apiAllowed(w, r) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxMessageBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge,
				fmt.Sprintf("body is larger than %d bytes", s.cfg.MaxMessageBytes))
			return
		}
		writeError(w, http.StatusBadRequest, CodeBadRequest, "reading body: "+err.Error())
		return
	}
	var req publishRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "body must be a JSON object: "+err.Error())
		return
	}
	m := message.Message{ID: req.ID, Channel: req.Channel, Users: req.Users, Data: req.Data, Source: metrics.SourceHTTP}
	if err := m.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.PublishTimeout)
	defer cancel()
	id, err := s.pub.publish(ctx, m)
	if err != nil {
		if isInvalid(err) {
			writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
			return
		}
		s.metrics.PublishFailed(metrics.SourceHTTP)
		s.logger.Warn("HTTP publish failed", "err", err)
		writeError(w, http.StatusServiceUnavailable, CodeUnavailable, "the bus cannot take messages now; retry")
		return
	}
	s.metrics.Published(metrics.SourceHTTP)
	writeJSON(w, http.StatusAccepted, map[string]string{"id": id})
}

// publish puts m on the bus and times how long the bus takes to accept it.
func (p publisher) publish(ctx context.Context, m message.Message) (string, error) {
	start := time.Now()
	id, err := p.pub.Publish(ctx, m)
	if err == nil {
		p.metrics.PublishDuration(time.Since(start))
	}
	return id, err
}

// authorized compares the bearer key with the configured one in constant time (over
// hashes, so that the length is not revealed either).
func (s *Server) authorized(r *http.Request) bool {
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || key == "" {
		return false
	}
	got := sha256.Sum256([]byte(key))
	return subtle.ConstantTimeCompare(got[:], s.apiKey[:]) == 1
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	type body struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	writeJSON(w, status, map[string]body{"error": {Code: code, Message: msg}})
}

// Shutdown drains the gateway: /readyz turns unready and new connections are refused at
// once; then every connection is sent what it has queued and closed with 1001 (so that
// it reconnects elsewhere and resumes), DrainBatch at a time. It returns when every
// connection is finished, or ctx.Err() when ctx ends first.
func (s *Server) Shutdown(ctx context.Context) error {
	all := s.conns.drain()
	s.logger.Info("draining", "connections", len(all))
	for i := 0; i < len(all); i += s.cfg.DrainBatch {
		for _, c := range all[i:min(i+s.cfg.DrainBatch, len(all))] {
			c.RequestClose(wire.CloseGoingAway, "gateway shutting down", true)
		}
		if i+s.cfg.DrainBatch < len(all) {
			select {
			case <-ctx.Done():
				return fmt.Errorf("gateway: shutdown: %w", ctx.Err())
			case <-time.After(s.cfg.DrainInterval):
			}
		}
	}
	done := make(chan struct{})
	go func() {
		s.conns.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.resume.close()
		s.refusals.Close()
		s.writer.Close()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("gateway: shutdown: %w", ctx.Err())
	}
}
