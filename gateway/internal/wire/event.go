package wire

import (
	"bytes"
	"slices"
	"strconv"
)

// Heartbeat is the comment a Server-Sent Events stream is pinged with: it keeps proxies
// from timing the stream out, and finds a client that went away; no EventSource
// dispatches it.
const Heartbeat = ":\n\n"

// EventBytes returns the frame as a Server-Sent Event (the WHATWG HTML standard, section
// 9.2): `id: <offset>` where the frame carries one (a message's offset, or ResumeAfter;
// never an empty id, which would clear the browser's last event id), `event: <op>`
// (message, welcome, resumed, reset, join, leave, error...), and the frame's JSON object
// as data. Made once, by the first writer that needs it, and shared by every other.
func (f *Frame) EventBytes() []byte {
	f.eventOnce.Do(func() { f.event = AppendEvent(nil, f.Payload(), f.eventID()) })
	return f.event
}

// eventID is the id of the frame's event; negative: none.
func (f *Frame) eventID() int64 {
	if f.Offset >= 0 {
		return f.Offset
	}
	return f.ResumeAfter
}

// AppendEvent appends the event of a frame's JSON object payload to buf, with id unless
// it is negative. The event's name is the object's op (its first member, as the gateway
// writes every frame); "message" where it has none. A payload that holds a line break
// (compact JSON never does) is split over several data lines, which the client joins
// with the same line breaks.
func AppendEvent(buf, payload []byte, id int64) []byte {
	buf = slices.Grow(buf, len(payload)+48)
	if id >= 0 {
		buf = append(buf, "id: "...)
		buf = strconv.AppendInt(buf, id, 10)
		buf = append(buf, '\n')
	}
	buf = append(buf, "event: "...)
	buf = append(buf, opOf(payload)...)
	buf = append(buf, '\n')
	for {
		i := bytes.IndexAny(payload, "\r\n")
		if i < 0 {
			break
		}
		buf = append(append(buf, "data: "...), payload[:i]...)
		buf = append(buf, '\n')
		if payload[i] == '\r' && i+1 < len(payload) && payload[i+1] == '\n' {
			i++
		}
		payload = payload[i+1:]
	}
	buf = append(append(buf, "data: "...), payload...)
	return append(buf, '\n', '\n')
}

// opOf returns the op of a frame's JSON object, `{"op":"<op>",...`, or "message".
func opOf(payload []byte) []byte {
	rest, ok := bytes.CutPrefix(payload, []byte(`{"op":"`))
	if !ok {
		return []byte("message")
	}
	i := bytes.IndexByte(rest, '"')
	if i <= 0 || i > 32 || bytes.ContainsAny(rest[:i], "\\\r\n") {
		return []byte("message")
	}
	return rest[:i]
}
