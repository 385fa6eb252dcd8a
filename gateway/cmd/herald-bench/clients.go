package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// sourceDialer dials TCP from 127.0.0.first .. 127.0.0.(first+n-1) in turn, so that many
// connections to one port do not exhaust one address's ephemeral ports.
type sourceDialer struct {
	addrs []*net.TCPAddr
	next  atomic.Uint64
	// rcvBuf, when positive, is the receive buffer asked for each socket (SO_RCVBUF).
	rcvBuf int
}

func newSourceDialer(first, n int) *sourceDialer {
	d := &sourceDialer{}
	for k := range max(n, 1) {
		d.addrs = append(d.addrs, &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(first+k))})
	}
	return d
}

func (d *sourceDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	k := d.next.Add(1)
	nd := net.Dialer{Timeout: 10 * time.Second, LocalAddr: d.addrs[k%uint64(len(d.addrs))]}
	if d.rcvBuf > 0 {
		size := d.rcvBuf
		nd.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
			})
			return errors.Join(err, serr)
		}
	}
	return nd.DialContext(ctx, network, addr)
}

// clientSet is the load's WebSocket clients: receivers that read every frame and record
// the latency of each message, and stalled clients that never read.
type clientSet struct {
	rec *recorder
	// ep, when not nil, reads the receivers' sockets (see epollReceivers); else each
	// receiver has a goroutine reading with gorilla's NextReader.
	ep *epollReceivers

	mu      sync.Mutex // protects conns, closes, stalled, stalledSSE
	conns   []*websocket.Conn
	closes  map[string]int // why receivers ended before the run did: close code or error
	stalled []*websocket.Conn
	// stalledSSE is the stalled clients' event streams (-transport sse).
	stalledSSE []net.Conn

	live atomic.Int64 // receivers reading now
	// dups counts the message events (SSE) whose id was not above the last id their
	// stream had: duplicates, or out of order. WebSocket frames are not checked.
	dups atomic.Int64
	wg   sync.WaitGroup
	done atomic.Bool // set when the run closes the clients: ends are not counted
}

func newClientSet(rec *recorder) *clientSet {
	return &clientSet{rec: rec, closes: map[string]int{}}
}

// wsDialer returns a lean WebSocket dialer: small buffers, write buffers pooled; with
// compress, it offers permessage-deflate.
func wsDialer(sd *sourceDialer, readBuf int, compress bool) *websocket.Dialer {
	return &websocket.Dialer{
		NetDialContext:    sd.DialContext,
		HandshakeTimeout:  10 * time.Second,
		ReadBufferSize:    readBuf,
		WriteBufferSize:   256,
		WriteBufferPool:   &sync.Pool{},
		EnableCompression: compress,
	}
}

// dialOne connects one client to wsURL and reads its welcome frame, which the gateway
// sends once the connection's subscriptions are in force.
func dialOne(ctx context.Context, d *websocket.Dialer, wsURL string) (*websocket.Conn, error) {
	ws, resp, err := d.DialContext(ctx, wsURL, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, r, err := ws.NextReader()
	if err == nil {
		var buf [512]byte
		_, err = io.ReadAtLeast(r, buf[:], 1)
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			err = nil
		}
	}
	if err != nil {
		_ = ws.Close()
		return nil, fmt.Errorf("waiting for welcome: %w", err)
	}
	_ = ws.SetReadDeadline(time.Time{})
	return ws, nil
}

// connectResult counts what connect made.
type connectResult struct {
	Made    int
	Failed  int
	Errors  map[string]int
	Elapsed time.Duration
}

// opener opens connection i and hands it over, or fails.
type opener func(ctx context.Context, i int) error

// wsOpener opens WebSocket connections to wsURL with d and hands each to onConn.
func wsOpener(d *websocket.Dialer, wsURL string, onConn func(i int, ws *websocket.Conn)) opener {
	return func(ctx context.Context, i int) error {
		ws, err := dialOne(ctx, d, wsURL)
		if err != nil {
			return err
		}
		onConn(i, ws)
		return nil
	}
}

// sseOpener opens event streams (GET path) on addr from sd and hands each to onConn with
// the stream's bytes read so far.
func sseOpener(sd *sourceDialer, addr, path string, onConn func(i int, conn net.Conn, stream []byte)) opener {
	return func(ctx context.Context, i int) error {
		conn, stream, err := dialSSE(ctx, sd, addr, path)
		if err != nil {
			return err
		}
		onConn(i, conn, stream)
		return nil
	}
}

// connect opens n connections with open, at most rate per second, with up to 128 opening
// at once (open is called from the opening goroutines). progress, when not nil, is called
// once a second with the count so far.
func connect(ctx context.Context, open opener, n, rate int, progress func(made, failed int)) connectResult {
	res := connectResult{Errors: map[string]int{}}
	start := time.Now()
	var mu sync.Mutex
	var made, failed atomic.Int64
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(128, max(n, 1)) {
		wg.Go(func() {
			for i := range jobs {
				if err := open(ctx, i); err != nil {
					failed.Add(1)
					mu.Lock()
					res.Errors[shortErr(err)]++
					mu.Unlock()
					continue
				}
				made.Add(1)
			}
		})
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	interval := time.Second / time.Duration(max(rate, 1))
	next := time.Now()
loop:
	for i := range n {
		if wait := time.Until(next); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				break loop
			}
		}
		next = next.Add(interval)
		select {
		case jobs <- i:
		case <-ctx.Done():
			break loop
		}
		select {
		case <-tick.C:
			if progress != nil {
				progress(int(made.Load()), int(failed.Load()))
			}
		default:
		}
	}
	close(jobs)
	wg.Wait()
	res.Made, res.Failed = int(made.Load()), int(failed.Load())
	res.Elapsed = time.Since(start)
	return res
}

// shortErr reduces an error to a label for counting.
func shortErr(err error) string {
	var ne *net.OpError
	if errors.As(err, &ne) && ne.Err != nil {
		return ne.Op + ": " + ne.Err.Error()
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// addReceiver hands ws to the epoll receivers, or starts a goroutine that reads it.
func (cs *clientSet) addReceiver(i int, ws *websocket.Conn) {
	if cs.ep != nil {
		if err := cs.ep.add(i, ws); err != nil {
			_ = ws.Close()
			cs.endedWhy("take over socket: " + err.Error())
		}
		return
	}
	cs.mu.Lock()
	cs.conns = append(cs.conns, ws)
	cs.mu.Unlock()
	cs.live.Add(1)
	cs.wg.Go(func() { cs.receive(i, ws) })
}

func (cs *clientSet) addStalled(_ int, ws *websocket.Conn) {
	cs.mu.Lock()
	cs.stalled = append(cs.stalled, ws)
	cs.mu.Unlock()
}

// addSSEReceiver hands an event stream to the epoll receivers, with what was read of it.
func (cs *clientSet) addSSEReceiver(i int, conn net.Conn, stream []byte) {
	if err := cs.ep.addSSE(i, conn, stream); err != nil {
		cs.endedWhy("take over stream: " + err.Error())
	}
}

func (cs *clientSet) addStalledSSE(_ int, conn net.Conn, _ []byte) {
	cs.mu.Lock()
	cs.stalledSSE = append(cs.stalledSSE, conn)
	cs.mu.Unlock()
}

// receive reads frames with one reused buffer and records the latency of each message
// from its send time, found by a scan for the key rather than by parsing JSON. Only the
// start of a long frame is kept: the key is near the start.
func (cs *clientSet) receive(i int, ws *websocket.Conn) {
	defer cs.live.Add(-1)
	buf := make([]byte, 1024)
	for {
		_, r, err := ws.NextReader()
		if err != nil {
			cs.ended(err)
			return
		}
		n := 0
		for {
			m, err := r.Read(buf[n:])
			n += m
			if err == io.EOF {
				break
			}
			if err != nil {
				cs.ended(err)
				return
			}
			if n == len(buf) {
				n = len(buf) / 2 // keep the start; read the rest over the second half
			}
		}
		if ts := scanTS(buf[:n]); ts > 0 {
			cs.rec.record(i, ts, time.Now())
		}
	}
}

func (cs *clientSet) ended(err error) {
	if cs.done.Load() {
		return
	}
	why := shortErr(err)
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		why = "close " + strconv.Itoa(ce.Code)
	}
	cs.endedWhy(why)
}

func (cs *clientSet) endedWhy(why string) {
	if cs.done.Load() {
		return
	}
	cs.mu.Lock()
	cs.closes[why]++
	cs.mu.Unlock()
}

// endedCounts returns why receivers ended before the run closed them.
func (cs *clientSet) endedCounts() map[string]int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make(map[string]int, len(cs.closes))
	for k, v := range cs.closes {
		out[k] = v
	}
	return out
}

// close closes every client and waits for the receivers to end, for at most wait.
func (cs *clientSet) close(wait time.Duration) {
	cs.done.Store(true)
	if cs.ep != nil {
		cs.ep.close()
	}
	cs.mu.Lock()
	all := append(cs.conns, cs.stalled...)
	streams := cs.stalledSSE
	cs.mu.Unlock()
	for _, ws := range all {
		_ = ws.Close()
	}
	for _, c := range streams {
		_ = c.Close()
	}
	ch := make(chan struct{})
	go func() { cs.wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(wait):
	}
}

// wsURL returns the /ws URL of target subscribing to channel.
func wsURL(target, channel string) string {
	u := url.URL{Scheme: "ws", Host: target, Path: "/ws"}
	if channel != "" {
		u.RawQuery = "channels=" + url.QueryEscape(channel)
	}
	return u.String()
}
