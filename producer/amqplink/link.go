package amqplink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/redact"
)

// Link is one of a process's AMQP links (the publisher's, the stream consumer's, the
// replays', ...): it dials the nodes of its list and remembers which node it is on, so
// that after a loss it starts with the next node and a failover is told apart from a
// reconnect to the same node. It holds one connection at a time as far as its hooks
// and failover logs go: the last one dialled.
//
// Its methods are safe for concurrent use; mu serialises the bookkeeping and the hooks.
type Link struct {
	cfg Config // defaults applied; read-only after NewLink
	log *slog.Logger

	// mu protects cur, next and last, and is held while the hooks are called, so that
	// their calls come in order.
	mu   sync.Mutex
	cur  *Conn // the connection last dialled, until it closes; nil while there is none
	next int   // index in URLs of the node the next dial starts with
	last int   // index of the node of the last connection; -1 before the first

	// closing counts the watcher goroutines (one per connection, until it closes).
	closing sync.WaitGroup
}

// NewLink returns a link with cfg, its zero fields set to their defaults, or the
// problems Validate finds in cfg. It does not connect.
func NewLink(cfg Config) (*Link, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("amqp %s: config: %w", cmpName(cfg.Link), err)
	}
	cfg = cfg.withDefaults()
	return &Link{cfg: cfg, log: cfg.Logger.With("link", cfg.Link), last: -1}, nil
}

func cmpName(link string) string {
	if link == "" {
		return "link"
	}
	return link
}

// Config returns the link's configuration, defaults applied.
func (l *Link) Config() Config { return l.cfg }

// Conn is one AMQP connection of a link to one node. Its amqp091 methods are safe for
// concurrent use; its owner (the goroutine that dialled it, or whoever it hands it to)
// closes it.
type Conn struct {
	*amqp.Connection
	link *Link
	node int      // index in the link's URLs
	raw  net.Conn // the TCP connection under Connection, for Guard
}

// Node returns the index in the link's URLs of the node c is connected to.
func (c *Conn) Node() int { return c.node }

// Addr returns the URL of c's node, redacted, for logs.
func (c *Conn) Addr() string { return redact.URL(c.link.cfg.URLs[c.node]) }

// Guard bounds what is called on c from now until the returned stop is called: when ctx
// ends, or the link's CallTimeout passes, first, it closes c's socket, which ends any
// call waiting on c at once (with an error) and the connection with it. stop waits for a
// close that has begun, so no goroutine outlives it.
func (c *Conn) Guard(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithTimeout(ctx, c.link.cfg.CallTimeout)
	stopClose := closeOnCancel(ctx, c.raw)
	return func() {
		stopClose()
		cancel()
	}
}

// Close closes the connection, waiting at most for closeTimeout for the node to answer
// the close handshake. Closing a closed connection is not an error.
func (c *Conn) Close() error {
	err := c.Connection.CloseDeadline(time.Now().Add(closeTimeout))
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}

// Dial connects to the first node that answers, trying each node of the list once, in
// order: from the node of the link's last connection, or the node after it when that
// connection was lost (and from the first node the first time). Cancelling ctx ends the
// attempt at once. The error, when no node answers, names each node (redacted) and why.
func (l *Link) Dial(ctx context.Context) (*Conn, error) {
	l.mu.Lock()
	start := l.next
	l.mu.Unlock()
	n := len(l.cfg.URLs)
	var errs []error
	for k := range n {
		i := (start + k) % n
		c, err := l.dialNode(ctx, i)
		if err == nil {
			if len(errs) > 0 {
				l.log.Warn("amqp link: nodes before this one did not answer", "node", i+1, "addr", c.Addr(), "err", errors.Join(errs...))
			}
			l.connected(c)
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("amqp %s: connect: %w", l.cfg.Link, ctx.Err())
		}
		errs = append(errs, err)
	}
	if n == 1 {
		return nil, fmt.Errorf("amqp %s: connect: %w", l.cfg.Link, errors.Unwrap(errs[0]))
	}
	return nil, fmt.Errorf("amqp %s: connect: no node of %d answers: %w", l.cfg.Link, n, errors.Join(errs...))
}

// nodeError is why one node did not answer.
type nodeError struct {
	node int
	addr string // redacted
	err  error
}

func (e *nodeError) Error() string {
	return "node " + strconv.Itoa(e.node+1) + " (" + e.addr + "): " + e.err.Error()
}
func (e *nodeError) Unwrap() error { return e.err }

// dialNode connects to node i: TCP, TLS for amqps://, the AMQP handshake, all within
// DialTimeout, and ended at once when ctx ends.
func (l *Link) dialNode(ctx context.Context, i int) (*Conn, error) {
	url := l.cfg.URLs[i]
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(l.cfg.Name)
	var tlsCfg *tls.Config
	if l.cfg.TLS != nil {
		// amqp091 sets the server name on the configuration it is given: a copy per dial,
		// so that each node's name is checked.
		tlsCfg = l.cfg.TLS.Clone()
	}
	var raw net.Conn
	stop := func() {}
	timeout := l.cfg.DialTimeout
	conn, err := amqp.DialConfig(url, amqp.Config{
		Properties:      props,
		Heartbeat:       l.cfg.Heartbeat,
		TLSClientConfig: tlsCfg,
		// Dial is called by DialConfig on this goroutine.
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Bounds the TLS and AMQP handshakes too; amqp091 clears it once they are done.
			if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
				_ = c.Close()
				return nil, err
			}
			raw = c
			stop = closeOnCancel(ctx, c)
			return c, nil
		},
	})
	stop()
	if err != nil {
		return nil, &nodeError{node: i, addr: redact.URL(url), err: redact.Error(err, url)}
	}
	return &Conn{Connection: conn, link: l, node: i, raw: raw}, nil
}

// connected records c as the link's connection, reports it to the hooks, logs a
// failover, and starts the goroutine that records its end.
func (l *Link) connected(c *Conn) {
	closed := c.NotifyClose(make(chan *amqp.Error, 1))
	l.mu.Lock()
	from := l.last
	l.cur, l.last, l.next = c, c.node, c.node
	if l.cfg.OnNode != nil {
		l.cfg.OnNode(l.cfg.Link, c.node)
	}
	if from >= 0 && from != c.node {
		l.log.Warn("amqp link failed over to another node", "from", redact.URL(l.cfg.URLs[from]), "to", c.Addr(),
			"from_node", from+1, "to_node", c.node+1)
		if l.cfg.OnFailover != nil {
			l.cfg.OnFailover(l.cfg.Link, from, c.node)
		}
	}
	l.mu.Unlock()
	l.closing.Add(1)
	go func() {
		defer l.closing.Done()
		for range closed { // amqp091 sends the reason, if any, then closes it
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.cur != c {
			return // another connection was dialled meanwhile
		}
		l.cur = nil
		l.next = (c.node + 1) % len(l.cfg.URLs)
		if l.cfg.OnNode != nil {
			l.cfg.OnNode(l.cfg.Link, -1)
		}
	}()
}

// Wait waits until the goroutines that watch the link's connections have ended: call it
// after closing every connection of the link, so that none outlives its owner.
func (l *Link) Wait() { l.closing.Wait() }

// Current returns the index of the node the link is connected to, and false while it
// has no connection.
func (l *Link) Current() (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil {
		return 0, false
	}
	return l.cur.node, true
}

// closeOnCancel closes c when ctx is done, until the returned stop is called. stop waits
// for a close that has already begun, so no goroutine outlives it.
func closeOnCancel(ctx context.Context, c net.Conn) (stop func()) {
	if c == nil {
		return func() {}
	}
	done := make(chan struct{})
	stopFunc := context.AfterFunc(ctx, func() {
		_ = c.Close()
		close(done)
	})
	return func() {
		if !stopFunc() {
			<-done
		}
	}
}
