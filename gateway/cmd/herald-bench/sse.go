package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// The SSE clients (-transport sse) open GET /sse by hand on a plain TCP connection, as
// the fleet makes its WebSocket handshakes, and read the event stream from the byte after
// the response's header: the gateway takes the connection over and writes the stream
// raw (no chunked encoding; the stream ends with the connection). Once the welcome event
// has come, the socket is read by the epoll receivers, which parse events instead of
// frames and account for them as they do for frames: a message event with a send time in
// its data is a delivery. An event's id is its offset; a message whose id is not above
// the last id the stream had is counted as a duplicate.

// ssePath is the /sse request subscribing to channel.
func ssePath(channel string) string {
	if channel == "" {
		return "/sse"
	}
	return "/sse?channels=" + url.QueryEscape(channel)
}

// dialSSE opens GET path on addr, by hand, and reads the response's header and the
// stream up to the end of its welcome event, which the gateway sends once the stream's
// subscriptions are in force. It returns the connection and the stream's bytes read so
// far (the welcome event and what came before and after it), for the receiver to parse.
func dialSSE(ctx context.Context, sd *sourceDialer, addr, path string) (net.Conn, []byte, error) {
	conn, err := sd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		return nil, nil, fmt.Errorf("sse request: %w", err)
	}
	buf := make([]byte, 0, 4096)
	body := -1 // where the stream begins in buf, once the header has come
	for {
		if body < 0 {
			if end := bytes.Index(buf, []byte("\r\n\r\n")); end >= 0 {
				if err := checkEventStream(buf[:end]); err != nil {
					return nil, nil, err
				}
				body = end + 4
			}
		}
		if body >= 0 {
			stream := buf[body:]
			w := bytes.Index(stream, []byte("event: welcome\n"))
			if e := bytes.Index(stream, []byte("event: error\n")); e >= 0 && (w < 0 || e < w) {
				return nil, nil, fmt.Errorf("sse: stream refused: %.80s", bytes.TrimSpace(stream[e:]))
			}
			if w >= 0 && bytes.Contains(stream[w:], []byte("\n\n")) {
				_ = conn.SetDeadline(time.Time{})
				ok = true
				return conn, bytes.Clone(stream), nil
			}
		}
		if len(buf) == cap(buf) {
			return nil, nil, errors.New("sse: no welcome in the first 4 KiB")
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return nil, nil, fmt.Errorf("sse: waiting for welcome: %w", err)
		}
	}
}

// checkEventStream checks a response header's status line and content type.
func checkEventStream(head []byte) error {
	status, fields, _ := bytes.Cut(head, []byte("\r\n"))
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 200")) {
		code := string(status)
		if parts := bytes.Fields(status); len(parts) >= 2 {
			code = string(parts[1])
		}
		return fmt.Errorf("sse: HTTP %s", code)
	}
	for _, line := range bytes.Split(fields, []byte("\r\n")) {
		name, value, _ := bytes.Cut(line, []byte(":"))
		if bytes.EqualFold(bytes.TrimSpace(name), []byte("Content-Type")) {
			if !bytes.HasPrefix(bytes.TrimSpace(value), []byte("text/event-stream")) {
				return fmt.Errorf("sse: Content-Type %s", bytes.TrimSpace(value))
			}
			return nil
		}
	}
	return errors.New("sse: no Content-Type")
}

// Event kinds, from the event line; an event without one is a message.
const (
	evMessage = iota
	evError
	evOther
)

// sseEvent is the event a stream is in the middle of: what its lines said so far.
type sseEvent struct {
	id    int64 // -1: no id line
	ts    int64 // send time found in its data; 0: none
	close int64 // of an error event: the close code in its data
	kind  uint8
	data  bool // it had a data line (an event without one is not dispatched)
}

// readSSE reads what an event stream's socket holds once and handles every whole line
// in it. It returns why the stream ended, or "" while it goes on.
func (r *epollReceivers) readSSE(rc *rawConn, buf []byte) string {
	data, why := readOnce(rc.fd, buf)
	if len(data) == 0 {
		return why
	}
	return r.events(rc, data, time.Now())
}

// events handles the whole lines in data (after the line rc had pending) and keeps the
// start of an incomplete one. Lines end with LF or CRLF (the gateway writes LF; a lone
// CR, which the format allows too, is not read as an end).
func (r *epollReceivers) events(rc *rawConn, data []byte, now time.Time) string {
	if len(rc.pending) > 0 {
		rc.pending = append(rc.pending, data...)
		data = rc.pending
	}
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		line := data[:i]
		data = data[i+1:]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if why := r.sseLine(rc, line, now); why != "" {
			return why
		}
	}
	if len(data) == 0 {
		rc.pending = rc.pending[:0]
	} else {
		rc.pending = append(rc.pending[:0:0], data...)
	}
	return ""
}

var keyClose = []byte(`"close":`)

// sseLine handles one line of rc's stream: a field of the event under way, a comment, or
// the blank line that ends the event. An error event ends the stream as a close frame
// ends a WebSocket: "close <code>".
func (r *epollReceivers) sseLine(rc *rawConn, line []byte, now time.Time) string {
	ev := &rc.ev
	if len(line) == 0 {
		e := *ev
		*ev = sseEvent{id: -1}
		if !e.data {
			return ""
		}
		switch e.kind {
		case evMessage:
			if e.id >= 0 {
				if e.id <= rc.last {
					r.cs.dups.Add(1)
				}
				rc.last = max(rc.last, e.id)
			}
			if e.ts > 0 {
				r.cs.rec.record(rc.id, e.ts, now)
			}
		case evError:
			return "close " + strconv.FormatInt(e.close, 10)
		default: // welcome, resumed, reset: their id is a resume point too
			if e.id >= 0 {
				rc.last = max(rc.last, e.id)
			}
		}
		return ""
	}
	name, value, _ := bytes.Cut(line, []byte(":"))
	if len(value) > 0 && value[0] == ' ' {
		value = value[1:]
	}
	switch string(name) {
	case "": // a comment (a heartbeat)
	case "id":
		ev.id = parseID(value)
	case "event":
		switch string(value) {
		case "message":
			ev.kind = evMessage
		case "error":
			ev.kind = evError
		default:
			ev.kind = evOther
		}
	case "data":
		ev.data = true
		switch {
		case ev.kind == evError:
			ev.close = scanInt(value, keyClose)
		case ev.ts == 0:
			ev.ts = scanTS(value)
		}
	}
	return ""
}

// parseID returns an id line's offset, or -1 where it is not a non-negative integer.
func parseID(b []byte) int64 {
	if len(b) == 0 || len(b) > 18 {
		return -1
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		v = v*10 + int64(c-'0')
	}
	return v
}

// addSSE hands an event stream to the epoll receivers: it takes over conn's socket,
// parses what dialSSE read of the stream, then has a loop read the rest.
func (r *epollReceivers) addSSE(id int, conn net.Conn, stream []byte) error {
	fd, err := takeFD(conn)
	conn.Close()
	if err != nil {
		return err
	}
	rc := &rawConn{fd: fd, id: id, last: -1, ev: sseEvent{id: -1}}
	// What came with the header is parsed here, before a loop takes over: the loop would
	// not hear of it until the socket had more to read.
	if why := r.events(rc, stream, time.Now()); why != "" {
		syscall.Close(fd)
		r.cs.endedWhy(why) // it ended there
		return nil
	}
	return r.register(rc)
}
