// Package wsframe inspects the frames a WebSocket client sends (RFC 6455 section 5, and
// RFC 7692's use of RSV1) as their bytes pass from the socket to the WebSocket library,
// keeping a few bytes of state per connection. It finds what the library lets through
// or answers badly: too many frames (control and continuation frames included, which a
// limit on messages does not see), messages in too many fragments, and the framing
// errors RFC 6455 says to fail the connection for, each with its close code. The bytes of
// a frame it refuses never reach the library.
package wsframe

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/time/rate"

	"github.com/heraldgw/herald/gateway/internal/wire"
)

// Close codes of the violations (RFC 6455 section 7.4.1, and Herald's 4029).
const (
	CloseProtocolError = wire.CloseProtocolError
	CloseTooBig        = wire.CloseTooBig
	CloseRateLimited   = wire.CloseRateLimited
)

// Limits named by violations (labels of herald_limits_hit_total); a framing error names
// none.
const (
	LimitFrameRate = "frame_rate"
	LimitFragments = "fragments"
)

// Violation is why an Inspector refused a frame: the connection is to be failed with
// Code and Reason (at most 123 bytes, to fit a close frame).
type Violation struct {
	Code   int
	Reason string
	Limit  string // LimitFrameRate, LimitFragments, or "" for a framing error
}

// Error says what was refused, and the close code.
func (v *Violation) Error() string { return fmt.Sprintf("websocket: %s (close %d)", v.Reason, v.Code) }

// Inspector follows the frames of one connection's client-to-server byte stream. Its
// zero value inspects nothing until Init; the goroutine that reads the connection owns
// it (the WebSocket library's read pump), except InMessage, which it alone calls too.
type Inspector struct {
	limiter *rate.Limiter // every frame takes a token; nil: no limit
	maxFrag uint32        // frames of one message; 0: no limit

	// The frame being parsed.
	remain uint64   // payload bytes (and mask key bytes, while hn is 0) still to pass
	hdr    [10]byte // the header so far: 2 bytes, then 0, 2 or 8 of extended length
	hn     uint8    // bytes in hdr; 0 between headers
	need   uint8    // bytes hdr needs in all: 2, then 4 or 10

	deflate bool   // permessage-deflate negotiated: RSV1 marks a compressed message
	inMsg   bool   // a data message has begun and its final frame is still to come
	frags   uint32 // frames of that message so far
	failed  *Violation
}

// Config is what an Inspector enforces.
type Config struct {
	// Deflate says that permessage-deflate was negotiated: RSV1 may then be set on the
	// first frame of a data message (and on no other frame).
	Deflate bool
	// FrameRate is how many frames a second the client may send, on average, every
	// kind counted; 0 or negative: no limit.
	FrameRate float64
	// FrameBurst is how many it may send at once (at least 1).
	FrameBurst int
	// MaxFragments is how many frames one message may have; 0 or negative: no limit.
	MaxFragments int
}

// Init makes the Inspector enforce cfg from the next frame on. Call it before the first
// frame is read.
func (in *Inspector) Init(cfg Config) {
	in.deflate = cfg.Deflate
	if cfg.FrameRate > 0 {
		in.limiter = rate.NewLimiter(rate.Limit(cfg.FrameRate), max(cfg.FrameBurst, 1))
	}
	if cfg.MaxFragments > 0 {
		in.maxFrag = uint32(cfg.MaxFragments)
	}
	in.need = 2
}

// InMessage reports whether a data message is partly received: its first frame has
// passed and its final frame has not. The Inspector runs ahead of the library: the
// library may still be reading frames before that first one.
func (in *Inspector) InMessage() bool { return in.inMsg }

// Failed returns the violation the Inspector has refused a frame for, or nil.
func (in *Inspector) Failed() *Violation { return in.failed }

// Scan inspects p, the next bytes from the client. It returns how many of them may pass
// to the library: all of p, or the bytes before the header of the first frame it
// refuses, and then the violation. Once it has refused a frame it passes nothing more.
func (in *Inspector) Scan(p []byte) (int, *Violation) {
	if in.failed != nil {
		return 0, in.failed
	}
	if in.need == 0 {
		return len(p), nil // not initialised: nothing to enforce
	}
	i := 0
	for i < len(p) {
		if in.hn == 0 && in.remain > 0 { // payload (or mask key): skip it
			n := uint64(len(p) - i)
			if n > in.remain {
				n = in.remain
			}
			in.remain -= n
			i += int(n)
			continue
		}
		start := i - int(in.hn) // where this frame's header began (may be before p)
		in.hdr[in.hn] = p[i]
		in.hn++
		i++
		if in.hn < in.need {
			continue
		}
		var v *Violation
		if in.hn == 2 {
			v = in.first()
		}
		if v == nil && in.hn == in.need {
			v = in.length()
		}
		if v != nil {
			in.failed = v
			return max(start, 0), v
		}
	}
	return len(p), nil
}

// first checks a frame's first two bytes, and counts the frame. It sets need to the
// header's length, or leaves it at 2 when the length fits in them.
func (in *Inspector) first() *Violation {
	b0, b1 := in.hdr[0], in.hdr[1]
	op := b0 & wire.OpMask
	final := b0&wire.Fin != 0
	length := b1 & wire.LenMask
	switch {
	case b1&wire.Masked == 0:
		return protocol("client frame not masked")
	case b0&(wire.RSVBits&^wire.RSV1) != 0:
		return protocol("RSV2 or RSV3 set")
	case b0&wire.RSV1 != 0 && !in.deflate:
		return protocol("RSV1 set without a negotiated extension")
	}
	switch op {
	case wire.OpText, wire.OpBinary:
		if in.inMsg {
			return protocol("new data frame inside a fragmented message")
		}
		in.inMsg, in.frags = !final, 1
	case wire.OpContinuation:
		if !in.inMsg {
			return protocol("continuation frame outside a fragmented message")
		}
		if b0&wire.RSV1 != 0 {
			return protocol("RSV1 set on a continuation frame")
		}
		in.frags++
		in.inMsg = !final
	case wire.OpClose, wire.OpPing, wire.OpPong:
		switch {
		case !final:
			return protocol("fragmented control frame")
		case b0&wire.RSV1 != 0:
			return protocol("RSV1 set on a control frame")
		case length > wire.MaxControlPayload:
			return protocol("control frame longer than 125 bytes")
		case op == wire.OpClose && length == 1:
			return protocol("close frame with a 1-byte body")
		}
	default:
		return protocol(fmt.Sprintf("reserved opcode %d", op))
	}
	if in.limiter != nil && !in.limiter.Allow() {
		return &Violation{Code: CloseRateLimited, Reason: "too many frames", Limit: LimitFrameRate}
	}
	if in.maxFrag > 0 && in.frags > in.maxFrag && (op == wire.OpContinuation) {
		return &Violation{Code: CloseTooBig, Reason: fmt.Sprintf("message in more than %d fragments", in.maxFrag), Limit: LimitFragments}
	}
	switch length {
	case 126:
		in.need = 4
	case 127:
		in.need = 10
	}
	return nil
}

// length reads the frame's payload length once the header is whole, and readies the
// Inspector for the mask key and payload, then the next header.
func (in *Inspector) length() *Violation {
	var n uint64
	switch in.need {
	case 2:
		n = uint64(in.hdr[1] & wire.LenMask)
	case 4:
		n = uint64(binary.BigEndian.Uint16(in.hdr[2:4]))
	case 10:
		n = binary.BigEndian.Uint64(in.hdr[2:10])
		if n>>63 != 0 {
			return protocol("64-bit payload length with its most significant bit set")
		}
	}
	in.remain = wire.MaskKeyLen + n // the mask key (every client frame is masked), then the payload
	in.hn, in.need = 0, 2
	return nil
}

func protocol(reason string) *Violation {
	return &Violation{Code: CloseProtocolError, Reason: reason}
}
