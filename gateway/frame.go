package gateway

import (
	"encoding/binary"
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
}

// newFrame frames payload as a final, unmasked text frame (RFC 6455 section 5.2: the
// server never masks).
func newFrame(payload []byte, offset int64, published time.Time) *frame {
	n := len(payload)
	var wire []byte
	switch {
	case n < 126:
		wire = append(make([]byte, 0, 2+n), 0x81, byte(n))
	case n <= 0xffff:
		wire = append(make([]byte, 0, 4+n), 0x81, 126)
		wire = binary.BigEndian.AppendUint16(wire, uint16(n))
	default:
		wire = append(make([]byte, 0, 10+n), 0x81, 127)
		wire = binary.BigEndian.AppendUint64(wire, uint64(n))
	}
	return &frame{wire: append(wire, payload...), offset: offset, published: published}
}

// size is what the frame counts against a write queue's byte cap.
func (f *frame) size() int { return len(f.wire) }
