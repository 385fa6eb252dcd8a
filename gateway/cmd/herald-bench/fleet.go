package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// A fleet is the clients of a drain or rolling scenario in one process: WebSocket clients
// that, like herald.js, reconnect when their connection ends, to another gateway, with
// since set to the last offset they saw, and that account for every message they get:
// which of their channel's messages came, once or more, in the bus's order or not, how
// long from a close to the gateway's `resumed`, and each delivery's latency by second.
//
// A client's socket is read by one of a few epoll loops (as the run scenario's receivers
// are, so that thousands of clients cost the tool little CPU); its handshake is made by
// hand on a plain TCP connection, so that the frames a gateway sends right after it (a
// replay, then `resumed`) are read from the first byte, never left in a library's buffer.
// A client is owned by its loop while connected and by a dialer goroutine while it
// (re)connects; the hand-over between them goes through the byFD table and the redial
// channel.

// fleetConfig is a fleet's part of a scenario. It travels to a worker process as JSON.
type fleetConfig struct {
	First       int      `json:"first"`        // id of the fleet's first client
	Count       int      `json:"count"`        // clients in the fleet
	Channels    int      `json:"channels"`     // client i reads channel i mod Channels
	Prefix      string   `json:"prefix"`       // channel c is named Prefix + c
	Gateways    []string `json:"gateways"`     // host:port of every gateway
	Start       int      `json:"start"`        // gateway of the first connect; -1: i mod len(Gateways)
	Reconnect   int      `json:"reconnect"`    // gateway to reconnect to; -1: any but the one that closed it
	SourceFirst int      `json:"source_first"` // dial from 127.0.0.SourceFirst ..
	SourceCount int      `json:"source_count"` // .. 127.0.0.(SourceFirst+SourceCount-1)
	ConnectRate int      `json:"connect_rate"` // first connects per second
	Dialers     int      `json:"dialers"`      // (re)connects under way at once
}

func (c fleetConfig) channel(ch int) string { return c.Prefix + strconv.Itoa(ch) }

// fleetProgress is what a fleet has done so far.
type fleetProgress struct {
	Welcomed      int64 `json:"welcomed"`       // clients that got their first welcome
	Live          int64 `json:"live"`           // clients connected now
	Awaiting      int64 `json:"awaiting"`       // clients closed and not resumed yet
	Resumed       int64 `json:"resumed"`        // resumes completed (resumed frames after a close)
	Resets        int64 `json:"resets"`         // reset frames
	Deliveries    int64 `json:"deliveries"`     // message frames
	Distinct      int64 `json:"distinct"`       // messages each client got the first time
	ConnectFailed int64 `json:"connect_failed"` // clients whose first connect failed for good
	LastResumedNS int64 `json:"last_resumed_ns"`
}

// accepted says which messages the publisher put on the bus: seqs 0 .. Total-1 but Failed.
// Message seq is published to channel seq mod Channels.
type accepted struct {
	Total  int64   `json:"total"`
	Failed []int64 `json:"failed,omitempty"`
}

// clientReport is how one client fared over the run.
type clientReport struct {
	ID         int   `json:"id"`
	Channel    int   `json:"channel"`
	Expected   int64 `json:"expected"`             // accepted messages of its channel
	Got        int64 `json:"got"`                  // of those, how many it got
	Lost       int64 `json:"lost"`                 // expected - got
	Dups       int64 `json:"dups,omitempty"`       // deliveries of a message it already had
	Disorder   int64 `json:"disorder,omitempty"`   // deliveries whose offset was not above the one before
	Unexpected int64 `json:"unexpected,omitempty"` // messages it got that it should not (another channel, not accepted)
	Resets     int64 `json:"resets,omitempty"`
	Resumes    int64 `json:"resumes"`
	MaxResume  int64 `json:"max_resume_us"` // longest close -> resumed
	Awaiting   bool  `json:"awaiting,omitempty"`
	Never      bool  `json:"never,omitempty"` // its first connect failed
}

// ok reports whether the client got every message of its channel once, in order, and is
// connected at the end.
func (r clientReport) ok() bool {
	return !r.Never && r.Lost == 0 && r.Dups == 0 && r.Disorder == 0 && r.Unexpected == 0 && r.Resets == 0 && !r.Awaiting
}

// fleetReport is what a fleet measured.
type fleetReport struct {
	Clients    []clientReport       `json:"clients"`
	Resume     sparseHist           `json:"resume"`   // close -> resumed, microseconds
	Timeline   map[int64]sparseHist `json:"timeline"` // unix second -> delivery latency, microseconds
	Closes     map[string]int       `json:"closes,omitempty"`
	DialErrors map[string]int       `json:"dial_errors,omitempty"`
	Progress   fleetProgress        `json:"progress"`
}

// rclient is one client. Its fields are owned by its loop while it is connected, by a
// dialer while it connects.
type rclient struct {
	id, ch  int
	fd      int
	gw      int    // the gateway it is (or was last) connected to
	pending []byte // the start of a frame not yet read whole
	last    int64  // the last offset seen; -2 before the first welcome
	seen    []uint64
	dups    int64
	order   int64
	resets  int64
	wrong   int64
	resumes int64
	maxRes  time.Duration
	// closedAt is when the connection ended; zero once resumed (or before any close).
	closedAt time.Time
	welcomed bool
	attempts int // failed dials in a row
}

// fleet runs the clients.
type fleet struct {
	cfg    fleetConfig
	srcs   *sourceDialer
	loops  []*fleetLoop
	byFD   []atomic.Pointer[rclient]
	redial chan *rclient
	stop   atomic.Bool
	wg     sync.WaitGroup
	// clients is every client, for the report: appended by connect, read by finish once
	// connect has returned (connected is closed).
	clients   []*rclient
	connected chan struct{}
	started   atomic.Bool // connect was called

	welcomed, live, awaiting, resumed, resets   atomic.Int64
	deliveries, distinct, connectFailed, lastNS atomic.Int64

	mu         sync.Mutex // protects closes, dialErrors, and every shard's histograms
	closes     map[string]int
	dialErrors map[string]int
	rec        fleetRecorder
}

type fleetLoop struct{ epfd int }

// fleetRecorder holds the histograms: delivery latency per second, and close -> resumed.
// fleet.mu protects it.
type fleetRecorder struct {
	timeline map[int64]*hdrhistogram.Histogram
	resume   *hdrhistogram.Histogram
}

// newTimelineHist is a histogram of one second's delivery latencies (2 significant
// figures: a percentile within 1%).
func newTimelineHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, 2) }

func newFleet(cfg fleetConfig) (*fleet, error) {
	if cfg.Count <= 0 || cfg.Channels <= 0 || len(cfg.Gateways) == 0 {
		return nil, errors.New("fleet: clients, channels and gateways are required")
	}
	for _, g := range cfg.Gateways {
		if _, _, err := loopbackTarget(g); err != nil {
			return nil, err
		}
	}
	if need := cfg.Count + 64; need > noFileLimit() {
		return nil, fmt.Errorf("%d clients need %d descriptors; this process may have %d: use more workers", cfg.Count, need, noFileLimit())
	}
	f := &fleet{
		cfg:        cfg,
		srcs:       newSourceDialer(max(cfg.SourceFirst, 2), max(cfg.SourceCount, 1)),
		byFD:       make([]atomic.Pointer[rclient], noFileLimit()+1),
		redial:     make(chan *rclient, cfg.Count),
		connected:  make(chan struct{}),
		closes:     map[string]int{},
		dialErrors: map[string]int{},
		rec:        fleetRecorder{timeline: map[int64]*hdrhistogram.Histogram{}, resume: newHist()},
	}
	for range 2 {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			f.close()
			return nil, fmt.Errorf("epoll_create1: %w", err)
		}
		l := &fleetLoop{epfd: epfd}
		f.loops = append(f.loops, l)
		f.wg.Go(func() { f.run(l) })
	}
	for range max(cfg.Dialers, 1) {
		f.wg.Go(f.dialer)
	}
	return f, nil
}

// connect makes the fleet's clients and has them connect, at most ConnectRate a second,
// on a goroutine of its own; Welcomed counts them in.
func (f *fleet) connect() {
	f.started.Store(true)
	go func() {
		defer close(f.connected)
		interval := time.Second / time.Duration(max(f.cfg.ConnectRate, 1))
		next := time.Now()
		for i := range f.cfg.Count {
			if f.stop.Load() {
				return
			}
			id := f.cfg.First + i
			c := &rclient{id: id, ch: id % f.cfg.Channels, fd: -1, last: -2, gw: f.cfg.Start}
			if c.gw < 0 {
				c.gw = id % len(f.cfg.Gateways)
			}
			f.clients = append(f.clients, c)
			time.Sleep(time.Until(next))
			next = next.Add(interval)
			f.redial <- c
		}
	}()
}

// target returns the gateway c dials now: its first, the one reconnects go to, or (-1)
// any but the one that closed it, taking the next on each failed attempt.
func (f *fleet) target(c *rclient) int {
	n := len(f.cfg.Gateways)
	switch {
	case !c.welcomed:
		return c.gw
	case f.cfg.Reconnect >= 0:
		return f.cfg.Reconnect
	case n == 1:
		return 0
	}
	// The others, starting at one that spreads the clients (their id and reconnects).
	k := (c.id + int(c.resumes) + c.attempts) % (n - 1)
	return (c.gw + 1 + k) % n
}

// dialer (re)connects the clients given to it until the fleet stops.
func (f *fleet) dialer() {
	for {
		var c *rclient
		select {
		case c = <-f.redial:
		case <-time.After(100 * time.Millisecond):
			if f.stop.Load() {
				return
			}
			continue
		}
		if f.stop.Load() {
			return
		}
		gw := f.target(c)
		fd, pending, err := f.handshake(f.cfg.Gateways[gw], f.path(c))
		if err != nil {
			f.mu.Lock()
			f.dialErrors[shortErr(err)]++
			f.mu.Unlock()
			c.attempts++
			if !c.welcomed && c.attempts >= 20 {
				f.connectFailed.Add(1)
				continue // its first connect failed for good
			}
			if c.welcomed && c.attempts == 1 {
				// The first failure after a close: the next try goes elsewhere at once.
			} else {
				time.Sleep(time.Duration(min(c.attempts, 10)) * 20 * time.Millisecond)
			}
			f.redial <- c
			continue
		}
		c.attempts, c.gw, c.fd, c.pending = 0, gw, fd, nil
		f.live.Add(1)
		// What came with the handshake's answer is read here, before the loop takes over:
		// the loop would not hear of it until the socket had more to read.
		if why := f.frames(c, pending, time.Now()); why != "" {
			f.dropped(c, why)
			continue
		}
		if !f.register(c) {
			f.dropped(c, "register")
		}
	}
}

// path is the /ws request of c's next connect: its channel, and since once it has seen an
// offset.
func (f *fleet) path(c *rclient) string {
	q := url.Values{"channels": {f.cfg.channel(c.ch)}}
	if c.last >= -1 {
		q.Set("since", strconv.FormatInt(c.last, 10))
	}
	return "/ws?" + q.Encode()
}

// wsGUID is the key suffix of the handshake's accept check (RFC 6455 section 4.2.2).
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// handshake opens a WebSocket connection to addr for path by hand, and returns its
// socket (non-blocking, for epoll) and the bytes that came after the response's headers.
func (f *fleet) handshake(addr, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := f.srcs.DialContext(ctx, "tcp", addr)
	if err != nil {
		return -1, nil, err
	}
	defer conn.Close()
	rest, err := upgrade(conn, addr, path)
	if err != nil {
		return -1, nil, err
	}
	fd, err := takeFD(conn)
	if err != nil {
		return -1, nil, err
	}
	return fd, rest, nil
}

// upgrade makes the WebSocket handshake for path on conn by hand, within 10 seconds, and
// returns the bytes that came after the response's headers. It leaves conn's deadline
// cleared.
func upgrade(conn net.Conn, addr, path string) ([]byte, error) {
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetDeadline(time.Time{})
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	key := base64.StdEncoding.EncodeToString(raw[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, 4096)
	for {
		if end := bytes.Index(buf, []byte("\r\n\r\n")); end >= 0 {
			head, rest := buf[:end], buf[end+4:]
			if err := checkUpgrade(head, key); err != nil {
				return nil, err
			}
			return bytes.Clone(rest), nil
		}
		if len(buf) == cap(buf) {
			return nil, errors.New("handshake: response headers too long")
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return nil, fmt.Errorf("handshake: %w", err)
		}
	}
}

// checkUpgrade checks a handshake response's status line and accept key.
func checkUpgrade(head []byte, key string) error {
	status, fields, _ := bytes.Cut(head, []byte("\r\n"))
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 101")) {
		code := string(status)
		if parts := bytes.Fields(status); len(parts) >= 2 {
			code = string(parts[1])
		}
		return fmt.Errorf("handshake: HTTP %s", code)
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	want := base64.StdEncoding.EncodeToString(sum[:])
	for _, line := range bytes.Split(fields, []byte("\r\n")) {
		name, value, _ := bytes.Cut(line, []byte(":"))
		if bytes.EqualFold(bytes.TrimSpace(name), []byte("Sec-WebSocket-Accept")) {
			if string(bytes.TrimSpace(value)) != want {
				return errors.New("handshake: wrong Sec-WebSocket-Accept")
			}
			return nil
		}
	}
	return errors.New("handshake: no Sec-WebSocket-Accept")
}

// register hands c's socket to a loop; from the table's store on, c is the loop's, so
// what register needs of c is read before.
func (f *fleet) register(c *rclient) bool {
	fd, l := c.fd, f.loops[c.id%len(f.loops)]
	if fd >= len(f.byFD) {
		return false
	}
	f.byFD[fd].Store(c)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		f.byFD[fd].Store(nil) // never registered: no loop has seen it
		return false
	}
	return true
}

// run is a loop: it reads every ready socket once and handles the whole frames in it.
func (f *fleet) run(l *fleetLoop) {
	events := make([]syscall.EpollEvent, 256)
	buf := make([]byte, 256<<10)
	for !f.stop.Load() {
		n, err := syscall.EpollWait(l.epfd, events, 100)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			c := f.byFD[ev.Fd].Load()
			if c == nil {
				continue
			}
			why := ""
			m, err := syscall.Read(c.fd, buf)
			switch {
			case err != nil && (errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR)):
				continue
			case err != nil:
				why = "read: " + err.Error()
			case m == 0:
				why = "EOF"
			default:
				why = f.frames(c, buf[:m], time.Now())
			}
			if why != "" {
				_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
				f.byFD[c.fd].Store(nil)
				f.dropped(c, why)
			}
		}
	}
}

// frames handles the whole frames in data (after what c had pending) and keeps the start
// of an incomplete one. It returns why the connection ended, or "".
func (f *fleet) frames(c *rclient, data []byte, now time.Time) string {
	if len(c.pending) > 0 {
		c.pending = append(c.pending, data...)
		data = c.pending
	}
	for {
		op, payload, size, ok := nextFrame(data)
		if !ok {
			break
		}
		switch op {
		case 1: // text: a protocol frame
			if why := f.handle(c, payload, now); why != "" {
				return why
			}
		case 8: // close
			code := 1005
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			return "close " + strconv.Itoa(code)
		case 9: // ping: a pong with its payload, masked with a zero key
			if len(payload) <= 125 {
				pong := append([]byte{0x8A, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
				_, _ = syscall.Write(c.fd, pong)
			}
		}
		data = data[size:]
	}
	if len(data) == 0 {
		c.pending = c.pending[:0]
	} else {
		c.pending = append(c.pending[:0:0], data...)
	}
	return ""
}

// Frame prefixes, as the gateway encodes them (op first).
var (
	opMessage = []byte(`{"op":"message"`)
	opWelcome = []byte(`{"op":"welcome"`)
	opResumed = []byte(`{"op":"resumed"`)
	opReset   = []byte(`{"op":"reset"`)
	keyOffset = []byte(`"offset":`)
	keySeq    = []byte(`"seq":`)
)

// handle accounts for one protocol frame.
func (f *fleet) handle(c *rclient, p []byte, now time.Time) string {
	switch {
	case bytes.HasPrefix(p, opMessage):
		f.deliveries.Add(1)
		off := scanInt(p, keyOffset)
		if off <= c.last {
			c.order++ // at or below an offset it had: the bus's order is broken, or a duplicate
		}
		c.last = max(c.last, off)
		seq := scanInt(p[bytes.Index(p, []byte(`"data":`))+1:], keySeq)
		switch {
		case seq < 0 || int(seq%int64(f.cfg.Channels)) != c.ch:
			c.wrong++
		default:
			k := seq / int64(f.cfg.Channels)
			if int(k/64) >= len(c.seen) {
				c.seen = append(c.seen, make([]uint64, int(k/64)+1-len(c.seen)+16)...)
			}
			if w, b := k/64, uint64(1)<<(k%64); c.seen[w]&b != 0 {
				c.dups++
			} else {
				c.seen[w] |= b
				f.distinct.Add(1)
			}
		}
		if ts := scanTS(p); ts > 0 {
			f.recordDelivery(now, ts)
		}
	case bytes.HasPrefix(p, opWelcome):
		if !c.welcomed {
			c.welcomed = true
			f.welcomed.Add(1)
			if off := scanInt(p, keyOffset); off >= -1 && c.last == -2 {
				c.last = off
			}
		}
	case bytes.HasPrefix(p, opResumed), bytes.HasPrefix(p, opReset):
		if bytes.HasPrefix(p, opReset) {
			c.resets++
			f.resets.Add(1)
		}
		if !c.closedAt.IsZero() {
			d := now.Sub(c.closedAt)
			c.closedAt = time.Time{}
			c.resumes++
			c.maxRes = max(c.maxRes, d)
			f.awaiting.Add(-1)
			f.resumed.Add(1)
			f.lastNS.Store(now.UnixNano())
			f.mu.Lock()
			_ = f.rec.resume.RecordValue(min(max(d.Microseconds(), histMin), histMax))
			f.mu.Unlock()
		}
	}
	return ""
}

// scanInt returns the integer after key in p (-1 where there is none; -1 itself too).
func scanInt(p, key []byte) int64 {
	i := bytes.Index(p, key)
	if i < 0 {
		return -1
	}
	rest := p[i+len(key):]
	neg := len(rest) > 0 && rest[0] == '-'
	if neg {
		rest = rest[1:]
	}
	var v int64
	n := 0
	for _, ch := range rest {
		if ch < '0' || ch > '9' {
			break
		}
		v = v*10 + int64(ch-'0')
		n++
	}
	if n == 0 {
		return -1
	}
	if neg {
		return -v
	}
	return v
}

// recordDelivery records one delivery's latency in its second's histogram.
func (f *fleet) recordDelivery(now time.Time, sentNS int64) {
	us := min(max((now.UnixNano()-sentNS)/1e3, histMin), histMax)
	sec := now.Unix()
	f.mu.Lock()
	h := f.rec.timeline[sec]
	if h == nil {
		h = newTimelineHist()
		f.rec.timeline[sec] = h
	}
	_ = h.RecordValue(us)
	f.mu.Unlock()
}

// dropped ends c's connection (its socket is out of the loops) and gives it to the
// dialers to reconnect.
func (f *fleet) dropped(c *rclient, why string) {
	syscall.Close(c.fd)
	c.fd = -1
	c.pending = nil
	f.live.Add(-1)
	if f.stop.Load() {
		return
	}
	f.mu.Lock()
	f.closes[why]++
	f.mu.Unlock()
	if c.welcomed && c.closedAt.IsZero() {
		c.closedAt = time.Now()
		f.awaiting.Add(1)
	}
	f.redial <- c
}

// progress returns what the fleet has done so far. Any goroutine.
func (f *fleet) progress() fleetProgress {
	return fleetProgress{
		Welcomed: f.welcomed.Load(), Live: f.live.Load(), Awaiting: f.awaiting.Load(),
		Resumed: f.resumed.Load(), Resets: f.resets.Load(), Deliveries: f.deliveries.Load(),
		Distinct: f.distinct.Load(), ConnectFailed: f.connectFailed.Load(), LastResumedNS: f.lastNS.Load(),
	}
}

// close stops the loops and dialers and closes every socket.
func (f *fleet) close() {
	f.stop.Store(true)
	if f.started.Load() {
		<-f.connected
	}
	f.wg.Wait()
	for i := range f.byFD {
		if c := f.byFD[i].Swap(nil); c != nil {
			syscall.Close(c.fd)
		}
	}
	for _, l := range f.loops {
		syscall.Close(l.epfd)
	}
}

// finish stops the fleet and reports how each client fared against what was accepted.
func (f *fleet) finish(acc accepted) fleetReport {
	prog := f.progress()
	f.close()
	failed := make(map[int64]bool, len(acc.Failed))
	for _, s := range acc.Failed {
		failed[s] = true
	}
	rep := fleetReport{Closes: f.closes, DialErrors: f.dialErrors, Progress: prog, Timeline: map[int64]sparseHist{}}
	chans := int64(f.cfg.Channels)
	for _, c := range f.clients {
		r := clientReport{ID: c.id, Channel: c.ch, Dups: c.dups, Disorder: c.order, Resets: c.resets,
			Resumes: c.resumes, MaxResume: c.maxRes.Microseconds(), Awaiting: !c.closedAt.IsZero(), Never: !c.welcomed}
		r.Unexpected = c.wrong
		for w, word := range c.seen {
			for word != 0 {
				b := bits.TrailingZeros64(word)
				word &^= 1 << b
				seq := (int64(w)*64+int64(b))*chans + int64(c.ch)
				if seq >= acc.Total || failed[seq] {
					r.Unexpected++
				}
			}
		}
		for seq := int64(c.ch); seq < acc.Total; seq += chans {
			if failed[seq] {
				continue
			}
			r.Expected++
			k := seq / chans
			if int(k/64) < len(c.seen) && c.seen[k/64]&(1<<(k%64)) != 0 {
				r.Got++
			}
		}
		r.Lost = r.Expected - r.Got
		rep.Clients = append(rep.Clients, r)
	}
	rep.Resume = toSparse(f.rec.resume)
	for sec, h := range f.rec.timeline {
		rep.Timeline[sec] = toSparse(h)
	}
	return rep
}

// sparseHist is a histogram as JSON: its significant figures and its non-zero counts by
// index (a whole snapshot is thousands of zeros).
type sparseHist struct {
	Sig    int64      `json:"sig"`
	Counts [][2]int64 `json:"counts,omitempty"`
}

func toSparse(h *hdrhistogram.Histogram) sparseHist {
	s := h.Export()
	out := sparseHist{Sig: s.SignificantFigures}
	for i, n := range s.Counts {
		if n != 0 {
			out.Counts = append(out.Counts, [2]int64{int64(i), n})
		}
	}
	return out
}

func (s sparseHist) hist() *hdrhistogram.Histogram {
	snap := hdrhistogram.New(histMin, histMax, int(max(s.Sig, 1))).Export()
	for _, p := range s.Counts {
		if p[0] >= 0 && int(p[0]) < len(snap.Counts) {
			snap.Counts[p[0]] = p[1]
		}
	}
	return hdrhistogram.Import(snap)
}
