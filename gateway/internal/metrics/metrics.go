// Package metrics is the gateway's Prometheus instrumentation: every counter and
// histogram, registered once with the registry it is given, and a method for each thing
// counted. It imports nothing of the gateway: the packages that count import it. Gauges
// that read live state (connections, write queues, presence) are collectors of the
// packages that own that state.
package metrics

import (
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a message to one connection was dropped (label of herald_messages_dropped_total).
const (
	DropSlowConsumer = "slow_consumer" // the connection's write queue overflowed: closed with 4008
	DropClosed       = "closed"        // the connection was closing or closed
	DropWriteFailed  = "write_failed"  // the socket write failed or timed out
	DropDuplicate    = "duplicate"     // a message id seen within the deduplication window
	DropUndecodable  = "undecodable"   // a bus message that is not a Herald message
	DropLagged       = "lagged"        // the embedded bus's log moved past undispatched messages
	DropUnroutable   = "unroutable"    // a bus message whose channel or users header cannot be read
)

// Sources of published messages (label of herald_messages_published_total).
const (
	SourceWS   = "ws"
	SourceHTTP = "http"
	// SourceClientHTTP is a client's publish over HTTP (POST /api/client/publish), as an
	// event stream's client sends.
	SourceClientHTTP = "client_http"
	SourceAMQP       = "amqp" // any publisher other than a gateway
)

// Limits hit (labels of herald_limits_hit_total) that the edge and the connections count;
// Series.Limits names the others.
const (
	LimitConnections      = "connections"
	LimitConnectionsPerIP = "connections_per_ip"
	LimitHandshakeRate    = "handshake_rate"
	LimitMessageRate      = "message_rate"
	LimitRateClosed       = "message_rate_closed" // closed with 4029
	LimitSubscriptions    = "subscriptions"
	LimitFrameSize        = "frame_size" // closed with 1009
)

// Series names the label values that other packages define, whose series exist from the
// start, at 0, so that rate() sees their first event.
type Series struct {
	// CloseCodes are the close codes counted under their own label in
	// herald_connections_closed_total; any other code is counted as "other".
	CloseCodes []int
	// Refusals are the reasons of herald_handshakes_refused_total.
	Refusals []string
	// ClientErrors are the codes of herald_client_errors_total.
	ClientErrors []string
	// Limits are the limits of herald_limits_hit_total besides this package's own.
	Limits []string
	// PresenceUpdates are the types of herald_presence_updates_total.
	PresenceUpdates []string
}

// Metrics is the gateway's Prometheus instrumentation. Its methods may be called on a nil
// *Metrics, which counts nothing (for tests of parts in isolation). Safe for concurrent
// use.
type Metrics struct {
	closeCodes         []int                  // counted under their own label (Series.CloseCodes)
	accepted           *prometheus.CounterVec // by transport
	refused            *prometheus.CounterVec
	closedConns        *prometheus.CounterVec // by code and transport
	publishedTotal     *prometheus.CounterVec
	publishFailedTotal *prometheus.CounterVec
	receivedTotal      *prometheus.CounterVec
	fanout             prometheus.Histogram
	publishLatency     prometheus.Histogram
	consumerLag        prometheus.Gauge
	delivered          [transports]prometheus.Counter // by transport, resolved once
	deliveredVec       *prometheus.CounterVec
	droppedTotal       *prometheus.CounterVec
	bytesWritten       prometheus.Counter
	socketWrites       prometheus.Counter
	spreads            prometheus.Counter
	spreadQueues       prometheus.Counter
	slowConsumers      prometheus.Counter
	clientErrors       *prometheus.CounterVec
	latency            *latencyHistogram // added to in batches: Tally, Flush
	busReconnects      prometheus.Counter
	busDisconnects     prometheus.Counter
	busAway            prometheus.Counter

	busMu    sync.Mutex           // protects busDown
	busDown  map[string]time.Time // parts of the bus connection that are away, since when
	resumes  *prometheus.CounterVec
	replayed prometheus.Counter
	// resumesBy counts resumes by where they were served from; resumeTime is connect (or
	// subscribe) to resumed; resumeWaits is how long a deep resume waited for a reader.
	resumesBy     *prometheus.CounterVec
	resumeTime    prometheus.Histogram
	resumeWaits   prometheus.Histogram
	resumeReaders prometheus.Counter

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

// Compressed counts one frame compressed, from in to out payload bytes.
func (m *Metrics) Compressed(in, out int) {
	if m != nil {
		m.compression.frames.Inc()
		m.compression.bytesIn.Add(float64(in))
		m.compression.bytesOut.Add(float64(out))
	}
}

// NegotiatedCompression counts a connection accepted with permessage-deflate.
func (m *Metrics) NegotiatedCompression() {
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

func (p *presenceMetrics) register(reg prometheus.Registerer, types []string) {
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
	for _, t := range types {
		for _, d := range []string{"sent", "received", "failed"} {
			p.updates.WithLabelValues(t, d)
		}
	}
	p.updates.WithLabelValues("invalid", "received")
	p.events.WithLabelValues("join")
	p.events.WithLabelValues("leave")
}

// PresenceUpdate counts a presence update between gateways, by type and direction (sent,
// received, failed).
func (m *Metrics) PresenceUpdate(typ, direction string) {
	if m != nil {
		m.presence.updates.WithLabelValues(typ, direction).Inc()
	}
}

// PresenceEvents counts the users a join or leave event reports.
func (m *Metrics) PresenceEvents(event string, users int) {
	if m != nil {
		m.presence.events.WithLabelValues(event).Add(float64(users))
	}
}

// PresenceExpired counts a gateway dropped from the presence view for its silence.
func (m *Metrics) PresenceExpired() {
	if m != nil {
		m.presence.expired.Inc()
	}
}

// New creates the gateway's counters and registers them with reg, with the series of
// series's label values. The gauges that read live state (connections, write queues,
// subscriptions, bus, presence) are registered by the packages that know that state.
func New(reg prometheus.Registerer, series Series) *Metrics {
	m := &Metrics{
		closeCodes: slices.Clone(series.CloseCodes),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_connections_accepted_total",
			Help: "Client connections accepted (WebSocket: upgraded; SSE: the stream begun), by transport (ws, sse).",
		}, []string{"transport"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_handshakes_refused_total",
			Help: "WebSocket handshakes refused before the upgrade, by reason.",
		}, []string{"reason"}),
		closedConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_connections_closed_total",
			Help: "Client connections closed, by close code (1006: no close frame; an SSE stream ends with the code of its error event, or 1006 when the client went) and transport.",
		}, []string{"code", "transport"}),
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
		deliveredVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_messages_delivered_total",
			Help: "Message frames written to client sockets (one per recipient), by transport.",
		}, []string{"transport"}),
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
		spreads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_write_spreads_total",
			Help: "Helper writer workers woken by the home worker, for a backlog that would take it longer than --write-spread-after to write alone.",
		}),
		spreadQueues: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_write_spread_queues_total",
			Help: "Connections' queues written by the helper writer workers (herald_socket_writes_total counts every worker's writes).",
		}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_slow_consumers_total",
			Help: "Connections closed with 4008 because their write queue overflowed.",
		}),
		clientErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_client_errors_total",
			Help: "Error frames sent to clients, by code.",
		}, []string{"code"}),
		latency: &latencyHistogram{desc: prometheus.NewDesc("herald_delivery_latency_seconds",
			"Time from a message's publish (where the publisher gave no time: from its receipt by this gateway) to its write to a client socket.",
			nil, nil)},
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
	m.resumesBy = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_resumes_total",
		Help: "Resumes done, by source: tail (served from the gateway's memory), stream (read from the bus's log, then memory) or reset (since outside the retained log).",
	}, []string{"source"})
	m.resumeTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "herald_resume_seconds",
		Help:    "Time from a resume's start (connect or subscribe with since) to its resumed or reset.",
		Buckets: []float64{.005, .01, .05, .1, .25, .5, 1, 2, 3, 5, 10, 30, 60, 120},
	})
	m.resumeWaits = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "herald_resume_wait_seconds",
		Help:    "Time a resume older than the tail waited for a reader of the bus's log (0: it joined a running one).",
		Buckets: []float64{0, .01, .1, .5, 1, 2, 5, 10, 30},
	})
	m.resumeReaders = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_resume_log_reads_total",
		Help: "Reads of the bus's log started for resumes older than the tail (each shared by the resumes near it).",
	})
	reg.MustRegister(m.resumesBy, m.resumeTime, m.resumeWaits, m.resumeReaders)
	for _, src := range []string{"tail", "stream", "reset"} {
		m.resumesBy.WithLabelValues(src)
	}
	reg.MustRegister(m.accepted, m.refused, m.closedConns, m.publishedTotal, m.publishFailedTotal,
		m.receivedTotal, m.fanout, m.publishLatency, m.consumerLag, m.deliveredVec, m.droppedTotal, m.bytesWritten, m.socketWrites, m.slowConsumers,
		m.spreads, m.spreadQueues, m.clientErrors, m.latency, m.busReconnects, m.busDisconnects, m.busAway, m.resumes, m.replayed)
	m.resumes.WithLabelValues("resumed")
	m.resumes.WithLabelValues("reset")
	// Series that exist from the start, at 0, so that rate() sees their first event.
	for t, name := range transportNames {
		m.accepted.WithLabelValues(name)
		m.delivered[t] = m.deliveredVec.WithLabelValues(name)
		for _, code := range append(slices.Clone(m.closeCodes), 0) {
			m.closedConns.WithLabelValues(m.closeCodeLabel(code), name)
		}
	}
	for _, r := range series.Refusals {
		m.refused.WithLabelValues(r)
	}
	for _, code := range series.ClientErrors {
		m.clientErrors.WithLabelValues(code)
	}
	for _, r := range []string{DropSlowConsumer, DropClosed, DropWriteFailed, DropDuplicate, DropUndecodable, DropLagged, DropUnroutable} {
		m.droppedTotal.WithLabelValues(r)
	}
	for _, s := range []string{SourceWS, SourceHTTP, SourceClientHTTP} {
		m.publishedTotal.WithLabelValues(s)
		m.publishFailedTotal.WithLabelValues(s)
		m.receivedTotal.WithLabelValues(s)
	}
	m.receivedTotal.WithLabelValues(SourceAMQP)
	m.edge.register(reg, series.Limits)
	m.presence.register(reg, series.PresenceUpdates)
	m.compression.register(reg)
	m.contract.register(reg)
	return m
}

// Dropped counts n messages not delivered to a recipient, for reason (a Drop constant).
func (m *Metrics) Dropped(reason string, n int) {
	if m != nil && n > 0 {
		m.droppedTotal.WithLabelValues(reason).Add(float64(n))
	}
}

// Received counts a message from the bus, by source, and the time its fan-out took.
func (m *Metrics) Received(source string, fanout time.Duration) {
	if m == nil {
		return
	}
	switch source {
	case SourceWS, SourceHTTP, SourceClientHTTP:
	default:
		source = SourceAMQP
	}
	m.receivedTotal.WithLabelValues(source).Inc()
	m.fanout.Observe(fanout.Seconds())
}

// PublishDuration observes how long the bus took to accept a publish from this gateway.
func (m *Metrics) PublishDuration(d time.Duration) {
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

// SlowConsumer counts a connection closed with 4008: its write queue overflowed.
func (m *Metrics) SlowConsumer() {
	if m != nil {
		m.slowConsumers.Inc()
	}
}

// Transport is a client connection's transport, a label of the connection and delivery
// counters.
type Transport uint8

// The transports.
const (
	TransportWS  Transport = iota // WebSocket
	TransportSSE                  // Server-Sent Events
	transports
)

var transportNames = [transports]string{"ws", "sse"}

// Accepted counts a connection accepted (upgraded, or its stream begun), by transport.
func (m *Metrics) Accepted(t Transport) {
	if m != nil {
		m.accepted.WithLabelValues(transportNames[t]).Inc()
	}
}

// RefusedHandshake counts a handshake refused before the upgrade, by reason.
func (m *Metrics) RefusedHandshake(reason string) {
	if m != nil {
		m.refused.WithLabelValues(reason).Inc()
	}
}

// closeCodeLabel is the label a close code is counted under: a client may send any code
// from 3000 to 4999, so codes the protocol does not name (Series.CloseCodes) are counted as
// "other", to keep the label set small.
func (m *Metrics) closeCodeLabel(code int) string {
	if slices.Contains(m.closeCodes, code) {
		return strconv.Itoa(code)
	}
	return "other"
}

// Closed counts a connection of transport t closed, by the close code it ended with.
func (m *Metrics) Closed(code int, t Transport) {
	if m != nil {
		m.closedConns.WithLabelValues(m.closeCodeLabel(code), transportNames[t]).Inc()
	}
}

// Published counts a message this gateway published and the bus accepted, by source.
func (m *Metrics) Published(source string) {
	if m != nil {
		m.publishedTotal.WithLabelValues(source).Inc()
	}
}

// PublishFailed counts a publish the bus did not accept, by source.
func (m *Metrics) PublishFailed(source string) {
	if m != nil {
		m.publishFailedTotal.WithLabelValues(source).Inc()
	}
}

// ClientError counts an error frame sent to a client, by code.
func (m *Metrics) ClientError(code string) {
	if m != nil {
		m.clientErrors.WithLabelValues(code).Inc()
	}
}

// latencyBuckets are the upper bounds of herald_delivery_latency_seconds's buckets, in
// seconds.
var latencyBuckets = [...]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Tally is what one writer wrote since it last flushed it into the Metrics (Flush): the
// socket writes, their bytes, the message frames delivered by transport, and each
// delivery latency in its bucket. A writer worker fills one over a pass through its ready
// connections and flushes it once at the end, so that the shared counters and histogram
// take a few atomic adds and one lock per pass instead of per write; no write and no
// latency is left out. A Tally is the writer's own: not safe for concurrent use. Its zero
// value is empty.
type Tally struct {
	bytes, writes int
	delivered     [transports]int
	// latency counts the observations of each bucket (not cumulative), the last one
	// those above every bound; latencySum is their sum in seconds.
	latency    [len(latencyBuckets) + 1]uint64
	latencySum float64
	observed   uint64
}

// Wrote counts one write of n bytes to a client socket, which carried delivered message
// frames (replies are written, but not delivered), to a connection of transport tr.
func (t *Tally) Wrote(n, delivered int, tr Transport) {
	t.bytes += n
	t.writes++
	t.delivered[tr] += delivered
}

// DeliveryLatency notes the time from a message's publish to its write to a client
// socket.
func (t *Tally) DeliveryLatency(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(latencyBuckets) && s > latencyBuckets[i] { // a bucket holds what is <= its bound
		i++
	}
	t.latency[i]++
	t.latencySum += s
	t.observed++
}

// Spread counts helper writer workers woken for a deep backlog.
func (m *Metrics) Spread(helpers int) {
	if m != nil {
		m.spreads.Add(float64(helpers))
	}
}

// Helped counts queues a helper writer worker took to write.
func (m *Metrics) Helped(queues int) {
	if m != nil {
		m.spreadQueues.Add(float64(queues))
	}
}

// Flush adds what t holds to the counters and the latency histogram, and empties t.
func (m *Metrics) Flush(t *Tally) {
	if m != nil && t.writes > 0 {
		m.bytesWritten.Add(float64(t.bytes))
		m.socketWrites.Add(float64(t.writes))
		for tr, n := range t.delivered {
			if n > 0 {
				m.delivered[tr].Add(float64(n))
			}
		}
	}
	if m != nil && t.observed > 0 {
		m.latency.add(t)
	}
	*t = Tally{}
}

// latencyHistogram is herald_delivery_latency_seconds: a histogram that writers add to a
// Tally at a time (Metrics.Flush), under a lock taken once per flush, where a
// prometheus.Histogram would take atomic adds shared by every writer at each observation.
// It exposes what a prometheus.Histogram with the same buckets would.
type latencyHistogram struct {
	desc *prometheus.Desc

	mu     sync.Mutex // protects the fields below
	counts [len(latencyBuckets) + 1]uint64
	count  uint64
	sum    float64
}

func (h *latencyHistogram) add(t *Tally) {
	h.mu.Lock()
	for i, n := range t.latency {
		h.counts[i] += n
	}
	h.count += t.observed
	h.sum += t.latencySum
	h.mu.Unlock()
}

func (h *latencyHistogram) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *latencyHistogram) Collect(ch chan<- prometheus.Metric) {
	buckets := make(map[float64]uint64, len(latencyBuckets))
	h.mu.Lock()
	var cumulative uint64
	for i, bound := range latencyBuckets {
		cumulative += h.counts[i]
		buckets[bound] = cumulative
	}
	count, sum := h.count, h.sum
	h.mu.Unlock()
	ch <- prometheus.MustNewConstHistogram(h.desc, count, sum, buckets)
}

// Resumed counts a resume request and the messages it replayed.
func (m *Metrics) Resumed(ok bool, replayed int) {
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

// ResumeDone counts a resume served from source ("tail", "stream" or "reset") that took d
// from its start to its resumed (or reset).
func (m *Metrics) ResumeDone(source string, d time.Duration) {
	if m == nil {
		return
	}
	m.resumesBy.WithLabelValues(source).Inc()
	m.resumeTime.Observe(d.Seconds())
}

// ResumeWaited records how long a deep resume waited for a reader of the log.
func (m *Metrics) ResumeWaited(d time.Duration) {
	if m != nil {
		m.resumeWaits.Observe(d.Seconds())
	}
}

// ResumeReaderAttached counts a read of the log started for resumes.
func (m *Metrics) ResumeReaderAttached() {
	if m != nil {
		m.resumeReaders.Inc()
	}
}

// BusDecodeError counts a message from the bus that could not be decoded and was dropped.
func (m *Metrics) BusDecodeError() { m.Dropped(DropUndecodable, 1) }

// BusLagged counts n messages the embedded bus dropped before they were dispatched.
func (m *Metrics) BusLagged(n int64) { m.Dropped(DropLagged, int(n)) }

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

func (e *edgeMetrics) register(reg prometheus.Registerer, limits []string) {
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
	for _, l := range append([]string{LimitConnections, LimitConnectionsPerIP, LimitHandshakeRate, LimitMessageRate,
		LimitRateClosed, LimitSubscriptions, LimitFrameSize}, limits...) {
		e.limitsHit.WithLabelValues(l)
	}
	for _, r := range []string{"ok", "refused"} {
		e.refreshes.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		e.jwksFetches.WithLabelValues(r)
	}
}

// LimitHit counts a client that hit limit (a Limit constant, or one of Series.Limits).
func (m *Metrics) LimitHit(limit string) {
	if m != nil {
		m.edge.limitsHit.WithLabelValues(limit).Inc()
	}
}

// ListenerRefused counts a connection that a pending.Listener closed for one of its caps
// (limit is one of pending's Limit constants), in herald_limits_hit_total{limit}.
func (m *Metrics) ListenerRefused(limit string) { m.LimitHit(limit) }

// PongIgnored counts a client's pong that did not move its read deadline.
func (m *Metrics) PongIgnored() {
	if m != nil {
		m.edge.pongsIgnored.Inc()
	}
}

// Panicked counts a panic recovered while serving one connection.
func (m *Metrics) Panicked() {
	if m != nil {
		m.edge.panics.Inc()
	}
}

// TokenRefreshed counts a client's refresh op, accepted (ok) or refused.
func (m *Metrics) TokenRefreshed(ok bool) {
	if m != nil {
		m.edge.refreshes.WithLabelValues(okLabel(ok, "ok", "refused")).Inc()
	}
}

// TokenExpired counts a connection closed with 1008 because its token expired.
func (m *Metrics) TokenExpired() {
	if m != nil {
		m.edge.tokensExpired.Inc()
	}
}

// JWKSFetched counts a fetch of the JSON Web Key Set, ok or failed.
func (m *Metrics) JWKSFetched(ok bool) {
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
func (m *Metrics) BusUnroutable() { m.Dropped(DropUnroutable, 1) }
