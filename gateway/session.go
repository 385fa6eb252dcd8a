package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/gateway/internal/edge"
	"github.com/heraldgw/herald/gateway/internal/logsample"
	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/gateway/internal/writer"
	"github.com/heraldgw/herald/gateway/internal/wstransport"
	"github.com/heraldgw/herald/producer/message"
)

// transport is how a session reaches its client: a WebSocket connection
// (internal/wstransport) today; a second transport (Server-Sent Events) would be another.
// The session's frames do not pass through it: they go to the session's write queue,
// whose writer writes them to the transport's socket, in the encoding the transport
// chose.
type transport interface {
	// Start begins the transport's own work (WebSocket: the read pump): called once, after
	// the session has queued its first frame.
	Start()
	// ExtendRead keeps the transport's read deadline moving while the session's work
	// holds the goroutine that reads (a replay on the read pump).
	ExtendRead()
	// SendClose ends the transport after the queue's last frame (WebSocket: the close
	// frame, then the socket's sending side shut). Called once, by the session's writer.
	SendClose(code int, text string)
	// Stop stops what the transport runs besides the socket (its timers), once the
	// session is finished.
	Stop()
}

// What a session is to the other parts, checked by the compiler.
var (
	_ transport           = (*wstransport.Conn)(nil)
	_ wstransport.Session = (*session)(nil)
	_ writer.Owner        = (*session)(nil)
	_ member              = (*session)(nil)
)

// sessionDeps is what the sessions of a Server share: its configuration and services,
// set by NewServer and read-only after (the parts are safe for concurrent use). A session
// reaches nothing else of the Server.
type sessionDeps struct {
	nodeID         string
	limits         *Limits
	disablePublish bool
	publishTimeout time.Duration
	pingInterval   time.Duration
	historyMax     int

	logger   *slog.Logger
	metrics  *Metrics
	hub      *Hub
	presence *Presence // nil: off
	writer   *writer.Writer
	resume   *resumer
	pub      publisher
	auth     *edge.Authenticator
	// refusals writes the log lines of refusals and of closes for abuse, sampled by
	// reason: clients can repeat those at will.
	refusals *logsample.Sampler
	conns    connSet // the sessions open now, for Shutdown
}

// session is one client's session: who it is and what it may do, its subscriptions (in
// the hub), its write queue, and one handler per op of the protocol (docs/PROTOCOL.md
// section 5), in the reference's order. Its transport reads the client's messages and
// calls Handle, from one goroutine at a time (the read pump); everyone else, the hub's
// fan-out included, hands frames to its queue, which never blocks.
type session struct {
	// Queue is the session's write queue and its writer's state. First, so that the
	// hub's Enqueue, a method promoted from it, is reached with no offset to add.
	writer.Queue

	id   string
	user string
	log  *slog.Logger
	deps *sessionDeps
	t    transport
	// edge is the session's identity, permissions and frame rate; set before its
	// transport starts, then owned by the read pump.
	edge  *edge.Conn
	ended atomic.Bool // End has run
	// kind is the session's transport, as the metrics label it.
	kind metrics.Transport
}

// newSession returns the session of user over transport t, whose socket sock its queue
// writes to in the encoding enc.
func newSession(d *sessionDeps, user string, t transport, sock *writer.Socket, enc wire.Encoding) *session {
	id := message.NewID()[:16]
	c := &session{id: id, user: user, log: d.logger.With("conn", id), deps: d, t: t}
	c.Queue.Init(d.writer, sock, enc, c)
	if enc.Events {
		c.kind = metrics.TransportSSE
	}
	return c
}

// ID names the session in logs and in its welcome frame.
func (c *session) ID() string { return c.id }

// User is the session's user; empty when anonymous.
func (c *session) User() string { return c.user }

// Log is the session's logger: its lines name the connection.
func (c *session) Log() *slog.Logger { return c.log }

// welcome queues the welcome frame, the session's first: newest is the newest offset
// dispatched, when known, where live delivery starts.
func (c *session) welcome(newest int64, known bool) {
	wf := welcomeFrame{Op: "welcome", Conn: c.id, Node: c.deps.nodeID, User: c.user}
	if known {
		wf.Offset = &newest
	}
	c.Enqueue(wire.Reply(wf))
}

// Handle answers one client frame (wstransport.Session). A frame over the connection's
// rate is answered with error rate_limited and not acted on. A panic here is recovered,
// and closes only this connection, with 1011.
func (c *session) Handle(data []byte) {
	defer c.recoverPanic()
	if ok, tooLong := c.edge.AllowFrame(); !ok {
		c.rateLimited(data, tooLong)
		return
	}
	r, perr := decodeRequest(data)
	if perr != nil {
		c.replyError(perr.code, perr.msg, r.Ref)
		return
	}
	switch r.Op {
	case "subscribe":
		c.subscribe(r)
	case "unsubscribe":
		c.unsubscribe(r)
	case "publish":
		c.publish(r)
	case "refresh":
		c.refresh(r)
	case "presence":
		c.presence(r)
	}
}

// subscribe subscribes the session to a channel, answered with subscribed before the
// channel's first message; with since, the channel's messages after since are replayed
// first.
func (c *session) subscribe(r request) {
	ch := *r.Channel
	if perr := c.mayJoin(ch); perr != nil {
		c.replyError(perr.code, perr.msg, r.Ref)
		return
	}
	watch := r.Presence && c.deps.presence.Enabled(ch)
	answer := func() {
		c.Enqueue(wire.Reply(replyFrame{Op: "subscribed", Channel: ch, Ref: r.Ref, Presence: watch}))
	}
	if r.History > 0 {
		c.subscribeWithHistory(ch, watch, r)
		return
	}
	if r.Since == nil {
		c.deps.hub.subscribe(c, ch, watch, answer)
		return
	}
	// Replay the channel from since, then subscribe live: until then c is not
	// subscribed (the replay reads what live delivery would have sent).
	c.deps.hub.unsubscribe(c, ch, answer)
	c.deps.resume.channel(c, ch, *r.Since, watch)
}

// subscribeWithHistory subscribes the session to ch and, under the hub's lock (nothing
// is dispatched in between), queues subscribed and then the channel's newest r.History
// messages held in the tail (at most HistoryMax), what the session may see of them: no
// gap and no duplicate between them and live delivery.
func (c *session) subscribeWithHistory(ch string, watch bool, r request) {
	n := min(r.History, c.deps.historyMax)
	c.deps.hub.subscribeWithHistory(c, ch, watch, n, func(users []string) bool {
		return len(users) == 0 || c.user != "" && slices.Contains(users, c.user)
	}, func(held []*wire.Frame, complete bool) {
		k := len(held)
		c.Enqueue(wire.Reply(replyFrame{Op: "subscribed", Channel: ch, Ref: r.Ref, Presence: watch, History: &k, Complete: &complete}))
		for _, f := range held {
			c.EnqueueHistory(f)
		}
	})
}

// mayJoin checks a subscribe to ch against the connection's permissions and its
// subscription limit.
func (c *session) mayJoin(ch string) *protocolError {
	if !c.edge.MaySubscribe(ch) {
		return &protocolError{code: CodeForbidden, msg: notPermitted("subscribe to", ch)}
	}
	if max := c.deps.limits.MaxSubscriptions; max > 0 {
		if n, has := c.deps.hub.subscriptionCount(c, ch); !has && n >= max {
			c.deps.metrics.LimitHit(metrics.LimitSubscriptions)
			return &protocolError{code: CodeTooLarge, msg: fmt.Sprintf("too many subscriptions: at most %d per connection; unsubscribe from one first", max)}
		}
	}
	return nil
}

// unsubscribe drops a subscription, answered with unsubscribed after the channel's last
// message.
func (c *session) unsubscribe(r request) {
	ch := *r.Channel
	c.deps.hub.unsubscribe(c, ch, func() {
		c.Enqueue(wire.Reply(replyFrame{Op: "unsubscribed", Channel: ch, Ref: r.Ref}))
	})
}

// publish puts a client's message on the bus and answers ack, or error when the bus did
// not take it.
func (c *session) publish(r request) {
	if c.deps.disablePublish {
		c.replyError(CodeForbidden, "clients may not publish on this gateway", r.Ref)
		return
	}
	m := message.Message{ID: r.ID, From: c.user, Data: r.Data, Source: metrics.SourceWS}
	if r.Channel != nil {
		m.Channel = *r.Channel
	}
	if !c.edge.MayPublish(m.Channel) {
		c.replyError(CodeForbidden, notPermitted("publish to", m.Channel), r.Ref)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.deps.publishTimeout)
	id, err := c.deps.pub.publish(ctx, m)
	cancel()
	if err != nil {
		if isInvalid(err) {
			c.replyError(CodeBadRequest, err.Error(), r.Ref)
			return
		}
		c.deps.metrics.PublishFailed(metrics.SourceWS)
		c.log.Warn("client publish failed", "err", err)
		c.replyError(CodeUnavailable, "the bus cannot take messages now; retry", r.Ref)
		return
	}
	c.deps.metrics.Published(metrics.SourceWS)
	c.Enqueue(wire.Reply(replyFrame{Op: "ack", Ref: r.Ref, ID: id}))
}

// isInvalid reports whether a publish failed because the message itself is invalid.
func isInvalid(err error) bool {
	return errors.Is(err, message.ErrBadChannel) || errors.Is(err, message.ErrNoData) ||
		errors.Is(err, message.ErrBadData) || errors.Is(err, message.ErrBadUser) || errors.Is(err, message.ErrBadID)
}

// refresh answers a refresh op: a fresh token for the connection's user replaces the
// one it connected with (its expiry and its permissions). Subscriptions the new token
// no longer permits are dropped, each with an unsubscribed frame without ref.
func (c *session) refresh(r request) {
	a := c.deps.auth
	if !a.Enabled() || c.edge == nil {
		// Tokens are not used on this gateway (as at connect, the token is ignored).
		c.deps.metrics.TokenRefreshed(true)
		c.Enqueue(wire.Reply(refreshedFrame{Op: "refreshed", Ref: r.Ref}))
		return
	}
	id, terr := a.Verify(r.Token)
	if terr == nil && id.User != c.user {
		terr = &edge.TokenError{Reason: edge.RefusedTokenInvalid, Err: fmt.Errorf("the token is for user %q, the connection for %q", id.User, c.user)}
	}
	if terr != nil {
		c.deps.metrics.TokenRefreshed(false)
		c.deps.refusals.Log(slog.LevelInfo, logRefresh, "refresh refused", "conn", c.id, "user", logsample.Clip(c.user),
			"why", terr.Reason, "err", logsample.ClipErr(terr.Err))
		c.replyError(CodeForbidden, "token refused: "+terr.Err.Error(), r.Ref)
		return
	}
	c.edge.SetIdentity(id)
	c.edge.ArmExpiry(a.Leeway(), c.tokenExpired)
	for _, ch := range c.deps.hub.subscriptionsOf(c) {
		if !id.Subscribe.Allows(ch) {
			c.deps.hub.unsubscribe(c, ch, func() {
				c.Enqueue(wire.Reply(replyFrame{Op: "unsubscribed", Channel: ch}))
			})
		}
	}
	c.deps.metrics.TokenRefreshed(true)
	c.Enqueue(wire.Reply(refreshedFrame{Op: "refreshed", Ref: r.Ref, Exp: id.Expires.Unix()}))
}

// tokenExpired closes the session with 1008 when its token expires: the token's timer
// calls it (edge.Conn.ArmExpiry), from the timer's goroutine.
func (c *session) tokenExpired() {
	c.deps.metrics.TokenExpired()
	c.log.Info("token expired: closing", "user", logsample.Clip(c.user))
	c.RequestClose(wire.ClosePolicyViolation, "token expired", false)
}

// presence answers a client's presence op with a page of the channel's users, or
// error forbidden where the channel has no presence or the client may not subscribe to it.
func (c *session) presence(r request) {
	ch := *r.Channel
	p := c.deps.presence
	switch {
	case !p.Enabled(ch):
		c.replyError(CodeForbidden, fmt.Sprintf("presence is off for %q on this gateway", ch), r.Ref)
		return
	case !c.edge.MaySubscribe(ch):
		c.replyError(CodeForbidden, notPermitted("see who is on", ch), r.Ref)
		return
	}
	limit := 0
	if r.Limit != nil {
		limit = *r.Limit
	}
	c.Enqueue(wire.Reply(presenceFrame{Op: "presence", Ref: r.Ref, ChannelPresence: p.Channel(ch, r.After, limit)}))
}

// notPermitted is the message of a forbidden error for an op on channel ("" for all).
func notPermitted(what, channel string) string {
	if channel == "" {
		return "your token does not permit you to " + what + " every connection"
	}
	return fmt.Sprintf("your token does not permit you to %s %q", what, channel)
}

// replyError answers an op with an error frame, and counts it.
func (c *session) replyError(code, msg, ref string) {
	c.deps.metrics.ClientError(code)
	c.Enqueue(wire.Reply(errorFrame{Op: "error", Code: code, Message: msg, Ref: ref}))
}

// rateLimited answers a frame over the connection's rate: error rate_limited, or when
// that has gone on too long, close 4029.
func (c *session) rateLimited(data []byte, tooLong bool) {
	if tooLong {
		c.deps.metrics.LimitHit(metrics.LimitRateClosed)
		c.deps.refusals.Log(slog.LevelInfo, logRateClosed, "closing: rate limited too long", "conn", c.id, "user", logsample.Clip(c.user))
		c.RequestClose(CloseRateLimited, "rate limited too long", true) // flush: the client sees its answers, then why
		return
	}
	c.deps.metrics.LimitHit(metrics.LimitMessageRate)
	var ref struct {
		Ref string `json:"ref"`
	}
	_ = json.Unmarshal(data, &ref) // best effort, to echo it
	c.replyError(CodeRateLimited, fmt.Sprintf("more than %g frames a second; slow down", c.deps.limits.MessageRate), ref.Ref)
}

// enqueueReplay queues a replayed frame at the client's pace (writer.Queue.EnqueueReplay);
// while it waits for room, the transport's read deadline keeps moving: the read pump may
// be the one replaying.
func (c *session) enqueueReplay(f *wire.Frame) bool {
	return c.EnqueueReplay(f, c.deps.pingInterval, c.t.ExtendRead)
}

// SendClose has the transport send its close after the queue's last frame (writer.Owner).
func (c *session) SendClose(code int, text string) { c.t.SendClose(code, text) }

// Overflowed logs a slow consumer's close (writer.Owner).
func (c *session) Overflowed(dropped int) {
	c.log.Info("slow consumer closed", "user", logsample.Clip(c.user), "dropped", dropped)
}

// WriteFailed logs a failed write (writer.Owner).
func (c *session) WriteFailed(err error) { c.log.Debug("write failed", "err", err) }

// Panicked counts and logs a panic recovered while serving the session: in its writer
// (writer.Owner), its read pump, a replay, or an op. It is the one place that does; the
// goroutine that recovered then ends what the panic interrupted.
func (c *session) Panicked(v any) {
	c.deps.metrics.Panicked()
	c.log.Error("panic while serving a connection; closing it", "panic", v, "stack", string(debug.Stack()))
}

// recoverPanic, deferred by Handle, turns a panic while answering an op into the end of
// this connection only: counted, logged, and closed with 1011.
func (c *session) recoverPanic() {
	v := recover()
	if v == nil {
		return
	}
	c.Panicked(v)
	c.RequestClose(wire.CloseInternalError, "internal error", false)
}

// Recovered ends the session after a panic recovered in a goroutine that ends it when it
// ends (the read pump, a replay at connect): counted, logged, marked closing with 1011,
// and ended (wstransport.Session).
func (c *session) Recovered(v any) {
	c.Panicked(v)
	c.Abort(wire.CloseInternalError, "internal error")
	c.End()
}

// ReadEnded lets go of what the session holds for a live client, its token's timer and
// its connection slots, as soon as reading ends (wstransport.Session).
func (c *session) ReadEnded() { c.edge.Stop() }

// End ends the session, once: it leaves the hub, finishes the write queue (what is still
// queued is dropped, the socket closed, the writer ended), stops the transport's timers
// and lets Shutdown know (wstransport.Session).
func (c *session) End() {
	if !c.ended.CompareAndSwap(false, true) {
		return
	}
	c.deps.hub.leave(c)
	code := c.Queue.Finish()
	c.t.Stop()
	c.deps.metrics.Closed(code, c.kind)
	c.log.Debug("connection finished", "code", code)
	c.deps.conns.untrack(c) // last: Shutdown may return once every session is untracked
}
