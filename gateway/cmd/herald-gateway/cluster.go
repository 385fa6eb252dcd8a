package main

import (
	"crypto/tls"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/consumer"
	"github.com/heraldgw/herald/producer/amqplink"
	"github.com/heraldgw/herald/producer/redact"
)

// The broker cluster's settings (README "Running on a RabbitMQ cluster"): the node list
// (--amqp-url), TLS to the nodes, heartbeats, the stream's replicas and leader, and the
// canary that checks the message path.

// maxStreamReplicas bounds --stream-replicas: more nodes than any cluster has.
const maxStreamReplicas = 255

// validateCluster checks the cluster settings as the gateway would take them at start.
func (c *config) validateCluster() []error {
	var errs []error
	tlsFiles := c.AMQPCAFile != "" || c.AMQPCertFile != "" || c.AMQPKeyFile != ""
	if _, err := amqplink.LoadTLS(c.AMQPCAFile, c.AMQPCertFile, c.AMQPKeyFile); err != nil {
		name := "amqp-cert-file" // the certificate and its key
		if strings.HasPrefix(err.Error(), "CA file") {
			name = "amqp-ca-file"
		}
		errs = append(errs, invalid(name, "%v", err))
	}
	if tlsFiles {
		if c.AMQPURL == "" {
			errs = append(errs, invalid("amqp-ca-file", "TLS files need an amqps:// --amqp-url"))
		}
		for i, raw := range amqplink.SplitURLs(c.AMQPURL) {
			if !strings.HasPrefix(strings.ToLower(raw), "amqps://") {
				errs = append(errs, invalid("amqp-url", "URL %d, %s: TLS files are given, but it is not amqps:// (its password would go in clear)", i+1, redact.URL(raw)))
			}
		}
	}
	if c.AMQPHeartbeat < time.Second || c.AMQPHeartbeat%time.Second != 0 {
		errs = append(errs, invalid("amqp-heartbeat", "%v: want whole seconds, at least 1s (AMQP counts heartbeats in seconds)", c.AMQPHeartbeat))
	}
	if c.Stream.Replicas < 1 || c.Stream.Replicas > maxStreamReplicas {
		errs = append(errs, invalid("stream-replicas", "%d: want 1 to %d", c.Stream.Replicas, maxStreamReplicas))
	}
	if c.Stream.LeaderLocator != "balanced" && c.Stream.LeaderLocator != "client-local" {
		errs = append(errs, invalid("stream-leader-locator", "%.64q: want balanced or client-local", c.Stream.LeaderLocator))
	}
	switch {
	case c.CanaryInterval < 0:
		errs = append(errs, invalid("canary-interval", "must not be negative (0 turns the canary off)"))
	case c.CanaryTimeout <= 0:
		errs = append(errs, invalid("canary-timeout", "must be positive"))
	case c.CanaryInterval > 0 && c.CanaryTimeout <= c.CanaryInterval:
		errs = append(errs, invalid("canary-timeout", "%v must be longer than --canary-interval %v (three or four times it is usual)", c.CanaryTimeout, c.CanaryInterval))
	}
	return errs
}

// amqpTLS is the TLS configuration of every broker connection, nil without TLS files.
func amqpTLS(c config) (*tls.Config, error) {
	return amqplink.LoadTLS(c.AMQPCAFile, c.AMQPCertFile, c.AMQPKeyFile)
}

// canaryInterval is --canary-interval as the bus takes it: 0 (off) is negative there.
func canaryInterval(c config) time.Duration {
	if c.CanaryInterval == 0 {
		return -1
	}
	return c.CanaryInterval
}

// busLinks are the gateway's AMQP links, the values of herald_bus_link_node's label.
var busLinks = []string{"publisher", "consumer", "replay", "probe", "presence-consumer", "presence-publisher"}

// clusterMetrics are the metrics of the gateway's links to the broker cluster and of its
// canary. They are safe for concurrent use; lastBack is set once, before the metrics are
// served.
type clusterMetrics struct {
	node      *prometheus.GaugeVec
	failovers *prometheus.CounterVec
	roundTrip prometheus.Histogram
	canaryErr prometheus.Counter
	stalls    prometheus.Counter
	// What the stream retains (consumer.RabbitConfig.OnStreamBounds) and its limits.
	oldest, head, oldestTime, maxAge, maxBytes prometheus.Gauge
	// lastBack reads the time of the last canary back; set by setBus.
	lastBack func() (time.Time, bool)
}

// newClusterMetrics registers the cluster's metrics on reg.
func newClusterMetrics(reg prometheus.Registerer) *clusterMetrics {
	m := &clusterMetrics{
		node: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herald_bus_link_node",
			Help: "The broker node each AMQP link of the gateway is on: its place in --amqp-url (1 is the first), 0 while the link has no connection.",
		}, []string{"link"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bus_failovers_total",
			Help: "Times an AMQP link connected to another broker node than the one it was last on, by link.",
		}, []string{"link"}),
		roundTrip: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_bus_roundtrip_seconds",
			Help:    "Round trip of the gateway's canaries: from its publish to the exchange to its return through the gateway's own stream consumer.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		canaryErr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bus_canary_failures_total",
			Help: "Canaries the broker did not confirm (nacked, returned, or not confirmed in time).",
		}),
		stalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bus_stalls_total",
			Help: "Times no canary came back within --canary-timeout though the connections were up: the gateway turned unready and declared its topology again.",
		}),
		oldest: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bus_stream_oldest_offset",
			Help: "Offset of the oldest message the stream retains: a resume with a since below it gets reset.",
		}),
		head: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bus_stream_head_offset",
			Help: "Offset of the first message of the stream's newest chunk, as the gateway last looked (every 15s).",
		}),
		oldestTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bus_stream_oldest_timestamp_seconds",
			Help: "Unix time at which the oldest message the stream retains was published (0: it does not say): how far back a resume can reach.",
		}),
		maxAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bus_stream_max_age_seconds",
			Help: "The stream's retention by age the gateway declares it with (--stream-max-age).",
		}),
		maxBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bus_stream_max_bytes",
			Help: "The stream's retention by size the gateway declares it with (--stream-max-bytes).",
		}),
	}
	for _, l := range busLinks {
		m.node.WithLabelValues(l)
		m.failovers.WithLabelValues(l)
	}
	reg.MustRegister(m.node, m.failovers, m.roundTrip, m.canaryErr, m.stalls, m.oldest, m.head, m.oldestTime, m.maxAge, m.maxBytes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herald_bus_canary_last_return_timestamp_seconds",
			Help: "Unix time at which the gateway's last canary came back through its consumer; 0 before the first.",
		}, func() float64 {
			if m.lastBack == nil {
				return 0
			}
			t, ok := m.lastBack()
			if !ok {
				return 0
			}
			return float64(t.UnixNano()) / 1e9
		}))
	return m
}

// linkNode records the node a link is on (-1: none). A nil m records nothing.
func (m *clusterMetrics) linkNode(link string, node int) {
	if m == nil {
		return
	}
	m.node.WithLabelValues(link).Set(float64(node + 1))
}

// failover counts a link's move to another node.
func (m *clusterMetrics) failover(link string, _, _ int) {
	if m == nil {
		return
	}
	m.failovers.WithLabelValues(link).Inc()
}

// streamBounds records what the stream retains.
func (m *clusterMetrics) streamBounds(oldest, head int64, at time.Time) {
	m.oldest.Set(float64(oldest))
	m.head.Set(float64(head))
	if at.IsZero() {
		m.oldestTime.Set(0)
		return
	}
	m.oldestTime.Set(float64(at.UnixNano()) / 1e9)
}

// streamLimits records the stream's configured retention.
func (m *clusterMetrics) streamLimits(c config) {
	m.maxAge.Set(c.Stream.MaxAge.Seconds())
	m.maxBytes.Set(float64(c.Stream.MaxBytes))
}

// setBus lets the metrics read the bus's canary.
func (m *clusterMetrics) setBus(r *consumer.Rabbit) { m.lastBack = r.LastCanary }
