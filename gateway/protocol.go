package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/heraldgw/herald/gateway/internal/wire"
	"github.com/heraldgw/herald/producer/message"
)

// Error codes of the error frame (docs/PROTOCOL.md section 6).
const (
	CodeBadRequest  = "bad_request"
	CodeUnknownOp   = "unknown_op"
	CodeForbidden   = "forbidden"
	CodeRateLimited = "rate_limited"
	CodeTooLarge    = "too_large"
	CodeUnavailable = "unavailable"
)

// Close codes the gateway sends besides the standard ones (docs/PROTOCOL.md section 7).
const (
	CloseSlowConsumer = wire.CloseSlowConsumer // the write queue overflowed
	CloseRateLimited  = wire.CloseRateLimited  // rate limited too long
)

// Subprotocol is the WebSocket subprotocol the gateway speaks.
const Subprotocol = "herald.v1"

// Frames from the gateway to a client. Optional fields are omitted when empty.
type (
	welcomeFrame struct {
		Op     string `json:"op"`
		Conn   string `json:"conn"`
		Node   string `json:"node"`
		User   string `json:"user"`
		Offset *int64 `json:"offset,omitempty"`
	}
	messageFrame struct {
		Op      string          `json:"op"`
		ID      string          `json:"id"`
		Channel string          `json:"channel,omitempty"`
		Offset  *int64          `json:"offset,omitempty"`
		From    string          `json:"from,omitempty"`
		Time    string          `json:"time,omitempty"` // absent where the publisher gave no time
		Data    json.RawMessage `json:"data"`
		// Direct says that the message named users, so it reached only their
		// connections (the list itself is not sent: each recipient would see the others).
		Direct bool `json:"direct,omitempty"`
	}
	replyFrame struct {
		Op      string `json:"op"`
		Channel string `json:"channel,omitempty"`
		Ref     string `json:"ref,omitempty"`
		ID      string `json:"id,omitempty"`
		// Presence, on subscribed, says that join and leave events of the channel follow.
		Presence bool `json:"presence,omitempty"`
		// History, on subscribed when history was asked for, is how many of the
		// channel's messages follow before live ones; Complete says whether they are all
		// of the ones asked for that the channel had (false: the gateway's memory may not
		// reach back that far).
		History  *int  `json:"history,omitempty"`
		Complete *bool `json:"complete,omitempty"`
	}
	resumedFrame struct {
		Op      string `json:"op"`
		Since   int64  `json:"since"`
		Until   int64  `json:"until"`
		Channel string `json:"channel,omitempty"`
	}
	resetFrame struct {
		Op      string `json:"op"`
		Offset  int64  `json:"offset"`
		Channel string `json:"channel,omitempty"`
	}
	errorFrame struct {
		Op      string `json:"op"`
		Code    string `json:"code"`
		Message string `json:"message"`
		Ref     string `json:"ref,omitempty"`
	}
	// presenceFrame answers a presence op.
	presenceFrame struct {
		Op  string `json:"op"`
		Ref string `json:"ref,omitempty"`
		ChannelPresence
	}
	// refreshedFrame answers a refresh op; Exp is the new token's expiry (Unix seconds),
	// absent where the gateway does not authenticate.
	refreshedFrame struct {
		Op  string `json:"op"`
		Ref string `json:"ref,omitempty"`
		Exp int64  `json:"exp,omitempty"`
	}
)

// newMessageFrame encodes m as a message frame, once for all its recipients. received
// is when this gateway received m (zero: now): the frame's clock for the delivery latency
// where the publisher gave no time, which is never made up on the wire (the frame then
// has no time, on every gateway and on replay alike).
func newMessageFrame(m message.Message, received time.Time) *wire.Frame {
	mf := messageFrame{
		Op:      "message",
		ID:      m.ID,
		Channel: m.Channel,
		From:    m.From,
		Data:    m.Data,
	}
	if m.Offset >= 0 {
		mf.Offset = &m.Offset
	}
	mf.Direct = len(m.Users) > 0
	published := m.Time
	if !published.IsZero() {
		mf.Time = published.UTC().Format(time.RFC3339Nano)
	} else if published = received; published.IsZero() {
		published = time.Now()
	}
	return wire.NewFrame(wire.Marshal(mf), m.Offset, published)
}

// request is a frame from a client. Fields not used by its op are ignored.
type request struct {
	Op      string          `json:"op"`
	Ref     string          `json:"ref"`
	Channel *string         `json:"channel"`
	Since   *int64          `json:"since"`
	Data    json.RawMessage `json:"data"`
	ID      string          `json:"id"`    // publish: the message's id; empty: one is given
	Token   string          `json:"token"` // refresh
	// Presence, on subscribe, asks for the channel's join and leave events; Limit and
	// After page a presence answer. They are read (into the fields below) only for the
	// ops that use them, so that other ops ignore them as before.
	PresenceRaw json.RawMessage `json:"presence"`
	LimitRaw    json.RawMessage `json:"limit"`
	AfterRaw    json.RawMessage `json:"after"`
	HistoryRaw  json.RawMessage `json:"history"`
	History     int             `json:"-"` // subscribe: the channel's newest messages held, to send first
	Presence    bool            `json:"-"`
	Limit       *int            `json:"-"`
	After       string          `json:"-"`
}

// optional decodes an optional field of a request, raw (absent: nil), into v.
func optional(raw json.RawMessage, name string, v any) *protocolError {
	if len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return badRequest("field %q has the wrong type", name)
	}
	return nil
}

// protocolError is a refused client op: the code and message of the error frame.
type protocolError struct {
	code, msg string
}

func (e *protocolError) Error() string { return e.code + ": " + e.msg }

func badRequest(format string, args ...any) *protocolError {
	return &protocolError{code: CodeBadRequest, msg: fmt.Sprintf(format, args...)}
}

// decodeRequest parses and checks one client frame (valid UTF-8 already). On error it
// returns the ref it could read, so that the error frame can echo it.
func decodeRequest(data []byte) (request, *protocolError) {
	var r request
	if len(data) == 0 || data[0] != '{' {
		data = bytes.TrimLeft(data, " \t\r\n")
	}
	if len(data) == 0 || data[0] != '{' {
		return r, badRequest("a frame must be a JSON object")
	}
	if err := json.Unmarshal(data, &r); err != nil {
		var salvage struct {
			Ref string `json:"ref"`
		}
		_ = json.Unmarshal(data, &salvage)
		r = request{Ref: salvage.Ref}
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return r, badRequest("field %q has the wrong type", typeErr.Field)
		}
		return r, badRequest("invalid JSON")
	}
	switch r.Op {
	case "":
		return r, badRequest("missing op")
	case "subscribe", "unsubscribe":
		if r.Channel == nil || !message.ValidChannel(*r.Channel) {
			return r, badRequest("%s needs a channel of 1 to 128 characters of A-Z a-z 0-9 _ - . : /", r.Op)
		}
		if r.Since != nil && *r.Since < -1 {
			return r, badRequest("since must be -1 or an offset")
		}
		if r.Op == "subscribe" {
			if perr := optional(r.PresenceRaw, "presence", &r.Presence); perr != nil {
				return r, perr
			}
			if perr := optional(r.HistoryRaw, "history", &r.History); perr != nil {
				return r, perr
			}
			switch {
			case r.History < 0:
				return r, badRequest("history must be 0 or more")
			case r.History > 0 && r.Since != nil:
				return r, badRequest("subscribe takes since or history, not both")
			}
		}
	case "publish":
		if r.Channel != nil && !message.ValidChannel(*r.Channel) {
			return r, badRequest("publish channel must be 1 to 128 characters of A-Z a-z 0-9 _ - . : /")
		}
		if len(r.Data) == 0 {
			return r, badRequest("publish needs data")
		}
		if jsonDepth(r.Data) > maxDataDepth {
			return r, badRequest("data nests deeper than %d levels", maxDataDepth)
		}
	case "presence":
		if r.Channel == nil || !message.ValidChannel(*r.Channel) {
			return r, badRequest("presence needs a channel of 1 to 128 characters of A-Z a-z 0-9 _ - . : /")
		}
		if perr := optional(r.LimitRaw, "limit", &r.Limit); perr != nil {
			return r, perr
		}
		if perr := optional(r.AfterRaw, "after", &r.After); perr != nil {
			return r, perr
		}
		if r.Limit != nil && *r.Limit < 1 {
			return r, badRequest("limit must be at least 1")
		}
	case "refresh":
		if r.Token == "" {
			return r, badRequest("refresh needs a token")
		}
	default:
		return r, &protocolError{code: CodeUnknownOp, msg: fmt.Sprintf("unknown op %q", r.Op)}
	}
	return r, nil
}

// maxDataDepth is how deep the data of a client publish may nest arrays and objects.
const maxDataDepth = 64

// jsonDepth returns how deeply arrays and objects nest in data, valid JSON.
func jsonDepth(data []byte) int {
	depth, deepest, inString := 0, 0, false
	for i := 0; i < len(data); i++ {
		switch b := data[i]; {
		case inString:
			switch b {
			case '\\':
				i++ // skip the escaped byte
			case '"':
				inString = false
			}
		case b == '"':
			inString = true
		case b == '[' || b == '{':
			depth++
			deepest = max(deepest, depth)
		case b == ']' || b == '}':
			depth--
		}
	}
	return deepest
}
