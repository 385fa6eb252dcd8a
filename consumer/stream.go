package consumer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqplink"
	"github.com/heraldgw/herald/producer/message"
)

// Defaults of StreamConfig's zero fields, and limits of the stream consumer.
const (
	streamDefaultExchange = "herald"
	streamDefaultStream   = "herald.stream"
	streamDefaultMaxAge   = 24 * time.Hour
	streamDefaultMaxBytes = int64(1 << 30)
	streamDefaultPrefetch = 1000
	streamDefaultName     = "herald-consumer"
	streamDefaultStart    = "last"
	streamDefaultWarmUp   = time.Second
	streamDefaultReplicas = 3
	streamDefaultLocator  = "balanced"
	streamMaxPrefetch     = 65535 // basic.qos carries the count in 16 bits
	streamMaxReplicas     = 255   // more nodes than any RabbitMQ cluster has

	// The warm-up is over once the head found at start is reached and no delivery has
	// come for warmUpSettle (the rest of the head's chunk is on its way), or at most
	// warmUpSettleMax after the head was reached (publishers that never pause).
	warmUpSettle    = 100 * time.Millisecond
	warmUpSettleMax = time.Second
)

// StreamConfig configures a Stream. Every gateway that consumes the same stream should
// use the same Exchange, Stream, MaxAge, MaxBytes, SegmentBytes, Replicas and
// LeaderLocator: the stream is declared with them only when it does not exist yet. A
// stream that exists with other arguments is used as it is, and Run logs which differ
// and how to change them (RabbitMQ refuses to declare it again with others).
type StreamConfig struct {
	// URL is the broker's AMQP URI, e.g. amqp://user:pass@host:5672/vhost, or the
	// comma-separated URIs of a cluster's nodes: every connection of the Stream (the
	// consumer's, the replays', the probe's) goes to the first node that answers and,
	// when it loses that node, to the next (amqplink). Required.
	URL string
	// TLS configures amqps:// connections (amqplink.Config.TLS); nil: the system's CAs.
	TLS *tls.Config
	// Heartbeat is the AMQP heartbeat of every connection; 5s when zero: a node that
	// hangs without closing the connection is given up after 7.5s.
	Heartbeat time.Duration
	// Replicas is how many nodes hold a copy of the stream (x-initial-cluster-size), set
	// when the stream is declared; RabbitMQ caps it at the cluster's size. 3 when zero:
	// a 3-node cluster then survives the loss of any one node.
	Replicas int
	// LeaderLocator picks the node of a new stream's leader (x-queue-leader-locator):
	// "balanced" (the node with the fewest leaders) or "client-local" (the node the
	// declaring gateway is connected to); "balanced" when empty.
	LeaderLocator string
	// Exchange is the durable fanout exchange that publishers publish to; "herald" when empty.
	Exchange string
	// Stream is the durable stream queue bound to Exchange; "herald.stream" when empty.
	Stream string
	// MaxAge is how long the stream retains messages (x-max-age, sent in whole seconds,
	// rounded up); 24h when zero.
	MaxAge time.Duration
	// MaxBytes caps the stream's size on disk (x-max-length-bytes); 1 GiB when zero.
	MaxBytes int64
	// SegmentBytes is the size of one segment file of the stream
	// (x-stream-max-segment-size-bytes); zero leaves the broker's default (500 MB).
	// Retention removes whole segments, so it should be well below MaxBytes.
	SegmentBytes int64
	// Prefetch is the number of deliveries the broker may send ahead of acks (basic.qos),
	// from 1 to 65535; 1000 when zero.
	Prefetch int
	// Name is the connection name shown in the broker's management tools; "herald-consumer"
	// when empty.
	Name string
	// Logger receives the consumer's logs; they are discarded when nil.
	Logger *slog.Logger
	// ReconnectMin is the first delay ceiling before reconnecting; 100ms when zero.
	// Each failed round of attempts over the node list doubles the ceiling up to
	// ReconnectMax, and each delay is drawn uniformly between zero and the ceiling
	// (amqplink.Backoff).
	ReconnectMin time.Duration
	// ReconnectMax is the largest delay ceiling between reconnect attempts; 10s when
	// zero. It must not be below ReconnectMin.
	ReconnectMax time.Duration
	// OnNode and OnFailover, when set, hear which node each connection of the Stream is
	// on (links "consumer" and "replay"): see amqplink.Config.
	OnNode     func(link string, node int)
	OnFailover func(link string, from, to int)
	// OnControl, when set, is called from Run's goroutine with each control message the
	// stream delivers (a delivery with the producer.HeaderControl header, such as the
	// gateways' canaries): its kind (the header's value) and its body. Control messages
	// are never dispatched.
	OnControl func(kind string, body []byte)
	// OnStateChange, when set, is called from Run's goroutine each time the consumer is
	// attached to the stream (true) and each time it is lost or shut down (false).
	OnStateChange func(connected bool)
	// OnReconnect, when set, is called from Run's goroutine after the consumer is attached
	// again following a loss (not after the first attach).
	OnReconnect func()
	// OnDecodeError, when set, is called from Run's goroutine for a delivery that cannot be
	// delivered as a Herald message (PROTOCOL.md section 3): err matches producer.ErrNotJSON
	// or producer.ErrUnroutable. The delivery is acked and dropped.
	OnDecodeError func(err error)
	// Start is where the consumer first attaches to the stream (its x-stream-offset):
	// "last" (the stream's last chunk) when nil, "first", a non-negative int64 offset, or
	// a time.Time. What it reads from there up to the stream's head is dispatched before
	// the Stream is ready (the warm-up: the dispatcher learns where the log stands, and
	// may keep a tail of it), so a gateway must admit no client until Ready. Reconnects
	// resume just after the last offset handled, whatever Start.
	Start any
	// WarmUpWait bounds how long the first attach waits to learn where the stream's head
	// is: RabbitMQ 3.10 has no AMQP 0-9-1 query for it (queue.declare-ok counts no
	// messages in a stream), and a consumer attached at "last" gets nothing from an empty
	// stream. When no delivery comes within WarmUpWait the stream is taken for empty. It
	// also ends a warm-up that gets no delivery for that long before it reaches the head.
	// 1s when zero.
	WarmUpWait time.Duration
	// OnLogStart, when set, is called once from Run's goroutine when the warm-up is over,
	// just before Ready is closed, with the offset of the newest message in the stream
	// then (message.NoOffset when it is empty): every message after it will be dispatched.
	OnLogStart func(newest int64)
	// OnBadHeader, when set, is called from Run's goroutine for each header of a delivery
	// that cannot be read, with the header's name (one of producer's Header constants):
	// an optional one, which the message is delivered without, or a routing one, which
	// makes it undeliverable (OnDecodeError follows).
	OnBadHeader func(header string)
}

// withDefaults returns c with its zero fields set to their defaults.
func (c StreamConfig) withDefaults() StreamConfig {
	if c.Exchange == "" {
		c.Exchange = streamDefaultExchange
	}
	if c.Stream == "" {
		c.Stream = streamDefaultStream
	}
	if c.MaxAge == 0 {
		c.MaxAge = streamDefaultMaxAge
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = streamDefaultMaxBytes
	}
	if c.Prefetch == 0 {
		c.Prefetch = streamDefaultPrefetch
	}
	if c.Name == "" {
		c.Name = streamDefaultName
	}
	if c.Start == nil {
		c.Start = streamDefaultStart
	}
	if c.WarmUpWait == 0 {
		c.WarmUpWait = streamDefaultWarmUp
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Replicas == 0 {
		c.Replicas = streamDefaultReplicas
	}
	if c.LeaderLocator == "" {
		c.LeaderLocator = streamDefaultLocator
	}
	return c
}

// link returns the amqplink configuration of the Stream's link named link.
func (c StreamConfig) link(link, name string) amqplink.Config {
	return amqplink.Config{
		URLs:         amqplink.SplitURLs(c.URL),
		Link:         link,
		Name:         name,
		TLS:          c.TLS,
		Heartbeat:    c.Heartbeat,
		ReconnectMin: c.ReconnectMin,
		ReconnectMax: c.ReconnectMax,
		Logger:       c.Logger.With("component", "consumer", "stream", c.Stream),
		OnNode:       c.OnNode,
		OnFailover:   c.OnFailover,
	}
}

// validate reports the first field of a defaulted config that Run cannot work with.
func (c StreamConfig) validate() error {
	if err := c.link("consumer", c.Name).Validate(); err != nil {
		return fmt.Errorf("consumer: stream config: %w", err)
	}
	switch {
	case c.MaxAge < 0:
		return fmt.Errorf("consumer: stream config: MaxAge %v is negative", c.MaxAge)
	case c.MaxBytes < 0:
		return fmt.Errorf("consumer: stream config: MaxBytes %d is negative", c.MaxBytes)
	case c.SegmentBytes < 0:
		return fmt.Errorf("consumer: stream config: SegmentBytes %d is negative", c.SegmentBytes)
	case c.Prefetch < 1 || c.Prefetch > streamMaxPrefetch:
		return fmt.Errorf("consumer: stream config: Prefetch %d is outside 1..%d", c.Prefetch, streamMaxPrefetch)
	case c.Replicas < 1 || c.Replicas > streamMaxReplicas:
		return fmt.Errorf("consumer: stream config: Replicas %d is outside 1..%d", c.Replicas, streamMaxReplicas)
	case c.LeaderLocator != "balanced" && c.LeaderLocator != "client-local":
		return fmt.Errorf("consumer: stream config: LeaderLocator %q: want \"balanced\" or \"client-local\"", c.LeaderLocator)
	case c.WarmUpWait < 0:
		return fmt.Errorf("consumer: stream config: WarmUpWait %v is negative", c.WarmUpWait)
	}
	switch v := c.Start.(type) {
	case string:
		if v != "first" && v != "last" {
			return fmt.Errorf("consumer: stream config: Start %q: want \"first\", \"last\", an int64 offset or a time.Time", v)
		}
	case int64:
		if v < 0 {
			return fmt.Errorf("consumer: stream config: Start offset %d is negative", v)
		}
	case time.Time:
	default:
		return fmt.Errorf("consumer: stream config: Start %v (%T): want \"first\", \"last\", an int64 offset or a time.Time", v, v)
	}
	return nil
}

// queueArgs are the arguments that declare the stream with its retention.
func (c StreamConfig) queueArgs() amqp.Table {
	args := amqp.Table{
		"x-queue-type":           "stream",
		"x-max-age":              streamMaxAgeArg(c.MaxAge),
		"x-max-length-bytes":     c.MaxBytes,
		"x-initial-cluster-size": int64(c.Replicas),
		"x-queue-leader-locator": c.LeaderLocator,
	}
	if c.SegmentBytes > 0 {
		args["x-stream-max-segment-size-bytes"] = c.SegmentBytes
	}
	return args
}

// streamMaxAgeArg formats a retention age as RabbitMQ's x-max-age expects it: whole seconds,
// rounded up, at least one ("86400s").
func streamMaxAgeArg(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	return fmt.Sprintf("%ds", max(secs, 1))
}

// Stream is one gateway's consumer of the RabbitMQ stream bound to Herald's fanout
// exchange. It hands every message to its Dispatcher in the stream's order, each with its
// stream offset, and reconnects on its own: after a connection loss, a broker restart or
// the loss of the cluster node it was on, it attaches again, to the next node of its list
// first, just after the last offset it received (offsets are the same on every node), so
// nothing within retention is lost or dispatched twice.
//
// At start it attaches a little back (StreamConfig.Start: the stream's last chunk) and
// dispatches what it reads up to the stream's head before it is Ready: a warm-up, after
// which the newest offset in the stream is known (OnLogStart), so that the first welcome
// frames can carry it.
//
// Control messages (producer.HeaderControl) are handed to OnControl, never dispatched,
// and skipped by Replay.
//
// Run does all the work on the caller's goroutine: it owns the connection, the channel
// and the position in the stream, and it is the only goroutine that calls Dispatch and
// the config's callbacks. Connected, LastOffset, Position, Ready, Redeclare, Replay, Head,
// Oldest and ProbeHeaders are safe to call from any goroutine.
type Stream struct {
	cfg   StreamConfig // defaults applied; read-only after NewStream
	d     Dispatcher
	log   *slog.Logger
	ready chan struct{} // closed by Run when the warm-up is over
	// cfgErr is what validate found wrong with cfg; Run, Replay and the probes return it.
	cfgErr error

	// The Stream's links: the consumer's (Run's), the replays' and the probes'; nil when
	// cfgErr is set.
	consumerLink, replayLink, probeLink *amqplink.Link

	started   atomic.Bool  // set by the first call of Run
	connected atomic.Bool  // whether a consumer is attached now
	last      atomic.Int64 // offset of the last message dispatched; message.NoOffset before one
	position  atomic.Int64 // pos, for other goroutines

	// redeclare has room for one request (Redeclare) to re-declare the topology and
	// attach again; received by Run's goroutine.
	redeclare chan struct{}

	// replaySlots has a place for each replay running (see Replay); replayMu protects
	// replayConn, the connection replays share.
	replaySlots chan struct{}
	replayMu    sync.Mutex
	replayConn  *amqplink.Conn

	// probeHook, set by tests only, is called by ProbeHeaders once the probe's stream is
	// declared.
	probeHook func(ctx context.Context, stream string)

	// Owned by Run's goroutine.
	pos        int64     // offset of the last delivery handled (dispatched, dropped or skipped); NoOffset before one
	attached   time.Time // when the first consumer was attached (at Start)
	warm       warmUp
	headerLogs logSampler
	dropLogs   logSampler
	next       *streamSession // the session open made last, for serve to take
	// compare is set when the next attach must compare the stream's arguments with the
	// configured ones (the first attach, and after Redeclare); argsLogged remembers the
	// differences last logged, so that they are not logged again at each re-declare.
	compare    bool
	argsLogged string
}

// warmUp is the state of a Stream's warm-up: from the first attach until it has read up
// to the head of the stream it found then. Owned by Run's goroutine.
type warmUp struct {
	done    bool
	target  int64     // the head found after the first attach; NoOffset: none (an empty stream)
	reached time.Time // when a delivery at or past target was handled; zero before
	seen    time.Time // when the last delivery was handled, or the consumer (re)attached
	n       int       // deliveries handled during the warm-up
}

// NewStream returns a Stream that will deliver to d once Run is called. It does not
// connect; zero fields of cfg take the defaults documented on StreamConfig. A config
// that cannot work is reported by Run.
func NewStream(cfg StreamConfig, d Dispatcher) *Stream {
	cfg = cfg.withDefaults()
	s := &Stream{
		cfg:       cfg,
		d:         d,
		log:       cfg.Logger.With("component", "consumer", "stream", cfg.Stream),
		ready:     make(chan struct{}),
		pos:       message.NoOffset,
		redeclare: make(chan struct{}, 1),
		compare:   true,

		replaySlots: make(chan struct{}, maxReplays),
	}
	s.last.Store(message.NoOffset)
	s.position.Store(message.NoOffset)
	if s.cfgErr = cfg.validate(); s.cfgErr != nil {
		return s
	}
	// Validated above: NewLink cannot fail.
	s.consumerLink, _ = amqplink.NewLink(cfg.link("consumer", cfg.Name))
	s.replayLink, _ = amqplink.NewLink(cfg.link("replay", cfg.Name+"-replay"))
	s.probeLink, _ = amqplink.NewLink(cfg.link("probe", cfg.Name+"-probe"))
	return s
}

// Ready returns a channel that is closed once the first consumer has attached to the
// stream and read it up to the head it found there (the warm-up), and OnLogStart has been
// called. Every message published to the exchange after that is dispatched, and none
// before the newest offset given to OnLogStart is dispatched after it, so a gateway
// should admit clients and report itself ready only then. It is never closed when Run
// fails to start.
func (s *Stream) Ready() <-chan struct{} { return s.ready }

// Connected reports whether a consumer is attached to the stream now.
func (s *Stream) Connected() bool { return s.connected.Load() }

// LastOffset returns the stream offset of the last message dispatched, and false when no
// message has been dispatched yet.
func (s *Stream) LastOffset() (int64, bool) {
	off := s.last.Load()
	return off, off != message.NoOffset
}

// KnownNewest reports false: only the broker knows the stream's newest offset (Head asks
// it); the gateway learns it from live delivery.
func (s *Stream) KnownNewest() (int64, bool) { return 0, false }

// Position returns the stream offset of the last delivery the consumer handled, whether
// it dispatched it or not (a control message, one it could not decode), and false before
// the first. The consumer resumes just after it.
func (s *Stream) Position() (int64, bool) {
	off := s.position.Load()
	return off, off != message.NoOffset
}

// Node returns the index, in the list of StreamConfig.URL, of the node the consumer is
// attached through, and false while it is not attached.
func (s *Stream) Node() (int, bool) {
	if s.consumerLink == nil || !s.connected.Load() {
		return 0, false
	}
	return s.consumerLink.Current()
}

// Redeclare asks Run to declare the exchange and the stream again, bind them, compare
// the stream's arguments, and attach again just after the last offset handled: what a
// gateway does when messages stopped coming though every connection is up (a binding
// deleted, a consumer the broker stopped serving). It does not wait.
func (s *Stream) Redeclare() {
	select {
	case s.redeclare <- struct{}{}:
	default:
	}
}

// errRedeclare ends a session on Redeclare's request.
var errRedeclare = errors.New("consumer: re-declaring the topology and attaching again, as asked")

// Run connects, declares the exchange and the stream, binds them, and dispatches the
// stream from StreamConfig.Start (the warm-up, until Ready) and every message published
// from then on, until ctx is cancelled. It returns an error only when the configuration
// is invalid or the first connect or declare fails (on every node of the list), so that
// a gateway fails fast at start with a clear message; after that it reconnects with
// backoff for as long as ctx lives, and returns nil once ctx is cancelled and the
// connections are closed. Run may be called once.
func (s *Stream) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("consumer: stream: Run called twice")
	}
	if s.cfgErr != nil {
		return s.cfgErr
	}
	defer s.consumerLink.Wait()
	defer s.closeReplays()
	ss, err := s.open(ctx, s.cfg.Start)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.attached = time.Now()
	s.setConnected(true)
	s.log.Info("consumer attached to stream; reading up to its head before it is ready",
		"offset", s.cfg.Start, "exchange", s.cfg.Exchange, "node", ss.Node()+1, "addr", ss.Addr())
	s.beginWarmUp(ctx)

	first := true
	_ = s.consumerLink.Keep(ctx, ss.Session, func(ctx context.Context) (*amqplink.Session, error) {
		from := s.resumeArg()
		ss, err := s.open(ctx, from)
		if err != nil {
			return nil, err
		}
		s.log.Info("consumer attached to stream again", "offset", from, "node", ss.Node()+1, "addr", ss.Addr())
		return ss.Session, nil
	}, func(*amqplink.Session) error {
		ss := s.next
		if !first {
			s.setConnected(true)
			if s.cfg.OnReconnect != nil {
				s.cfg.OnReconnect()
			}
			if !s.warm.done {
				s.warm.seen = time.Now() // give the new consumer its time to deliver
			}
		}
		first = false
		err := s.consume(ctx, ss)
		s.setConnected(false)
		if err != nil {
			err = fmt.Errorf("%w (last offset %d)", err, s.pos)
		}
		return err
	})
	s.log.Info("consumer stopped")
	return nil
}

// beginWarmUp finds the head of the stream after the first attach: the offset at which
// the stream's last chunk starts, which the consumer (attached at or before it) will
// reach. A consumer attached after ours sees no older head, so nothing the warm-up must
// read is missed. An empty stream gives no head within WarmUpWait.
func (s *Stream) beginWarmUp(ctx context.Context) {
	probe, cancel := context.WithTimeout(ctx, s.cfg.WarmUpWait)
	head, ok := s.Head(probe)
	cancel()
	now := time.Now()
	s.warm = warmUp{target: message.NoOffset, seen: now}
	if ok {
		s.warm.target = head
	} else {
		s.warm.reached = now // nothing to reach: over once no delivery comes for warmUpSettle
	}
	s.log.Debug("consumer warm-up: head of the stream", "head", s.warm.target, "found", ok)
}

// warmUpOver reports whether the warm-up may end now, no delivery being waiting: the head
// found at start was reached and either no delivery came since for warmUpSettle or it was
// reached warmUpSettleMax ago; or, short of the head, no delivery came for WarmUpWait.
func (s *Stream) warmUpOver(now time.Time) bool {
	w := &s.warm
	if !w.reached.IsZero() {
		return now.Sub(w.seen) >= warmUpSettle || now.Sub(w.reached) >= warmUpSettleMax
	}
	return now.Sub(w.seen) >= s.cfg.WarmUpWait
}

// warmUpHandled records a delivery handled during the warm-up.
func (s *Stream) warmUpHandled(now time.Time) {
	w := &s.warm
	w.n++
	w.seen = now
	if w.reached.IsZero() && s.pos != message.NoOffset && s.pos >= w.target {
		w.reached = now
	}
}

// endWarmUp reports where the stream stands (OnLogStart) and makes the Stream ready.
func (s *Stream) endWarmUp() {
	w := &s.warm
	w.done = true
	if s.cfg.OnLogStart != nil {
		s.cfg.OnLogStart(s.pos)
	}
	close(s.ready)
	took := time.Since(s.attached).Round(time.Millisecond)
	if w.reached.IsZero() {
		s.log.Warn("consumer warm-up ended short of the head found at start: no delivery came for a while",
			"newest_offset", s.pos, "head", w.target, "messages", w.n, "took", took)
		return
	}
	s.log.Info("consumer caught up with the stream; ready", "newest_offset", s.pos, "messages", w.n, "took", took)
}

// setConnected records whether a consumer is attached and reports a change.
func (s *Stream) setConnected(v bool) {
	if s.connected.Swap(v) != v && s.cfg.OnStateChange != nil {
		s.cfg.OnStateChange(v)
	}
}

// resumeArg is the x-stream-offset to attach at after a loss: just after the last
// delivery handled. Before any delivery there is no offset to resume from, and attaching
// at "last" again would lose what was published while the consumer was away: it attaches
// where the first attach did when Start was a place of its own (an offset, "first", a
// time); after "last", at the head found then (the warm-up's target), or at "first" when
// the stream was empty then, since all it holds came after. (RabbitMQ 3.10 attaches a
// time within the stream's last segment at its end, so a time is no place to resume at.)
func (s *Stream) resumeArg() any {
	switch {
	case s.pos != message.NoOffset:
		return s.pos + 1
	case s.cfg.Start != "last":
		return s.cfg.Start
	case s.warm.target != message.NoOffset:
		return s.warm.target
	default:
		return "first"
	}
}

// streamSession is one session of the consumer: its connection, channel and consumer of
// the stream. It is owned by Run's goroutine.
type streamSession struct {
	*amqplink.Session
	deliveries <-chan amqp.Delivery
	from       any // the x-stream-offset this session attached at
}

// open connects to the first node that answers and attaches a consumer at offset from
// ("first", "last", an int64 offset or a time.Time), after declaring the topology
// (declare). The whole setup is bounded by the link's CallTimeout, and cancelling ctx
// ends it at once. Run's goroutine: it sets s.next.
func (s *Stream) open(ctx context.Context, from any) (*streamSession, error) {
	c := s.cfg
	ss := &streamSession{from: from}
	compare := s.compare
	session, err := s.consumerLink.Open(ctx, func(as *amqplink.Session) (err error) {
		ss.Session = as
		as.NotifyCancel()
		if err := s.declare(as, compare); err != nil {
			return err
		}
		// A stream consumer must have a prefetch limit, set before it consumes.
		if err = as.Ch.Qos(c.Prefetch, 0, false); err != nil {
			return fmt.Errorf("consumer: set prefetch %d: %w", c.Prefetch, err)
		}
		ss.deliveries, err = as.Ch.Consume(c.Stream, "", false, false, false, false,
			amqp.Table{producer.HeaderStreamOffset: from})
		if err != nil {
			return fmt.Errorf("consumer: consume stream %q at %v: %w", c.Stream, from, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ss.Session = session
	s.compare = false
	s.next = ss
	return ss, nil
}

// consume reads the session's deliveries until the channel closes or ctx is done, then
// closes the session. It returns why the deliveries ended, or nil when ctx is done.
//
// Acks only return credit to the broker (a stream keeps its messages), so they are sent
// with multiple=true every Prefetch/2 deliveries, or as soon as no further delivery is
// waiting, and the unacked count never reaches Prefetch.
func (s *Stream) consume(ctx context.Context, ss *streamSession) error {
	defer ss.Close()
	acks := newBatchAcker(ss.Ch, s.cfg.Prefetch, s.log)
	expect := message.NoOffset // the first offset this session should deliver, when resuming at one
	if off, ok := ss.from.(int64); ok {
		expect = off
	}
	for {
		if ctx.Err() != nil {
			return nil
		}
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-ss.deliveries:
		default:
			acks.flush() // nothing is waiting: return the credit before blocking

			// During the warm-up, look again after a while whether it is over.
			var look *time.Timer
			var tick <-chan time.Time
			if !s.warm.done {
				if s.warmUpOver(time.Now()) {
					s.endWarmUp()
					continue
				}
				look = time.NewTimer(warmUpSettle / 2)
				tick = look.C
			}
			select {
			case d, ok = <-ss.deliveries:
			case <-tick:
				continue
			case <-s.redeclare:
				s.compare = true
				return errRedeclare
			case <-ctx.Done():
				return nil
			}
			if look != nil {
				look.Stop()
			}
		}
		if !ok {
			return ss.CloseReason("consumer")
		}
		if expect != message.NoOffset {
			// Offsets skip a number at each segment's start, so a later offset is not in
			// itself a loss; an oldest retained offset past the one asked for is.
			if off, has := streamDeliveryOffset(d); has && off > expect {
				probe, cancel := context.WithTimeout(ctx, 5*time.Second)
				oldest, known := s.Oldest(probe)
				cancel()
				if known && oldest > expect {
					s.log.Warn("consumer resumed past its position: messages left the stream's retention while it was away",
						"want_offset", expect, "got_offset", off)
				}
			}
			expect = message.NoOffset
		}
		s.handle(d)
		if !s.warm.done {
			s.warmUpHandled(time.Now())
		}
		acks.add(d.DeliveryTag)
	}
}

// handle decodes one delivery and dispatches it, unless it is at or before the position
// already handled (a stream can deliver again from the start of a chunk when a consumer
// attaches inside it), a control message (handed to OnControl) or cannot be decoded. It
// does not ack.
func (s *Stream) handle(d amqp.Delivery) {
	off, hasOff := streamDeliveryOffset(d)
	if hasOff {
		if s.pos != message.NoOffset && off <= s.pos {
			s.log.Debug("consumer skipped a delivery already handled", "offset", off, "position", s.pos)
			return
		}
		s.pos = off
		s.position.Store(off)
	}
	if kind, ok := d.Headers[producer.HeaderControl]; ok {
		if s.cfg.OnControl != nil {
			k, _ := kind.(string)
			s.cfg.OnControl(k, d.Body)
		}
		return
	}
	m, skipped, err := producer.Decode(d)
	for _, he := range skipped {
		s.badHeader(he)
		if ok, held := s.headerLogs.allow(); ok {
			s.log.Warn("consumer delivers a message without a header it cannot read",
				"offset", off, "id", m.ID, "err", he, "similar_lines_held", held)
		}
	}
	if err != nil {
		if he := (*producer.HeaderError)(nil); errors.As(err, &he) {
			s.badHeader(he)
		}
		if ok, held := s.dropLogs.allow(); ok {
			s.log.Warn("consumer dropped a delivery that cannot be delivered as a Herald message",
				"offset", off, "err", err, "similar_lines_held", held)
		}
		if s.cfg.OnDecodeError != nil {
			s.cfg.OnDecodeError(err)
		}
		return
	}
	s.d.Dispatch(m)
	if hasOff {
		s.last.Store(off)
	}
}

// badHeader reports a header that could not be read.
func (s *Stream) badHeader(he *producer.HeaderError) {
	if s.cfg.OnBadHeader != nil {
		s.cfg.OnBadHeader(he.Header)
	}
}

// streamDeliveryOffset returns the stream offset RabbitMQ puts on a delivery from a stream.
func streamDeliveryOffset(d amqp.Delivery) (int64, bool) {
	off, ok := d.Headers[producer.HeaderStreamOffset].(int64)
	return off, ok && off >= 0
}
