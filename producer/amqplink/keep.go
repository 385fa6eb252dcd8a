package amqplink

import (
	"context"
	"time"
)

// stableAfter is how long a session must have lived for the backoff to start over after
// it is lost: a node that accepts sessions and drops them at once is not retried in a
// tight loop.
const stableAfter = 2 * time.Second

// Keep is the reconnect loop of every link. It calls serve with s, which uses the
// session until it is lost (or its user wants a new one: serve returns, saying why), then
// closes s and opens another with open, and so on until ctx ends. When s is nil it opens
// one first. Open starts from the node after the one just lost (see Dial), so a failover
// to another node of the cluster comes within the first round of attempts.
//
// Before each round of attempts it waits Backoff(n, ReconnectMin, ReconnectMax), n
// counting the failed rounds since the last session that lived at least stableAfter (so
// the first round after a loss comes within ReconnectMin, with jitter). Each loss and
// failed attempt is logged with its error, each reconnect with the time it took.
//
// Keep returns nil once ctx has ended and the last session is closed, or, at once, an
// error of open that was marked Permanent. open and serve run on Keep's goroutine.
func (l *Link) Keep(ctx context.Context, s *Session, open func(context.Context) (*Session, error), serve func(*Session) error) error {
	n := 0 // failed rounds since the last stable session
	for {
		if s == nil {
			var err error
			if s, err = l.reopen(ctx, open, &n, time.Time{}); err != nil {
				return err
			}
			if s == nil {
				return nil // ctx ended
			}
		}
		began := time.Now()
		err := serve(s)
		s.Close()
		s = nil
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(began) >= stableAfter {
			n = 0
		}
		l.log.Warn("amqp link lost; reconnecting", "err", err)
		if s, err = l.reopen(ctx, open, &n, time.Now()); err != nil {
			return err
		}
		if s == nil {
			return nil
		}
	}
}

// reopen opens a session with open, waiting Backoff before each attempt (none before
// the first one when lost is zero: the link never had a session), until one opens (it
// returns it), ctx ends (nil, nil) or open fails for good (nil and the error).
func (l *Link) reopen(ctx context.Context, open func(context.Context) (*Session, error), n *int, lost time.Time) (*Session, error) {
	for attempt := 0; ; attempt++ {
		if !lost.IsZero() || attempt > 0 {
			t := time.NewTimer(Backoff(*n, l.cfg.ReconnectMin, l.cfg.ReconnectMax))
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, nil
			case <-t.C:
			}
		}
		s, err := open(ctx)
		if err == nil {
			if !lost.IsZero() {
				l.log.Info("amqp link reconnected", "node", s.node+1, "addr", s.Addr(),
					"attempts", attempt+1, "down", time.Since(lost).Round(time.Millisecond))
			}
			return s, nil
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		if IsPermanent(err) {
			return nil, err
		}
		*n++
		l.log.Warn("amqp link: connect failed; retrying", "attempt", attempt+1, "err", err)
	}
}
