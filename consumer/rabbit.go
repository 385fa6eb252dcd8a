package consumer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/message"
)

// Defaults of RabbitConfig's zero fields, and limits of the canary.
const (
	rabbitDefaultCanaryInterval = 5 * time.Second
	rabbitDefaultCanaryTimeout  = 20 * time.Second
	rabbitDefaultNode           = "herald"
	rabbitDefaultPublisherName  = "herald-publisher"
	// ControlCanary is the value of producer.HeaderControl on a gateway's canary.
	ControlCanary = "canary"
	// canaryCheckEvery is how often the canary's goroutine looks whether one is due or
	// overdue.
	canaryCheckEvery = time.Second
	// canarySlots bounds the canaries in flight whose send time is remembered.
	canarySlots = 16
	// maxCanaryBody bounds the body of a canary that is read: a canary is small.
	maxCanaryBody = 512
	// boundsEvery is how often the bus looks what the stream retains (OnStreamBounds),
	// and boundsTimeout bounds each look.
	boundsEvery   = 15 * time.Second
	boundsTimeout = 5 * time.Second
)

// RabbitConfig configures the RabbitMQ bus: a publisher and a stream consumer, on the
// same broker or cluster, and the canary that checks the message path between them.
type RabbitConfig struct {
	// Stream configures the stream consumer. Its URL, TLS, Heartbeat, Exchange, Logger,
	// ReconnectMin, ReconnectMax, OnNode and OnFailover are the publisher's too.
	Stream StreamConfig
	// PublisherName is the connection name of the publisher; "herald-publisher" when
	// empty.
	PublisherName string
	// Logger receives the publisher's and the canary's logs (the consumer's go to
	// Stream.Logger); they are discarded when nil.
	Logger *slog.Logger
	// Node is this gateway's name, carried by its canaries; "herald" when empty.
	Node string
	// CanaryInterval is how often the bus sends a canary through the exchange and times
	// its return through its own consumer; 5s when zero, none when negative.
	CanaryInterval time.Duration
	// CanaryTimeout is how long the bus waits for a canary to come back before it
	// reports the message path stalled (Connected false, with the reason in Health) and
	// declares its topology again and attaches again (Stream.Redeclare); 20s when zero.
	// It must be longer than CanaryInterval.
	CanaryTimeout time.Duration
	// OnPublisherState, when set, is called with the publisher's state changes
	// (producer.Config.OnStateChange).
	OnPublisherState func(connected bool)
	// OnCanary, when set, is called with the round trip of each canary of this bus that
	// comes back, from the stream consumer's goroutine.
	OnCanary func(roundTrip time.Duration)
	// OnCanaryFailed, when set, is called for each canary the broker did not confirm (it
	// is logged too, sampled).
	OnCanaryFailed func()
	// OnStall, when set, is called when no canary has come back within CanaryTimeout
	// (the bus then declares its topology again), from the canary's goroutine.
	OnStall func()
	// OnStreamBounds, when set, is called every boundsEvery from the time the consumer is
	// ready, with what the stream retains: the offset of its oldest message and when that
	// was published (zero when it does not say), and the offset of its newest chunk's
	// first message: how far back a resume can reach. It is not called while the stream
	// is empty or the broker is away.
	OnStreamBounds func(oldest, head int64, oldestTime time.Time)
}

// Rabbit is the bus of a gateway on RabbitMQ, the twin of Embedded: Publish puts a
// message on the exchange (confirmed), the stream bound to it gives every message its
// offset, and Run dispatches the stream to the Dispatcher and replays it on request.
//
// It sees its own message path: every CanaryInterval it publishes a canary, a control
// message (producer.HeaderControl: "canary") that every reader skips, and times its
// return through its own consumer. When none has come back within CanaryTimeout, though
// every connection may be up (a binding deleted, a consumer the broker stopped serving),
// Connected turns false, Health says why, and the stream consumer declares the topology
// again and attaches again; a canary that comes back makes it healthy again.
//
// Publish, Replay, Oldest, Head, Connected, Health, Detail, Ready and ProbeHeaders are
// safe for concurrent use; Run is called once; Close after Run has returned.
type Rabbit struct {
	cfg    RabbitConfig // defaults applied; read-only after NewRabbit
	log    *slog.Logger
	pub    *producer.Publisher
	stream *Stream
	// instance tells this process's canaries from those of a gateway of the same Node
	// that ran before.
	instance string

	// lastBack is when the last canary of this bus came back, in Unix nanoseconds (the
	// time the bus became ready before the first); 0 before. lastRTT is its round trip.
	lastBack atomic.Int64
	lastRTT  atomic.Int64
	// stalled is set by the canary's goroutine when no canary came back within
	// CanaryTimeout, and cleared when one comes back.
	stalled atomic.Bool

	// mu protects sent: the send times of the canaries in flight, by seq%canarySlots.
	mu   sync.Mutex
	sent [canarySlots]canarySent
}

// canarySent is when canary seq was sent.
type canarySent struct {
	seq uint64
	at  time.Time
}

// canaryBody is a canary's body.
type canaryBody struct {
	Node     string `json:"node"`
	Instance string `json:"instance"`
	Seq      uint64 `json:"seq"`
}

// NewRabbit connects the bus's publisher (failing at once when no node of the list
// answers) and returns the bus; Run starts the consumer and the canary.
func NewRabbit(ctx context.Context, cfg RabbitConfig, d Dispatcher) (*Rabbit, error) {
	if cfg.CanaryInterval == 0 {
		cfg.CanaryInterval = rabbitDefaultCanaryInterval
	}
	if cfg.CanaryTimeout == 0 {
		cfg.CanaryTimeout = rabbitDefaultCanaryTimeout
	}
	if cfg.Node == "" {
		cfg.Node = rabbitDefaultNode
	}
	if cfg.PublisherName == "" {
		cfg.PublisherName = rabbitDefaultPublisherName
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CanaryInterval > 0 && cfg.CanaryTimeout <= cfg.CanaryInterval {
		return nil, fmt.Errorf("consumer: rabbit: CanaryTimeout %v must be longer than CanaryInterval %v", cfg.CanaryTimeout, cfg.CanaryInterval)
	}
	if cfg.CanaryTimeout < 0 {
		return nil, fmt.Errorf("consumer: rabbit: CanaryTimeout %v is negative", cfg.CanaryTimeout)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	r := &Rabbit{instance: hex.EncodeToString(b[:])}
	sc := cfg.Stream.withDefaults()
	user := sc.OnControl
	sc.OnControl = func(kind string, body []byte) {
		if kind == ControlCanary {
			r.canaryBack(body)
		}
		if user != nil {
			user(kind, body)
		}
	}
	cfg.Stream = sc
	r.cfg = cfg
	r.log = cfg.Logger.With("part", "canary")
	r.stream = NewStream(sc, d)
	if r.stream.cfgErr != nil {
		return nil, r.stream.cfgErr
	}
	pub, err := producer.New(ctx, producer.Config{
		URL:           sc.URL,
		Exchange:      sc.Exchange,
		Name:          cfg.PublisherName,
		TLS:           sc.TLS,
		Heartbeat:     sc.Heartbeat,
		ReconnectMin:  sc.ReconnectMin,
		ReconnectMax:  sc.ReconnectMax,
		Logger:        cfg.Logger.With("part", "publisher"),
		OnStateChange: cfg.OnPublisherState,
		OnNode:        sc.OnNode,
		OnFailover:    sc.OnFailover,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer: rabbit: publisher: %w", err)
	}
	r.pub = pub
	return r, nil
}

// Publish puts m on the exchange and returns its id once the broker has confirmed it
// (producer.Publisher.Publish).
func (r *Rabbit) Publish(ctx context.Context, m message.Message) (string, error) {
	return r.pub.Publish(ctx, m)
}

// Replay reads the stream after since (Stream.Replay).
func (r *Rabbit) Replay(ctx context.Context, since int64, fn func(message.Message) bool) error {
	return r.stream.Replay(ctx, since, fn)
}

// KnownNewest reports false: only the broker knows the stream's newest offset (Head asks
// it); the gateway learns it from live delivery.
func (r *Rabbit) KnownNewest() (int64, bool) { return 0, false }

// Oldest returns the oldest offset the stream retains (Stream.Oldest).
func (r *Rabbit) Oldest(ctx context.Context) (int64, bool) { return r.stream.Oldest(ctx) }

// Head estimates the newest offset in the stream (Stream.Head).
func (r *Rabbit) Head(ctx context.Context) (int64, bool) { return r.stream.Head(ctx) }

// Position returns the offset of the last delivery the consumer handled, control
// messages included (Stream.Position).
func (r *Rabbit) Position() (int64, bool) { return r.stream.Position() }

// Ready is closed once the consumer has caught up with the stream at start
// (Stream.Ready).
func (r *Rabbit) Ready() <-chan struct{} { return r.stream.Ready() }

// ProbeHeaders finds out what the broker does to array and table headers in a stream
// (Stream.ProbeHeaders).
func (r *Rabbit) ProbeHeaders(ctx context.Context) (HeaderSupport, error) {
	return r.stream.ProbeHeaders(ctx)
}

// Connected reports whether the bus is usable now: the publisher connected, the consumer
// attached, and the message path not stalled (a canary came back within CanaryTimeout).
func (r *Rabbit) Connected() bool {
	ok, _ := r.Health()
	return ok
}

// Health reports whether the bus is usable now and, when it is not, why.
func (r *Rabbit) Health() (ok bool, reason string) {
	switch {
	case r.stalled.Load(): // the consumer may be attaching again because of it
		return false, fmt.Sprintf("no canary came back through the stream within %v (last %s): messages do not go round; the topology is declared again",
			r.cfg.CanaryTimeout, r.lastBackText(time.Now()))
	case !r.pub.Connected():
		return false, "the publisher is not connected to any node of the broker"
	case !r.stream.Connected():
		return false, "the consumer is not attached to the stream"
	}
	return true, ""
}

// lastBackText says how long ago the last canary came back.
func (r *Rabbit) lastBackText(now time.Time) string {
	if r.lastRTT.Load() == 0 {
		return "none yet"
	}
	return now.Sub(time.Unix(0, r.lastBack.Load())).Round(time.Second).String() + " ago"
}

// LastCanary returns when the last canary of this bus came back, and false before one.
func (r *Rabbit) LastCanary() (time.Time, bool) {
	if r.lastRTT.Load() == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, r.lastBack.Load()), true
}

// Detail is what /readyz shows of the bus's health: the reason when it is not usable,
// the node each connection is on (1 is the first of the URL list), and the canary.
func (r *Rabbit) Detail() map[string]any {
	now := time.Now()
	d := map[string]any{}
	if ok, reason := r.Health(); !ok {
		d["reason"] = reason
	}
	nodes := map[string]int{}
	if n, ok := r.pub.Node(); ok {
		nodes["publisher"] = n + 1
	}
	if n, ok := r.stream.Node(); ok {
		nodes["consumer"] = n + 1
	}
	d["nodes"] = nodes
	if r.cfg.CanaryInterval > 0 {
		c := map[string]any{"last_back": r.lastBackText(now)}
		if rtt := r.lastRTT.Load(); rtt > 0 {
			c["round_trip_ms"] = float64(rtt) / 1e6
		}
		d["canary"] = c
	}
	return d
}

// Run runs the stream consumer (Stream.Run) and, once it is ready, the canary and the
// look at what the stream retains, until ctx ends. It returns the consumer's error at
// start, or nil.
func (r *Rabbit) Run(ctx context.Context) error {
	canaryCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if r.cfg.CanaryInterval > 0 {
		wg.Go(func() { r.runCanary(canaryCtx) })
	}
	if r.cfg.OnStreamBounds != nil {
		wg.Go(func() { r.watchBounds(canaryCtx) })
	}
	err := r.stream.Run(ctx)
	stop()
	wg.Wait()
	return err
}

// Close closes the publisher. Call it once Run has returned.
func (r *Rabbit) Close() error { return r.pub.Close() }

// runCanary sends a canary every CanaryInterval while the publisher and the consumer are
// connected, from the time the consumer is ready until ctx ends, and reports the message
// path stalled (and asks the consumer to declare the topology again and attach again)
// when none has come back within CanaryTimeout of the later of the last one back and the
// time the connections came up. It does so again at most once per CanaryTimeout while
// the stall lasts.
func (r *Rabbit) runCanary(ctx context.Context) {
	select {
	case <-r.stream.Ready():
	case <-ctx.Done():
		return
	}
	var seq uint64
	// up is when both connections were last seen up after a time down (the time the
	// consumer became ready at first): a canary is awaited from then on.
	var up, nextSend, lastAction time.Time
	failLogs := logSampler{}
	t := time.NewTicker(canaryCheckEvery)
	defer t.Stop()
	for {
		now := time.Now()
		connected := r.pub.Connected() && r.stream.Connected()
		switch {
		case !connected:
			up = time.Time{}
		case up.IsZero():
			up = now
		}
		if connected && !now.Before(nextSend) {
			seq++
			nextSend = now.Add(r.cfg.CanaryInterval)
			if err := r.sendCanary(ctx, seq); err != nil && ctx.Err() == nil {
				if r.cfg.OnCanaryFailed != nil {
					r.cfg.OnCanaryFailed()
				}
				if ok, held := failLogs.allow(); ok {
					r.log.Warn("canary not confirmed by the broker", "seq", seq, "err", err, "similar_lines_held", held)
				}
			}
		}
		since := up
		if back := time.Unix(0, r.lastBack.Load()); r.lastRTT.Load() != 0 && back.After(since) {
			since = back
		}
		if connected && now.Sub(since) > r.cfg.CanaryTimeout && now.Sub(lastAction) > r.cfg.CanaryTimeout {
			lastAction = now
			r.stalled.Store(true)
			if r.cfg.OnStall != nil {
				r.cfg.OnStall()
			}
			r.log.Error("no canary came back through the stream within the timeout though the connections are up: the gateway is unready; declaring the topology again and attaching again",
				"timeout", r.cfg.CanaryTimeout, "last_back", r.lastBackText(now), "exchange", r.cfg.Stream.Exchange, "stream", r.cfg.Stream.Stream)
			r.stream.Redeclare()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchBounds reports what the stream retains (OnStreamBounds) every boundsEvery, from
// the time the consumer is ready until ctx ends.
func (r *Rabbit) watchBounds(ctx context.Context) {
	select {
	case <-r.stream.Ready():
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(boundsEvery)
	defer t.Stop()
	for {
		look, cancel := context.WithTimeout(ctx, boundsTimeout)
		oldest, at, ok := r.stream.OldestMessage(look)
		head, hok := r.stream.Head(look)
		cancel()
		if ok && hok {
			r.cfg.OnStreamBounds(oldest, head, at)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sendCanary publishes canary seq and waits for the broker's confirm, at most
// CanaryInterval.
func (r *Rabbit) sendCanary(ctx context.Context, seq uint64) error {
	body, _ := json.Marshal(canaryBody{Node: r.cfg.Node, Instance: r.instance, Seq: seq})
	now := time.Now()
	r.mu.Lock()
	r.sent[seq%canarySlots] = canarySent{seq: seq, at: now}
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, r.cfg.CanaryInterval)
	defer cancel()
	return r.pub.PublishRaw(ctx, amqp.Publishing{
		Headers:      amqp.Table{producer.HeaderControl: ControlCanary},
		ContentType:  producer.ContentType,
		DeliveryMode: amqp.Transient,
		MessageId:    "canary-" + r.instance + "-" + strconv.FormatUint(seq, 10),
		Timestamp:    now,
		Body:         body,
	})
}

// canaryBack handles a canary read from the stream: one of this bus's (a later one than
// the last back) is timed, and marks the message path healthy. The stream consumer's
// goroutine.
func (r *Rabbit) canaryBack(body []byte) {
	if len(body) > maxCanaryBody {
		return
	}
	var c canaryBody
	if err := json.Unmarshal(body, &c); err != nil || c.Instance != r.instance {
		return // another gateway's, or not a canary of ours
	}
	r.mu.Lock()
	s := r.sent[c.Seq%canarySlots]
	r.mu.Unlock()
	if s.seq != c.Seq {
		return // too old to be timed
	}
	now := time.Now()
	rtt := now.Sub(s.at)
	r.lastRTT.Store(max(int64(rtt), 1))
	r.lastBack.Store(now.UnixNano())
	if r.stalled.Swap(false) {
		r.log.Info("a canary came back through the stream: the message path works again", "round_trip", rtt)
	}
	if r.cfg.OnCanary != nil {
		r.cfg.OnCanary(rtt)
	}
}
