package gateway

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/gateway/internal/pending"
	"github.com/heraldgw/herald/gateway/internal/wsframe"
)

// Reasons a message to one connection was dropped (label of herald_messages_dropped_total).
const (
	dropSlowConsumer = "slow_consumer" // the connection's write queue overflowed: closed with 4008
	dropClosed       = "closed"        // the connection was closing or closed
	dropWriteFailed  = "write_failed"  // the socket write failed or timed out
	dropDuplicate    = "duplicate"     // a message id seen within the deduplication window
	dropUndecodable  = "undecodable"   // a bus message that is not a Herald message
	dropLagged       = "lagged"        // the embedded bus's log moved past undispatched messages
	dropUnroutable   = "unroutable"    // a bus message whose channel or users header cannot be read
)

// Sources of published messages (label of herald_messages_published_total).
const (
	sourceWS   = "ws"
	sourceHTTP = "http"
	sourceAMQP = "amqp" // any publisher other than a gateway
)

// Metrics is the gateway's Prometheus instrumentation. Its methods may be called on a nil
// *Metrics, which counts nothing (for tests of parts in isolation).
type Metrics struct {
	accepted           prometheus.Counter
	refused            *prometheus.CounterVec
	closedConns        *prometheus.CounterVec
	publishedTotal     *prometheus.CounterVec
	publishFailedTotal *prometheus.CounterVec
	receivedTotal      *prometheus.CounterVec
	fanout             prometheus.Histogram
	publishLatency     prometheus.Histogram
	consumerLag        prometheus.Gauge
	delivered          prometheus.Counter
	droppedTotal       *prometheus.CounterVec
	bytesWritten       prometheus.Counter
	socketWrites       prometheus.Counter
	slowConsumers      prometheus.Counter
	clientErrors       *prometheus.CounterVec
	latency            prometheus.Histogram
	busReconnects      prometheus.Counter
	busDisconnects     prometheus.Counter
	busAway            prometheus.Counter

	busMu    sync.Mutex           // protects busDown
	busDown  map[string]time.Time // parts of the bus connection that are away, since when
	resumes  *prometheus.CounterVec
	replayed prometheus.Counter

	edge        edgeMetrics // authentication and limits
	presence    presenceMetrics
	compression compressionMetrics
	contract    contractMetrics // what the bus's messages and broker do to the AMQP contract
}

// compressionMetrics counts permessage-deflate's work.
type compressionMetrics struct {
	frames     prometheus.Counter
	bytesIn    prometheus.Counter
	bytesOut   prometheus.Counter
	negotiated prometheus.Counter
}

func (c *compressionMetrics) register(reg prometheus.Registerer) {
	c.frames = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_compressed_frames_total",
		Help: "Frames compressed with permessage-deflate: once per message, whatever the number of recipients that negotiated it.",
	})
	c.bytesIn = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_compression_input_bytes_total",
		Help: "Payload bytes of the frames compressed.",
	})
	c.bytesOut = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_compression_output_bytes_total",
		Help: "Payload bytes those frames compressed to (a frame that did not shrink is sent, and counted, as it was).",
	})
	c.negotiated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_compression_negotiated_total",
		Help: "WebSocket connections accepted with permessage-deflate negotiated.",
	})
	reg.MustRegister(c.frames, c.bytesIn, c.bytesOut, c.negotiated)
}

// compressed counts one frame compressed, from in to out payload bytes.
func (m *Metrics) compressed(in, out int) {
	if m != nil {
		m.compression.frames.Inc()
		m.compression.bytesIn.Add(float64(in))
		m.compression.bytesOut.Add(float64(out))
	}
}

func (m *Metrics) negotiatedCompression() {
	if m != nil {
		m.compression.negotiated.Inc()
	}
}

// presenceMetrics counts presence's traffic between gateways and its events.
type presenceMetrics struct {
	updates *prometheus.CounterVec
	events  *prometheus.CounterVec
	expired prometheus.Counter
}

func (p *presenceMetrics) register(reg prometheus.Registerer) {
	p.updates = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_presence_updates_total",
		Help: "Presence updates between gateways, by type (delta, snapshot, sync, bye; invalid: received and dropped) and direction: sent, received, failed (not sent).",
	}, []string{"type", "direction"})
	p.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_presence_events_total",
		Help: "Users whose presence on a watched channel began (join) or ended (leave), each counted once per channel and interval however many connections watch it (past the users an event lists, it says more), by event.",
	}, []string{"event"})
	p.expired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_presence_expired_total",
		Help: "Gateways dropped from the presence view because no update came from them within the TTL.",
	})
	reg.MustRegister(p.updates, p.events, p.expired)
	for _, t := range []string{updateDelta, updateSnapshot, updateSync, updateBye} {
		for _, d := range []string{"sent", "received", "failed"} {
			p.updates.WithLabelValues(t, d)
		}
	}
	p.updates.WithLabelValues("invalid", "received")
	p.events.WithLabelValues("join")
	p.events.WithLabelValues("leave")
}

func (m *Metrics) presenceUpdate(typ, direction string) {
	if m != nil {
		m.presence.updates.WithLabelValues(typ, direction).Inc()
	}
}

func (m *Metrics) presenceEvents(event string, users int) {
	if m != nil {
		m.presence.events.WithLabelValues(event).Add(float64(users))
	}
}

func (m *Metrics) presenceExpired() {
	if m != nil {
		m.presence.expired.Inc()
	}
}

// NewMetrics creates the gateway's counters and registers them with reg. The gauges that
// read live state (connections, write queues, subscriptions, bus) are registered by
// NewServer, which knows that state.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_connections_accepted_total",
			Help: "WebSocket connections accepted (upgraded).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_handshakes_refused_total",
			Help: "WebSocket handshakes refused before the upgrade, by reason.",
		}, []string{"reason"}),
		closedConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_connections_closed_total",
			Help: "WebSocket connections closed, by close code (1006: no close frame).",
		}, []string{"code"}),
		publishedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_messages_published_total",
			Help: "Messages this gateway published to the bus and the bus accepted, by source (ws, http).",
		}, []string{"source"}),
		publishFailedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_publish_failures_total",
			Help: "Publishes the bus did not accept (answered unavailable or 503), by source.",
		}, []string{"source"}),
		receivedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_messages_received_total",
			Help: "Messages received from the bus and routed to their recipients, by source: ws or http (published through a gateway), amqp (any other publisher).",
		}, []string{"source"}),
		fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_fanout_duration_seconds",
			Help:    "Time to encode one message and queue it to all its recipients on this gateway.",
			Buckets: []float64{.00001, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}),
		publishLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_bus_publish_confirm_seconds",
			Help:    "Time for the bus to accept a publish from this gateway (with RabbitMQ: until the broker's confirm).",
			Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}),
		consumerLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bus_consumer_lag_messages",
			Help: "How many offsets the newest message in the bus's log is ahead of the last one this gateway dispatched (on RabbitMQ, estimated from the stream's last chunk).",
		}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_messages_delivered_total",
			Help: "Message frames written to client sockets (one per recipient).",
		}),
		droppedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_messages_dropped_total",
			Help: "Messages not delivered to a recipient (or not routed at all), by reason.",
		}, []string{"reason"}),
		bytesWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bytes_written_total",
			Help: "Bytes of frames written to client sockets.",
		}),
		socketWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_socket_writes_total",
			Help: "Writes of data frames to client sockets: herald_messages_delivered_total over this is how many frames each write carried.",
		}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_slow_consumers_total",
			Help: "Connections closed with 4008 because their write queue overflowed.",
		}),
		clientErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_client_errors_total",
			Help: "Error frames sent to clients, by code.",
		}, []string{"code"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_delivery_latency_seconds",
			Help:    "Time from a message's publish (where the publisher gave no time: from its receipt by this gateway) to its write to a client socket.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		busReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bus_reconnects_total",
			Help: "Times a connection to the broker was re-established after a loss.",
		}),
		busDisconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bus_disconnects_total",
			Help: "Times a connection to the broker was lost.",
		}),
		busAway: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bus_disconnected_seconds_total",
			Help: "Time connections to the broker spent lost, summed over the publisher and the consumer.",
		}),
		busDown: make(map[string]time.Time),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_resume_requests_total",
			Help: "Resumes asked for with since (at connect or subscribe), by result: resumed (replayed, then live) or reset (since outside the retained log).",
		}, []string{"result"}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_replayed_messages_total",
			Help: "Messages sent to resuming clients from the log.",
		}),
	}
	reg.MustRegister(m.accepted, m.refused, m.closedConns, m.publishedTotal, m.publishFailedTotal,
		m.receivedTotal, m.fanout, m.publishLatency, m.consumerLag, m.delivered, m.droppedTotal, m.bytesWritten, m.socketWrites, m.slowConsumers,
		m.clientErrors, m.latency, m.busReconnects, m.busDisconnects, m.busAway, m.resumes, m.replayed)
	m.resumes.WithLabelValues("resumed")
	m.resumes.WithLabelValues("reset")
	// Series that exist from the start, at 0, so that rate() sees their first event.
	for _, code := range []int{1000, 1001, 1003, 1005, 1006, 1007, 1008, 1009, 1011, CloseSlowConsumer, CloseRateLimited, 0} {
		m.closedConns.WithLabelValues(closeCodeLabel(code))
	}
	for _, r := range []string{"draining", "starting", "bad_query", "bad_handshake", "origin", "rate_limited",
		"too_many_connections", "too_many_connections_per_ip", CodeForbidden} {
		m.refused.WithLabelValues(r)
	}
	for _, code := range []string{CodeBadRequest, CodeUnknownOp, CodeForbidden, CodeRateLimited, CodeTooLarge, CodeUnavailable} {
		m.clientErrors.WithLabelValues(code)
	}
	for _, r := range []string{dropSlowConsumer, dropClosed, dropWriteFailed, dropDuplicate, dropUndecodable, dropLagged, dropUnroutable} {
		m.droppedTotal.WithLabelValues(r)
	}
	for _, s := range []string{sourceWS, sourceHTTP} {
		m.publishedTotal.WithLabelValues(s)
		m.publishFailedTotal.WithLabelValues(s)
		m.receivedTotal.WithLabelValues(s)
	}
	m.receivedTotal.WithLabelValues(sourceAMQP)
	m.edge.register(reg)
	m.presence.register(reg)
	m.compression.register(reg)
	m.contract.register(reg)
	return m
}

func (m *Metrics) dropped(reason string, n int) {
	if m != nil && n > 0 {
		m.droppedTotal.WithLabelValues(reason).Add(float64(n))
	}
}

// received counts a message from the bus, by source, and the time its fan-out took.
func (m *Metrics) received(source string, fanout time.Duration) {
	if m == nil {
		return
	}
	switch source {
	case sourceWS, sourceHTTP:
	default:
		source = sourceAMQP
	}
	m.receivedTotal.WithLabelValues(source).Inc()
	m.fanout.Observe(fanout.Seconds())
}

func (m *Metrics) publishDuration(d time.Duration) {
	if m != nil {
		m.publishLatency.Observe(d.Seconds())
	}
}

// SetConsumerLag sets how many offsets the newest message in the bus's log is ahead of
// the last one dispatched.
func (m *Metrics) SetConsumerLag(n int64) {
	if m != nil {
		m.consumerLag.Set(float64(max(n, 0)))
	}
}

func (m *Metrics) slowConsumer() {
	if m != nil {
		m.slowConsumers.Inc()
	}
}

func (m *Metrics) acceptedConn() {
	if m != nil {
		m.accepted.Inc()
	}
}

func (m *Metrics) refusedHandshake(reason string) {
	if m != nil {
		m.refused.WithLabelValues(reason).Inc()
	}
}

// closeCodeLabel is the label a close code is counted under: a client may send any code
// from 3000 to 4999, so codes the protocol does not name are counted as "other", to keep
// the label set small.
func closeCodeLabel(code int) string {
	switch code {
	case 1000, 1001, 1003, 1005, 1006, 1007, 1008, 1009, 1011, CloseSlowConsumer, CloseRateLimited:
		return strconv.Itoa(code)
	}
	return "other"
}

func (m *Metrics) closed(code int) {
	if m != nil {
		m.closedConns.WithLabelValues(closeCodeLabel(code)).Inc()
	}
}

func (m *Metrics) published(source string) {
	if m != nil {
		m.publishedTotal.WithLabelValues(source).Inc()
	}
}

func (m *Metrics) publishFailed(source string) {
	if m != nil {
		m.publishFailedTotal.WithLabelValues(source).Inc()
	}
}

func (m *Metrics) clientError(code string) {
	if m != nil {
		m.clientErrors.WithLabelValues(code).Inc()
	}
}

// wrote counts frames written to one socket in one write of n bytes at now.
func (m *Metrics) wrote(frames []*frame, n int, now time.Time) {
	if m == nil {
		return
	}
	m.bytesWritten.Add(float64(n))
	m.socketWrites.Inc()
	delivered := 0
	for _, f := range frames {
		if !f.published.IsZero() {
			delivered++
			if !f.replayed { // a replayed message's age is not a delivery latency
				m.latency.Observe(now.Sub(f.published).Seconds())
			}
		}
	}
	m.delivered.Add(float64(delivered))
}

// resumed counts a resume request and the messages it replayed.
func (m *Metrics) resumed(ok bool, replayed int) {
	if m == nil {
		return
	}
	result := "resumed"
	if !ok {
		result = "reset"
	}
	m.resumes.WithLabelValues(result).Inc()
	m.replayed.Add(float64(replayed))
}

// BusDecodeError counts a message from the bus that could not be decoded and was dropped.
func (m *Metrics) BusDecodeError() { m.dropped(dropUndecodable, 1) }

// BusLagged counts n messages the embedded bus dropped before they were dispatched.
func (m *Metrics) BusLagged(n int64) { m.dropped(dropLagged, int(n)) }

// BusState records that a part of the bus connection (e.g. "publisher", "consumer") was
// lost (connected false) or is back (true): it counts losses and re-establishments and
// adds the time each part was away to herald_bus_disconnected_seconds_total. Safe for
// concurrent use; the first report of a part that is connected counts nothing.
func (m *Metrics) BusState(part string, connected bool) {
	if m == nil {
		return
	}
	m.busMu.Lock()
	defer m.busMu.Unlock()
	since, down := m.busDown[part]
	switch {
	case !connected && !down:
		m.busDown[part] = time.Now()
		m.busDisconnects.Inc()
	case connected && down:
		delete(m.busDown, part)
		m.busReconnects.Inc()
		m.busAway.Add(time.Since(since).Seconds())
	}
}

// stateCollector reads gauges from live state at scrape time: connections, the write
// queues (total and largest, in frames and bytes), subscriptions and the bus.
type stateCollector struct {
	srv *Server
	hub *Hub
	bus BusHealth

	conns, subs, chans, busUp     *prometheus.Desc
	qFrames, qBytes, qMaxF, qMaxB *prometheus.Desc
	qDepth                        *prometheus.Desc
	qCap                          *prometheus.Desc
}

// queueDepthBuckets are the upper bounds, in bytes, of herald_write_queue_depth_bytes.
var queueDepthBuckets = []float64{0, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 512 << 10, 1 << 20, 4 << 20}

func newStateCollector(srv *Server, hub *Hub, bus BusHealth) *stateCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &stateCollector{
		srv:     srv,
		hub:     hub,
		bus:     bus,
		conns:   d("herald_connections", "WebSocket connections open now (resuming ones included)."),
		subs:    d("herald_subscriptions", "Channel subscriptions across all connections."),
		chans:   d("herald_channels", "Channels with at least one subscriber."),
		busUp:   d("herald_bus_connected", "1 when the gateway can publish to and consume from the bus, else 0."),
		qFrames: d("herald_write_queue_messages", "Frames waiting in all connections' write queues."),
		qBytes:  d("herald_write_queue_bytes", "Bytes waiting in all connections' write queues."),
		qMaxF:   d("herald_write_queue_max_messages", "Frames waiting in the fullest connection's write queue."),
		qMaxB:   d("herald_write_queue_max_bytes", "Bytes waiting in the fullest connection's write queue."),
		qDepth:  d("herald_write_queue_depth_bytes", "Bytes waiting in each connection's write queue, sampled at scrape."),
		qCap:    d("herald_write_queue_cap_bytes", "The configured cap of each connection's write queue (--write-queue-bytes); a connection over it is closed with 4008."),
	}
}

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{s.conns, s.subs, s.chans, s.busUp, s.qFrames, s.qBytes, s.qMaxF, s.qMaxB, s.qDepth, s.qCap} {
		ch <- d
	}
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	var n, frames, bytes, maxF, maxB int
	counts := make([]uint64, len(queueDepthBuckets))
	s.srv.forEachConn(func(c *Conn) {
		n++
		{
			f, b := c.depth()
			frames, bytes = frames+f, bytes+b
			maxF, maxB = max(maxF, f), max(maxB, b)
			for i, le := range queueDepthBuckets {
				if float64(b) <= le {
					counts[i]++
				}
			}
		}
	})
	buckets := make(map[float64]uint64, len(queueDepthBuckets))
	for i, le := range queueDepthBuckets {
		buckets[le] = counts[i]
	}
	ch <- prometheus.MustNewConstHistogram(s.qDepth, uint64(n), float64(bytes), buckets)
	chans, subs := s.hub.Channels()
	up := 0.0
	if s.bus.Connected() {
		up = 1
	}
	g := func(d *prometheus.Desc, v int) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	g(s.conns, n)
	g(s.subs, subs)
	g(s.chans, chans)
	g(s.qFrames, frames)
	g(s.qBytes, bytes)
	g(s.qMaxF, maxF)
	g(s.qMaxB, maxB)
	g(s.qCap, s.srv.cfg.WriteQueueBytes)
	ch <- prometheus.MustNewConstMetric(s.busUp, prometheus.GaugeValue, up)
}

// edgeMetrics counts what the edge refuses and recovers from: limits hit, panics,
// token refreshes and expiries, JWKS fetches.
type edgeMetrics struct {
	limitsHit     *prometheus.CounterVec
	panics        prometheus.Counter
	refreshes     *prometheus.CounterVec
	tokensExpired prometheus.Counter
	jwksFetches   *prometheus.CounterVec
	pongsIgnored  prometheus.Counter
}

func (e *edgeMetrics) register(reg prometheus.Registerer) {
	e.limitsHit = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_limits_hit_total",
		Help: "Times a client hit a limit, by limit: connections, connections_per_ip, handshake_rate (refused before the upgrade), message_rate (error rate_limited), message_rate_closed (closed with 4029), subscriptions, frame_size (closed with 1009), frame_rate (frames of every kind over the limit: closed with 4029), fragments (a message in too many frames: closed with 1009), pending_connections, pending_connections_per_ip (a new connection closed at accept), idle_connections (an idle keep-alive connection closed).",
	}, []string{"limit"})
	e.panics = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_panics_total",
		Help: "Panics recovered while serving one connection (that connection was closed with 1011).",
	})
	e.refreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_token_refreshes_total",
		Help: "Refresh ops from clients, by result: ok, refused.",
	}, []string{"result"})
	e.tokensExpired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_tokens_expired_total",
		Help: "Connections closed with 1008 because their token expired.",
	})
	e.jwksFetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_jwks_fetches_total",
		Help: "Fetches of the JSON Web Key Set, by result: ok, failed.",
	}, []string{"result"})
	e.pongsIgnored = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_pongs_ignored_total",
		Help: "Pongs from clients that did not move the read deadline: unsolicited, answering no ping or an older one, repeated, or sent while a message was partly received.",
	})
	reg.MustRegister(e.limitsHit, e.panics, e.refreshes, e.tokensExpired, e.jwksFetches, e.pongsIgnored)
	for _, l := range []string{limitConnections, limitConnectionsPerIP, limitHandshakeRate, limitMessageRate,
		limitRateClosed, limitSubscriptions, limitFrameSize,
		pending.LimitPending, pending.LimitPendingPerAddr, pending.LimitIdle,
		wsframe.LimitFrameRate, wsframe.LimitFragments} {
		e.limitsHit.WithLabelValues(l)
	}
	for _, r := range []string{"ok", "refused"} {
		e.refreshes.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		e.jwksFetches.WithLabelValues(r)
	}
}

func (m *Metrics) limitHit(limit string) {
	if m != nil {
		m.edge.limitsHit.WithLabelValues(limit).Inc()
	}
}

// ListenerRefused counts a connection that a pending.Listener closed for one of its caps
// (limit is one of pending's Limit constants), in herald_limits_hit_total{limit}.
func (m *Metrics) ListenerRefused(limit string) { m.limitHit(limit) }

func (m *Metrics) pongIgnored() {
	if m != nil {
		m.edge.pongsIgnored.Inc()
	}
}

func (m *Metrics) panicked() {
	if m != nil {
		m.edge.panics.Inc()
	}
}

func (m *Metrics) tokenRefreshed(ok bool) {
	if m != nil {
		m.edge.refreshes.WithLabelValues(okLabel(ok, "ok", "refused")).Inc()
	}
}

func (m *Metrics) tokenExpired() {
	if m != nil {
		m.edge.tokensExpired.Inc()
	}
}

func (m *Metrics) jwksFetched(ok bool) {
	if m != nil {
		m.edge.jwksFetches.WithLabelValues(okLabel(ok, "ok", "failed")).Inc()
	}
}

func okLabel(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}

// busHeaders are the headers of a bus message that Herald reads (PROTOCOL.md section 3),
// the label values of herald_bus_header_errors_total; any other name is counted as other.
var busHeaders = []string{"channel", "users", "from", "time", "source", "x-stream-offset"}

// contractMetrics counts what publishers and the broker do to the AMQP contract: headers
// that cannot be read, and whether the broker keeps array and table headers in streams.
type contractMetrics struct {
	headerErrors *prometheus.CounterVec
	headersKept  *prometheus.GaugeVec
	headerProbes *prometheus.CounterVec
}

func (c *contractMetrics) register(reg prometheus.Registerer) {
	c.headerErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_bus_header_errors_total",
		Help: "Messages from the bus with a header that could not be read, by header: from, time, source (the message is delivered without it), channel, users (the message is delivered to nobody, and counted in herald_messages_dropped_total{reason=\"unroutable\"}).",
	}, []string{"header"})
	c.headersKept = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_bus_headers_kept",
		Help: "1 when the broker keeps header values of this kind (array, table) through a stream, 0 when it drops them (RabbitMQ 3.10 drops both: publish users as a string holding a JSON array); absent until the gateway's probe at start has answered, and on the embedded bus.",
	}, []string{"kind"})
	c.headerProbes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_bus_header_probes_total",
		Help: "Probes of what the broker keeps of array and table headers in a stream, by result: ok, failed (retried with backoff).",
	}, []string{"result"})
	reg.MustRegister(c.headerErrors, c.headersKept, c.headerProbes)
	for _, h := range busHeaders {
		c.headerErrors.WithLabelValues(h)
	}
	c.headerErrors.WithLabelValues("other")
	c.headerProbes.WithLabelValues("ok")
	c.headerProbes.WithLabelValues("failed")
}

// BusHeadersKept records what the header probe found: whether the broker keeps array and
// table header values through a stream.
func (m *Metrics) BusHeadersKept(arrays, tables bool) {
	if m == nil {
		return
	}
	m.contract.headersKept.WithLabelValues("array").Set(boolGauge(arrays))
	m.contract.headersKept.WithLabelValues("table").Set(boolGauge(tables))
}

// BusHeaderProbe counts a header probe that answered (ok) or failed.
func (m *Metrics) BusHeaderProbe(ok bool) {
	if m != nil {
		m.contract.headerProbes.WithLabelValues(okLabel(ok, "ok", "failed")).Inc()
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// BusBadHeader counts a bus message with a header that could not be read, by the
// header's name (a bounded label: names Herald does not read count as "other").
func (m *Metrics) BusBadHeader(header string) {
	if m == nil {
		return
	}
	label := "other"
	for _, h := range busHeaders {
		if h == header {
			label = h
			break
		}
	}
	m.contract.headerErrors.WithLabelValues(label).Inc()
}

// BusUnroutable counts a bus message dropped because its channel or users header cannot
// be read: delivering it without would widen its audience.
func (m *Metrics) BusUnroutable() { m.dropped(dropUnroutable, 1) }
