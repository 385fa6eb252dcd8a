package gateway

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"sync"
	"time"
)

// frame is one WebSocket text frame to send, encoded whole (header and payload) when it
// is made. A broadcast's frame is made once and shared by every recipient: a write pump
// only copies its bytes into the batch it writes.
type frame struct {
	wire []byte // the frame as it goes on the wire
	// offset is the message's offset in the bus's log; message.NoOffset for replies.
	offset int64
	// published is when the message was published (zero for replies), for latency.
	published time.Time
	// replayed frames carry a message from the log to a resuming client: delivered, but
	// their age is not a delivery latency.
	replayed bool

	// deflated is the frame compressed with permessage-deflate (RFC 7692), made by the
	// first writer of a connection that negotiated it and shared by every other; wire
	// itself where compressing does not make it smaller. once guards it.
	once     sync.Once
	deflated []byte
}

// Frame header bits (RFC 6455 section 5.2).
const (
	frameFin  = 0x80
	frameRSV1 = 0x40 // set on a compressed message (RFC 7692 section 6)
	opText    = 0x1
)

// newFrame frames payload as a final, unmasked text frame (RFC 6455 section 5.2: the
// server never masks).
func newFrame(payload []byte, offset int64, published time.Time) *frame {
	wire := appendHeader(make([]byte, 0, 10+len(payload)), frameFin|opText, len(payload))
	return &frame{wire: append(wire, payload...), offset: offset, published: published}
}

// appendHeader appends a frame header of first byte b0 for a payload of n bytes.
func appendHeader(wire []byte, b0 byte, n int) []byte {
	switch {
	case n < 126:
		return append(wire, b0, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(wire, b0, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(wire, b0, 127), uint64(n))
	}
}

// size is what the frame counts against a write queue's byte cap.
func (f *frame) size() int { return len(f.wire) }

// payload returns the frame's payload (after the header).
func (f *frame) payload() []byte {
	switch f.wire[1] {
	case 126:
		return f.wire[4:]
	case 127:
		return f.wire[10:]
	}
	return f.wire[2:]
}

// deflater compresses frames for the connections that negotiated permessage-deflate:
// each frame once, whoever asks first, with writers from a pool. Frames under minBytes
// (header included) are sent as they are: compressing them costs more than it saves.
type deflater struct {
	minBytes int
	level    int
	writers  sync.Pool // *flate.Writer
	metrics  *Metrics
}

func newDeflater(minBytes, level int, m *Metrics) *deflater {
	return &deflater{minBytes: minBytes, level: level, metrics: m}
}

// wireOf returns the bytes to send of f to a connection that negotiated compression.
func (d *deflater) wireOf(f *frame) []byte {
	if len(f.wire) < d.minBytes {
		return f.wire
	}
	f.once.Do(func() { f.deflated = d.compress(f) })
	return f.deflated
}

// deflateTail is what a sync flush ends a deflate stream with; RFC 7692 section 7.2.1
// has the sender remove it from each message.
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// compress returns f compressed as one message frame with RSV1 set, or f.wire where that
// is not smaller. Each message is compressed on its own (no context takeover, which is
// what the WebSocket library negotiates), so one compression serves every recipient.
func (d *deflater) compress(f *frame) []byte {
	payload := f.payload()
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
		d.metrics.Compressed(len(payload), len(payload))
		return f.wire
	}
	d.metrics.Compressed(len(payload), len(z))
	return append(appendHeader(make([]byte, 0, 10+len(z)), frameFin|frameRSV1|opText, len(z)), z...)
}
