// Package wire is what the gateway sends, encoded once: a Frame holds one message (or
// reply) as the bytes of a WebSocket text frame, made when it is built and shared by
// every recipient, and the encodings that some connections need instead (the
// permessage-deflate form today), each made once by the first writer that needs it. It
// also holds the frame header bits of RFC 6455 section 5.2, the one place they are
// written, for the writer and the read side alike. It imports nothing of the gateway.
package wire

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/producer/message"
)

// Frame header bits (RFC 6455 section 5.2), and the forms of the frames the gateway
// writes itself.
const (
	Fin     = 0x80 // the final frame of a message
	RSV1    = 0x40 // set on a compressed message (RFC 7692 section 6)
	RSVBits = 0x70 // RSV1, RSV2 and RSV3

	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xa
	OpMask         = 0x0f // the opcode's bits in a frame's first byte

	Masked     = 0x80 // the mask bit of a frame's second byte: set on every client frame
	LenMask    = 0x7f // the 7-bit payload length of a frame's second byte
	MaskKeyLen = 4    // the masking key of a client frame

	// MaxControlPayload is the longest payload of a control frame (section 5.5).
	MaxControlPayload = 125
	// CloseFrameByte is the first byte of a close frame, always final.
	CloseFrameByte = Fin | OpClose
)

// Close codes the gateway sends (RFC 6455 section 7.4.1, and Herald's own in the 4000s:
// docs/PROTOCOL.md).
const (
	CloseGoingAway       = 1001 // the gateway is draining
	CloseProtocolError   = 1002 // a frame that breaks RFC 6455 or RFC 7692
	CloseAbnormal        = 1006 // no close frame: the connection dropped, or a write failed
	ClosePolicyViolation = 1008 // the token expired
	CloseTooBig          = 1009 // a message over the size limit
	CloseInternalError   = 1011 // a panic while serving the connection
	CloseSlowConsumer    = 4008 // the write queue overflowed
	CloseRateLimited     = 4029 // rate limited too long
)

// PingPayloadLen is the length of the payload of the gateway's pings: the ping's
// sequence number, which the client's pong echoes (RFC 6455 section 5.5.3), so that only
// a pong that answers the latest ping counts.
const PingPayloadLen = 8

// AppendPing appends the ping numbered seq, from the server (RFC 6455 section 5.5.2;
// never masked), to buf.
func AppendPing(buf []byte, seq uint32) []byte {
	buf = append(buf, Fin|OpPing, PingPayloadLen)
	return binary.BigEndian.AppendUint64(buf, uint64(seq))
}

// Frame is one message or reply to send, encoded whole (header and payload) as a
// WebSocket text frame when it is made. A broadcast's frame is made once and shared by
// every recipient: a writer only copies its bytes into the batch it writes. A Frame is
// immutable once made, but for the encodings made on demand, each under its own once.
type Frame struct {
	Wire []byte // the WebSocket frame as it goes on the wire
	// Offset is the message's offset in the bus's log; message.NoOffset for replies.
	Offset int64
	// Published is when the message was published (zero for replies), for latency. A
	// frame replayed to a resuming client is delivered, but its age is not a delivery
	// latency: its queue knows it by its offset (writer.Queue's replayed).
	Published time.Time

	// deflated is the frame compressed with permessage-deflate (RFC 7692), made by the
	// first writer of a connection that negotiated it and shared by every other; Wire
	// itself where compressing does not make it smaller. once guards it.
	once     sync.Once
	deflated []byte

	// ResumeAfter is, on a reply that tells where a client's stream stands (the
	// welcome of a client that resumes nothing), the offset a client that reconnects
	// resumes after: the id of its Server-Sent Event. message.NoOffset on the others
	// (a message's id is its Offset).
	ResumeAfter int64
	// event is the frame as a Server-Sent Event (EventBytes), made by the first writer
	// of an SSE connection and shared by every other; eventOnce guards it.
	eventOnce sync.Once
	event     []byte

	// Trace, on a message frame the hub traces (HubConfig.TraceDispatches), is where the
	// writers note the message's last write; nil on every other frame.
	Trace *Trace
}

// Trace is the way of one message through the gateway, stamped for the dispatch
// breakdown (GET /debug/dispatches on the admin listener): when it was published, when
// the hub began to dispatch it, when it had queued it to its last recipient, and when a
// writer wrote it to its last recipient's socket. Times are Unix nanoseconds. The hub
// sets every field but the last write before it makes the trace readable; the writers
// only note writes (Wrote), which may come before and after.
type Trace struct {
	ID         string
	Offset     int64
	Recipients int   // the connections it was queued to
	Published  int64 // the message's publish time (where it has none: Dispatched)
	Dispatched int64 // the hub began its dispatch
	Enqueued   int64 // the hub had queued it to every recipient
	lastWrite  atomic.Int64
}

// Wrote notes a write of the message to a socket at now: the latest such time is kept.
// Safe for concurrent use.
func (t *Trace) Wrote(now time.Time) {
	n := now.UnixNano()
	for {
		last := t.lastWrite.Load()
		if n <= last || t.lastWrite.CompareAndSwap(last, n) {
			return
		}
	}
}

// LastWrite is the time of the latest write noted; 0 before the first.
func (t *Trace) LastWrite() int64 { return t.lastWrite.Load() }

// NewFrame frames payload as a final, unmasked text frame (RFC 6455 section 5.2: the
// server never masks).
func NewFrame(payload []byte, offset int64, published time.Time) *Frame {
	wire := AppendHeader(make([]byte, 0, 10+len(payload)), Fin|OpText, len(payload))
	return &Frame{Wire: append(wire, payload...), Offset: offset, Published: published, ResumeAfter: message.NoOffset}
}

// Reply encodes v, a frame answering one client (a JSON object), as a Frame.
func Reply(v any) *Frame { return NewFrame(Marshal(v), message.NoOffset, time.Time{}) }

// Marshal encodes a frame's JSON object, without HTML escaping and without the newline
// of json.Encoder. The gateway's frame types hold only strings, integers and data that
// the bus has validated as JSON, so an error here is a bug: it panics.
func Marshal(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("gateway: encode %T: %v", v, err))
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'})
}

// AppendHeader appends a frame header of first byte b0 for a payload of n bytes.
func AppendHeader(wire []byte, b0 byte, n int) []byte {
	switch {
	case n < 126:
		return append(wire, b0, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(wire, b0, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(wire, b0, 127), uint64(n))
	}
}

// Size is what the frame counts against a write queue's byte cap.
func (f *Frame) Size() int { return len(f.Wire) }

// Payload returns the frame's payload (after the header).
func (f *Frame) Payload() []byte {
	switch f.Wire[1] {
	case 126:
		return f.Wire[4:]
	case 127:
		return f.Wire[10:]
	}
	return f.Wire[2:]
}

// Encoding is how a connection sends frames: as made, or compressed with
// permessage-deflate where the connection negotiated it (Deflate not nil). A transport
// chooses its connection's Encoding; the writer asks it for the bytes of each frame,
// which are made once per message for every connection of the same encoding.
//
// A Server-Sent Events connection (Events set) gets each frame as an event instead
// (EventBytes), made once per message for every such connection, and its pings as
// comments.
type Encoding struct {
	Deflate *Deflater // nil: frames go as made
	Events  bool      // frames go as Server-Sent Events
}

// Bytes returns the bytes of f as they go to a connection of this encoding.
func (e Encoding) Bytes(f *Frame) []byte {
	if e.Deflate == nil {
		if e.Events {
			return f.EventBytes()
		}
		return f.Wire
	}
	return e.Deflate.wireOf(f)
}

// AppendPing appends the ping numbered seq in this encoding: a WebSocket ping, or for
// Server-Sent Events a comment (a heartbeat no EventSource dispatches).
func (e Encoding) AppendPing(buf []byte, seq uint32) []byte {
	if e.Events {
		return append(buf, Heartbeat...)
	}
	return AppendPing(buf, seq)
}

// Deflater compresses frames for the connections that negotiated permessage-deflate:
// each frame once, whoever asks first, with writers from a pool. Frames under minBytes
// (header included) are sent as they are: compressing them costs more than it saves.
// Safe for concurrent use.
type Deflater struct {
	minBytes int
	level    int
	writers  sync.Pool // *flate.Writer
	counted  func(in, out int)
}

// NewDeflater returns a Deflater that compresses frames of at least minBytes at level
// (1 to 9; the caller checks it), and calls counted (when not nil) with the payload
// bytes before and after each compression.
func NewDeflater(minBytes, level int, counted func(in, out int)) *Deflater {
	return &Deflater{minBytes: minBytes, level: level, counted: counted}
}

// wireOf returns the bytes to send of f to a connection that negotiated compression.
func (d *Deflater) wireOf(f *Frame) []byte {
	if len(f.Wire) < d.minBytes {
		return f.Wire
	}
	f.once.Do(func() { f.deflated = d.compress(f) })
	return f.deflated
}

// deflateTail is what a sync flush ends a deflate stream with; RFC 7692 section 7.2.1
// has the sender remove it from each message.
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// compress returns f compressed as one message frame with RSV1 set, or f.Wire where that
// is not smaller. Each message is compressed on its own (no context takeover, which is
// what the WebSocket library negotiates), so one compression serves every recipient.
func (d *Deflater) compress(f *Frame) []byte {
	payload := f.Payload()
	var buf bytes.Buffer
	buf.Grow(len(payload)/2 + 16)
	w, _ := d.writers.Get().(*flate.Writer)
	if w == nil {
		w, _ = flate.NewWriter(&buf, d.level) // the level is checked by NewServer
	} else {
		w.Reset(&buf)
	}
	_, _ = w.Write(payload) // a bytes.Buffer does not fail
	_ = w.Flush()
	d.writers.Put(w)
	z := bytes.TrimSuffix(buf.Bytes(), deflateTail)
	if len(z) >= len(payload) {
		d.count(len(payload), len(payload))
		return f.Wire
	}
	d.count(len(payload), len(z))
	return append(AppendHeader(make([]byte, 0, 10+len(z)), Fin|RSV1|OpText, len(z)), z...)
}

func (d *Deflater) count(in, out int) {
	if d.counted != nil {
		d.counted(in, out)
	}
}
