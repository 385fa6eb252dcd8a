package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gorilla/websocket"

	"github.com/heraldgw/herald/producer"
)

// publisher puts one message with data on the target's bus. It is called from several
// goroutines at once.
type publisher interface {
	publish(ctx context.Context, data []byte) error
	// accepted returns how many publishes the bus has taken so far: for publishers that
	// learn it later than publish returns (WebSocket acks), it grows after the last call.
	accepted() int64
	close()
}

// publisherConfig is what every kind of publisher needs.
type publisherConfig struct {
	Kind     string // http, amqp or ws
	Target   string
	Channel  string
	APIKey   string
	AMQPURL  string
	Exchange string
	Conns    int // parallel publishes (HTTP connections, AMQP publishes in flight, WebSocket connections)
}

func newPublisher(ctx context.Context, cfg publisherConfig) (publisher, error) {
	switch cfg.Kind {
	case "http":
		return newHTTPPublisher(cfg), nil
	case "amqp":
		if cfg.AMQPURL == "" {
			return nil, errors.New("-publisher amqp needs -amqp-url")
		}
		p, err := producer.New(ctx, producer.Config{URL: cfg.AMQPURL, Exchange: cfg.Exchange, Name: "herald-bench"})
		if err != nil {
			return nil, err
		}
		return &amqpPublisher{p: p, channel: cfg.Channel}, nil
	case "ws":
		return newWSPublisher(ctx, cfg)
	}
	return nil, fmt.Errorf("unknown publisher %q: want http, amqp or ws", cfg.Kind)
}

// httpPublisher publishes with POST /api/publish.
type httpPublisher struct {
	client *http.Client
	url    string
	auth   string
	prefix []byte
	ok     atomic.Int64
}

func newHTTPPublisher(cfg publisherConfig) *httpPublisher {
	sd := newSourceDialer(1, 1)
	tr := &http.Transport{
		DialContext:         sd.DialContext,
		MaxIdleConns:        cfg.Conns,
		MaxIdleConnsPerHost: cfg.Conns,
		MaxConnsPerHost:     cfg.Conns,
		IdleConnTimeout:     time.Minute,
	}
	return &httpPublisher{
		client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		url:    "http://" + cfg.Target + "/api/publish",
		auth:   "Bearer " + cfg.APIKey,
		prefix: []byte(`{"channel":` + strconv.Quote(cfg.Channel) + `,"data":`),
	}
}

func (p *httpPublisher) publish(ctx context.Context, data []byte) error {
	body := make([]byte, 0, len(p.prefix)+len(data)+1)
	body = append(append(append(body, p.prefix...), data...), '}')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", p.auth)
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	p.ok.Add(1)
	return nil
}

func (p *httpPublisher) accepted() int64 { return p.ok.Load() }
func (p *httpPublisher) close()          { p.client.CloseIdleConnections() }

// amqpPublisher publishes to the exchange with the producer package: each publish waits
// for the broker's confirm.
type amqpPublisher struct {
	p       *producer.Publisher
	channel string
	ok      atomic.Int64
}

func (p *amqpPublisher) publish(ctx context.Context, data []byte) error {
	_, err := p.p.Publish(ctx, producer.Message{Channel: p.channel, Data: json.RawMessage(data)})
	if err == nil {
		p.ok.Add(1)
	}
	return err
}

func (p *amqpPublisher) accepted() int64 { return p.ok.Load() }
func (p *amqpPublisher) close()          { _ = p.p.Close() }

// wsPublisher publishes with the publish op over WebSocket connections that subscribe to
// nothing; it counts the gateway's acks as they come.
type wsPublisher struct {
	conns   []*wsPubConn
	next    atomic.Uint64
	prefix  []byte
	acks    atomic.Int64
	refused atomic.Int64
	wg      sync.WaitGroup
}

type wsPubConn struct {
	mu  sync.Mutex // one writer at a time
	ws  *websocket.Conn
	ref int64
}

func newWSPublisher(ctx context.Context, cfg publisherConfig) (*wsPublisher, error) {
	p := &wsPublisher{prefix: []byte(`{"op":"publish","channel":` + strconv.Quote(cfg.Channel) + `,"data":`)}
	d := wsDialer(newSourceDialer(1, 1), 4096, false)
	for range max(cfg.Conns, 1) {
		ws, err := dialOne(ctx, d, wsURL(cfg.Target, ""))
		if err != nil {
			p.close()
			return nil, fmt.Errorf("publisher connection: %w", err)
		}
		c := &wsPubConn{ws: ws}
		p.conns = append(p.conns, c)
		p.wg.Go(func() { p.readAcks(ws) })
	}
	return p, nil
}

func (p *wsPublisher) readAcks(ws *websocket.Conn) {
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			return
		}
		switch {
		case bytes.HasPrefix(b, []byte(`{"op":"ack"`)):
			p.acks.Add(1)
		case bytes.HasPrefix(b, []byte(`{"op":"error"`)):
			p.refused.Add(1)
		}
	}
}

func (p *wsPublisher) publish(_ context.Context, data []byte) error {
	c := p.conns[p.next.Add(1)%uint64(len(p.conns))]
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ref++
	msg := make([]byte, 0, len(p.prefix)+len(data)+32)
	msg = append(append(msg, p.prefix...), data...)
	msg = append(strconv.AppendInt(append(msg, `,"ref":"`...), c.ref, 10), `"}`...)
	_ = c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return c.ws.WriteMessage(websocket.TextMessage, msg)
}

func (p *wsPublisher) accepted() int64 { return p.acks.Load() }

func (p *wsPublisher) close() {
	for _, c := range p.conns {
		_ = c.ws.Close()
	}
	p.wg.Wait()
}

// payload writes the data of message seq, sent now, padded to size bytes:
// {"ts":<unix nanos>,"seq":<n>,"pad":"xxx…"}; with text, the padding is words drawn
// from a small vocabulary instead, as a notification's text would be (x's compress far
// better than anything real).
func payload(buf []byte, seq int64, now time.Time, size int, text bool) []byte {
	buf = append(buf[:0], `{"ts":`...)
	buf = strconv.AppendInt(buf, now.UnixNano(), 10)
	buf = append(buf, `,"seq":`...)
	buf = strconv.AppendInt(buf, seq, 10)
	buf = append(buf, `,"pad":"`...)
	x := uint64(seq)*0x9e3779b97f4a7c15 + 1 // xorshift: a different text for each message
	for len(buf) < size-2 {
		if !text {
			buf = append(buf, 'x')
			continue
		}
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		w := words[x%uint64(len(words))]
		if len(buf)+len(w)+1 > size-2 {
			w = "x"
		}
		buf = append(append(buf, w...), ' ')
	}
	return append(buf[:min(len(buf), size-2)], `"}`...)
}

// words are the vocabulary of text payloads.
var words = strings.Fields(`the order was shipped to your address and will arrive on tuesday
	payment received invoice 2041 for account team alpha new comment on your pull request
	build passed deploy finished version 1.4.2 is live in region eu west user joined the
	channel meeting starts in ten minutes price alert bitcoin rose above your limit stock
	low warehouse berlin reply from support ticket closed please rate our service today`)

// publishStats is what a publishing run did.
type publishStats struct {
	Sent      int64         // publish calls made
	Errors    int64         // calls that failed
	Elapsed   time.Duration // from the first scheduled send to the last call's return
	MaxBehind time.Duration // the furthest a send started after its scheduled time
	ErrorKind map[string]int
	// Calls holds the durations of the calls that succeeded, in microseconds, from
	// those sent after the warm-up: from the send until the bus accepted the message.
	Calls *hdrhistogram.Histogram
}

// publishAt sends count messages at rate per second from workers goroutines, each
// message at its scheduled time (start + seq/rate) or as soon after as a worker is free.
// It times the calls sent warmup after the start or later.
func publishAt(ctx context.Context, p publisher, count int, rate float64, workers, size int, text bool, warmup time.Duration) publishStats {
	var st publishStats
	st.ErrorKind = map[string]int{}
	st.Calls = newHist()
	var mu sync.Mutex
	var sent, errs atomic.Int64
	var behind atomic.Int64
	var nextSeq atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			buf := make([]byte, 0, size+64)
			calls := newHist()
			defer func() {
				mu.Lock()
				st.Calls.Merge(calls)
				mu.Unlock()
			}()
			for {
				seq := nextSeq.Add(1) - 1
				if seq >= int64(count) || ctx.Err() != nil {
					return
				}
				due := start.Add(time.Duration(float64(seq) / rate * float64(time.Second)))
				if wait := time.Until(due); wait > 0 {
					select {
					case <-time.After(wait):
					case <-ctx.Done():
						return
					}
				} else if late := int64(-wait); late > behind.Load() {
					behind.Store(late) // racy max: good enough for a report
				}
				now := time.Now()
				buf = payload(buf, seq, now, size, text)
				sent.Add(1)
				if err := p.publish(ctx, buf); err != nil {
					errs.Add(1)
					mu.Lock()
					st.ErrorKind[shortErr(err)]++
					mu.Unlock()
				} else if now.Sub(start) >= warmup {
					_ = calls.RecordValue(min(max(time.Since(now).Microseconds(), histMin), histMax))
				}
			}
		})
	}
	wg.Wait()
	st.Sent, st.Errors = sent.Load(), errs.Load()
	st.Elapsed = time.Since(start)
	st.MaxBehind = time.Duration(behind.Load())
	return st
}

// dialableTarget reports whether something accepts TCP connections at target.
func dialableTarget(target string) bool {
	c, err := net.DialTimeout("tcp", target, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
