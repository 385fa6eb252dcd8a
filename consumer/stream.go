package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer"
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
	streamMaxPrefetch     = 65535       // basic.qos carries the count in 16 bits
	streamAttachSkewGuard = time.Second // see Stream.resumeArg

	// The warm-up is over once the head found at start is reached and no delivery has
	// come for warmUpSettle (the rest of the head's chunk is on its way), or at most
	// warmUpSettleMax after the head was reached (publishers that never pause).
	warmUpSettle    = 100 * time.Millisecond
	warmUpSettleMax = time.Second
)

// StreamConfig configures a Stream. Every gateway that consumes the same stream must use
// the same Exchange, Stream, MaxAge, MaxBytes and SegmentBytes: RabbitMQ refuses to declare
// a queue again with different arguments (PRECONDITION_FAILED), and Run reports that.
type StreamConfig struct {
	// URL is the broker's AMQP URI, e.g. amqp://user:pass@host:5672/vhost. Required.
	URL string
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
	// Each failed attempt doubles the ceiling up to ReconnectMax, and each delay is drawn
	// uniformly between zero and the ceiling (exponential backoff with full jitter).
	ReconnectMin time.Duration
	// ReconnectMax is the largest delay ceiling between reconnect attempts; 10s when zero.
	ReconnectMax time.Duration
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
	c.ReconnectMin, c.ReconnectMax = reconnectDefaults(c.ReconnectMin, c.ReconnectMax)
	return c
}

// validate reports the first field of a defaulted config that Run cannot work with.
func (c StreamConfig) validate() error {
	switch {
	case c.URL == "":
		return errors.New("consumer: stream config: URL is required")
	case c.MaxAge < 0:
		return fmt.Errorf("consumer: stream config: MaxAge %v is negative", c.MaxAge)
	case c.MaxBytes < 0:
		return fmt.Errorf("consumer: stream config: MaxBytes %d is negative", c.MaxBytes)
	case c.SegmentBytes < 0:
		return fmt.Errorf("consumer: stream config: SegmentBytes %d is negative", c.SegmentBytes)
	case c.Prefetch < 1 || c.Prefetch > streamMaxPrefetch:
		return fmt.Errorf("consumer: stream config: Prefetch %d is outside 1..%d", c.Prefetch, streamMaxPrefetch)
	case c.ReconnectMin < 0:
		return fmt.Errorf("consumer: stream config: ReconnectMin %v is negative", c.ReconnectMin)
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
		"x-queue-type":       "stream",
		"x-max-age":          streamMaxAgeArg(c.MaxAge),
		"x-max-length-bytes": c.MaxBytes,
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
// stream offset, and reconnects on its own: after a connection loss or a broker restart it
// attaches again just after the last offset it received, so nothing within retention is
// lost or dispatched twice.
//
// At start it attaches a little back (StreamConfig.Start: the stream's last chunk) and
// dispatches what it reads up to the stream's head before it is Ready: a warm-up, after
// which the newest offset in the stream is known (OnLogStart), so that the first welcome
// frames can carry it.
//
// Run does all the work on the caller's goroutine: it owns the connection, the channel
// and the position in the stream, and it is the only goroutine that calls Dispatch and
// the config's callbacks. Connected, LastOffset, Ready, Replay, Head, Oldest and
// ProbeHeaders are safe to call from any goroutine.
type Stream struct {
	cfg   StreamConfig // defaults applied; read-only after NewStream
	d     Dispatcher
	log   *slog.Logger
	ready chan struct{} // closed by Run when the warm-up is over

	started   atomic.Bool  // set by the first call of Run
	connected atomic.Bool  // whether a consumer is attached now
	last      atomic.Int64 // offset of the last message dispatched; message.NoOffset before one

	// replaySlots has a place for each replay running (see Replay); replayMu protects
	// replayConn, the connection replays share.
	replaySlots chan struct{}
	replayMu    sync.Mutex
	replayConn  *amqp.Connection

	// probeHook, set by tests only, is called by ProbeHeaders once the probe's stream is
	// declared.
	probeHook func(ctx context.Context, stream string)

	// Owned by Run's goroutine.
	pos        int64     // offset of the last delivery handled (dispatched, dropped or skipped); NoOffset before one
	attached   time.Time // when the first consumer was attached (at Start)
	warm       warmUp
	headerLogs logSampler
	dropLogs   logSampler
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
// connect; zero fields of cfg take the defaults documented on StreamConfig.
func NewStream(cfg StreamConfig, d Dispatcher) *Stream {
	cfg = cfg.withDefaults()
	s := &Stream{
		cfg:   cfg,
		d:     d,
		log:   cfg.Logger.With("component", "consumer", "stream", cfg.Stream),
		ready: make(chan struct{}),
		pos:   message.NoOffset,

		replaySlots: make(chan struct{}, maxReplays),
	}
	s.last.Store(message.NoOffset)
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

// Run connects, declares the exchange and the stream, binds them, and dispatches the
// stream from StreamConfig.Start (the warm-up, until Ready) and every message published
// from then on, until ctx is cancelled. It returns an error only when the configuration
// is invalid or the first connect or declare fails, so that a gateway fails fast at start
// with a clear message; after that it reconnects with backoff for as long as ctx lives, and
// returns nil once ctx is cancelled and the channel and connection are closed. Run may be
// called once.
func (s *Stream) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("consumer: stream: Run called twice")
	}
	if err := s.cfg.validate(); err != nil {
		return err
	}
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
		"offset", s.cfg.Start, "exchange", s.cfg.Exchange)
	s.beginWarmUp(ctx)

	resumed := false
	for {
		s.setConnected(true) // already true after the first attach
		if resumed && s.cfg.OnReconnect != nil {
			s.cfg.OnReconnect()
		}
		if resumed && !s.warm.done {
			s.warm.seen = time.Now() // give the new consumer its time to deliver
		}
		err := s.consume(ctx, ss)
		s.setConnected(false)
		if ctx.Err() != nil {
			s.log.Info("consumer stopped")
			return nil
		}
		s.log.Warn("consumer lost the stream; reconnecting", "err", err, "last_offset", s.pos)
		if ss, err = s.reconnect(ctx); err != nil {
			return nil // ctx is done
		}
		resumed = true
	}
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

// reconnect opens sessions with backoff until one is attached, resuming after the last
// delivery handled. It returns an error only when ctx is done.
func (s *Stream) reconnect(ctx context.Context) (*streamSession, error) {
	for attempt := 0; ; attempt++ {
		t := time.NewTimer(backoff(attempt, s.cfg.ReconnectMin, s.cfg.ReconnectMax))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		from := s.resumeArg()
		ss, err := s.open(ctx, from)
		if err == nil {
			s.log.Info("consumer attached to stream again", "offset", from, "attempt", attempt+1)
			return ss, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.log.Warn("consumer reconnect failed", "err", err, "attempt", attempt+1)
	}
}

// resumeArg is the x-stream-offset to attach at after a loss: just after the last
// delivery handled. Before any delivery there is no offset to resume from, and attaching
// at "next" would lose what was published while the consumer was away:
//   - started at an offset, or at "first": attach there again, which is exact;
//   - started at "last" on a stream the warm-up found empty: every message in the stream
//     now came after the first attach, so "first" is exact too;
//   - otherwise (a time): attach at the time of the first attach, less a guard for clock
//     skew. RabbitMQ 3.10 takes a time in whole seconds and, measured here, finds nothing
//     for a time less than about two seconds before the stream was declared, so this is
//     the fallback, not the rule.
func (s *Stream) resumeArg() any {
	if s.pos != message.NoOffset {
		return s.pos + 1
	}
	switch start := s.cfg.Start.(type) {
	case int64:
		return start
	case string:
		if start == "first" || start == "last" && s.warm.target == message.NoOffset {
			return "first"
		}
	}
	return s.attached.Add(-streamAttachSkewGuard)
}

// streamSession is one connection, channel and consumer of the stream. It is owned by
// Run's goroutine.
type streamSession struct {
	amqpSession
	deliveries <-chan amqp.Delivery
	from       any // the x-stream-offset this session attached at
}

// open connects and attaches a consumer at offset from ("next", an int64 offset or a
// time.Time). Until the consumer is attached, cancelling ctx closes the socket, which
// ends any handshake or RPC at once.
func (s *Stream) open(ctx context.Context, from any) (*streamSession, error) {
	ss := &streamSession{from: from}
	c := s.cfg
	err := ss.dial(ctx, c.URL, c.Name, "consumer", func() (err error) {
		ss.notifyCancel()
		if err = ss.ch.ExchangeDeclare(c.Exchange, "fanout", true, false, false, false, nil); err != nil {
			return fmt.Errorf("consumer: declare exchange %q: %w", c.Exchange, err)
		}
		if _, err = ss.ch.QueueDeclare(c.Stream, true, false, false, false, c.queueArgs()); err != nil {
			return fmt.Errorf("consumer: declare stream %q: %w", c.Stream, err)
		}
		if err = ss.ch.QueueBind(c.Stream, "", c.Exchange, false, nil); err != nil {
			return fmt.Errorf("consumer: bind stream %q to exchange %q: %w", c.Stream, c.Exchange, err)
		}
		// A stream consumer must have a prefetch limit, set before it consumes.
		if err = ss.ch.Qos(c.Prefetch, 0, false); err != nil {
			return fmt.Errorf("consumer: set prefetch %d: %w", c.Prefetch, err)
		}
		ss.deliveries, err = ss.ch.Consume(c.Stream, "", false, false, false, false,
			amqp.Table{producer.HeaderStreamOffset: from})
		if err != nil {
			return fmt.Errorf("consumer: consume stream %q at %v: %w", c.Stream, from, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ss, nil
}

// consume reads the session's deliveries until the channel closes or ctx is done, then
// closes the session. It returns why the deliveries ended, or nil when ctx is done.
//
// Acks only return credit to the broker (a stream keeps its messages), so they are sent
// with multiple=true every Prefetch/2 deliveries, or as soon as no further delivery is
// waiting, and the unacked count never reaches Prefetch.
func (s *Stream) consume(ctx context.Context, ss *streamSession) error {
	defer ss.close()
	acks := newBatchAcker(ss.ch, s.cfg.Prefetch, s.log)
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
			case <-ctx.Done():
				return nil
			}
			if look != nil {
				look.Stop()
			}
		}
		if !ok {
			return ss.closeReason("consumer")
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
// attaches inside it) or cannot be decoded. It does not ack.
func (s *Stream) handle(d amqp.Delivery) {
	off, hasOff := streamDeliveryOffset(d)
	if hasOff {
		if s.pos != message.NoOffset && off <= s.pos {
			s.log.Debug("consumer skipped a delivery already handled", "offset", off, "position", s.pos)
			return
		}
		s.pos = off
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
