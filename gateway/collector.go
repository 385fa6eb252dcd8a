package gateway

import (
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

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
	tailBytes, tailAge, tailN     *prometheus.Desc
	tailEdge, resumeWaiting       *prometheus.Desc
}

// queueDepthBuckets are the upper bounds, in bytes, of herald_write_queue_depth_bytes.
var queueDepthBuckets = []float64{0, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 512 << 10, 1 << 20, 4 << 20}

func newStateCollector(srv *Server, hub *Hub, bus BusHealth) *stateCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &stateCollector{
		srv: srv,
		hub: hub,
		bus: bus,
		conns: prometheus.NewDesc("herald_connections", "Client connections open now (resuming ones included), by transport (ws, sse).",
			[]string{"transport"}, nil),
		subs:    d("herald_subscriptions", "Channel subscriptions across all connections."),
		chans:   d("herald_channels", "Channels with at least one subscriber."),
		busUp:   d("herald_bus_connected", "1 when the gateway can publish to and consume from the bus, else 0."),
		qFrames: d("herald_write_queue_messages", "Frames waiting in all connections' write queues."),
		qBytes:  d("herald_write_queue_bytes", "Bytes waiting in all connections' write queues."),
		qMaxF:   d("herald_write_queue_max_messages", "Frames waiting in the fullest connection's write queue."),
		qMaxB:   d("herald_write_queue_max_bytes", "Bytes waiting in the fullest connection's write queue."),
		qDepth:  d("herald_write_queue_depth_bytes", "Bytes waiting in each connection's write queue, sampled at scrape."),
		qCap:    d("herald_write_queue_cap_bytes", "The configured cap of each connection's write queue (--write-queue-bytes); a connection over it is closed with 4008."),

		tailBytes:     d("herald_tail_bytes", "Bytes of the tail of the log held in memory (--tail-bytes bounds it)."),
		tailAge:       d("herald_tail_age_seconds", "Age of the oldest message held in the tail of the log (--tail-age bounds it); 0 when it holds none."),
		tailN:         d("herald_tail_messages", "Messages held in the tail of the log."),
		tailEdge:      d("herald_tail_edge_offset", "The offset after which the tail of the log is complete: a resume from a since at or above it is served from memory; -1 before it is known."),
		resumeWaiting: d("herald_resumes_waiting", "Resumes older than the tail waiting for a reader of the bus's log (--resume-readers)."),
	}
}

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{s.conns, s.subs, s.chans, s.busUp, s.qFrames, s.qBytes, s.qMaxF, s.qMaxB, s.qDepth, s.qCap,
		s.tailBytes, s.tailAge, s.tailN, s.tailEdge, s.resumeWaiting} {
		ch <- d
	}
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	var n, frames, bytes, maxF, maxB int
	var byKind [2]int // by metrics.Transport
	counts := make([]uint64, len(queueDepthBuckets))
	s.srv.conns.forEach(func(c *session) {
		n++
		byKind[c.kind]++
		{
			f, b := c.Depth()
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
	for kind, name := range []string{"ws", "sse"} {
		ch <- prometheus.MustNewConstMetric(s.conns, prometheus.GaugeValue, float64(byKind[kind]), name)
	}
	g(s.subs, subs)
	g(s.chans, chans)
	g(s.qFrames, frames)
	g(s.qBytes, bytes)
	g(s.qMaxF, maxF)
	g(s.qMaxB, maxB)
	g(s.qCap, s.srv.cfg.WriteQueueBytes)
	ch <- prometheus.MustNewConstMetric(s.busUp, prometheus.GaugeValue, up)

	s.hub.TrimTail()
	st := s.hub.Tail().Stats()
	age := 0.0
	if !st.Oldest.IsZero() {
		age = time.Since(st.Oldest).Seconds()
	}
	edge := st.Edge
	if edge == math.MaxInt64 {
		edge = -1
	}
	g(s.tailN, st.Entries)
	ch <- prometheus.MustNewConstMetric(s.tailBytes, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(s.tailAge, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(s.tailEdge, prometheus.GaugeValue, float64(edge))
	waiting := 0
	if p := s.srv.resume.pool; p != nil {
		waiting = p.Stats().Waiting
	}
	g(s.resumeWaiting, waiting)
}
