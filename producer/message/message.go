// Package message defines the Herald message as it travels on the bus, and the rules every
// part of Herald applies to it (channel names, ids).
//
// It is a leaf package with no dependencies beyond the standard library, so that the
// gateway can share the type with the bus implementations without importing an AMQP
// client. Go services use it through producer.Message.
package message

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// NoOffset is the Offset of a message that has not been given a place in a log.
const NoOffset int64 = -1

// MaxChannelLen is the longest channel name the protocol allows.
const MaxChannelLen = 128

// MaxUserLen is the longest user id a message may name.
const MaxUserLen = 256

// Message is one notification on the bus.
//
// Routing: a message reaches the connections of the listed Users where it names users;
// otherwise the subscribers of Channel where it names one; otherwise every connection.
type Message struct {
	// ID identifies the message; a publish with an empty ID gets a generated one.
	// Publishing again with the same ID within the gateway's deduplication window
	// delivers the message once. A message that reached the log without an id (an AMQP
	// client that set no message_id) is given OffsetID of its offset by every reader.
	ID string
	// Channel is the channel the message is published to; empty means every connection.
	Channel string
	// Users, when not empty, restricts delivery to these users' connections.
	Users []string
	// From is the publishing user; empty for backend publishes.
	From string
	// Time is when the message was published; the zero time means "now" at publish.
	Time time.Time
	// Data is the payload: any JSON value.
	Data json.RawMessage
	// Offset is the message's place in the bus's log, set by the bus on delivery;
	// NoOffset where the bus keeps no log.
	Offset int64
	// Source is where the message entered Herald, for metrics: "ws" or "http" when a
	// gateway published it; empty for other publishers (Go services, herald-publish,
	// any AMQP client).
	Source string
}

// Errors returned by Validate; callers match them with errors.Is.
var (
	ErrBadChannel = errors.New("invalid channel name")
	ErrNoData     = errors.New("data is required")
	ErrBadData    = errors.New("data is not valid JSON")
	ErrBadUser    = errors.New("invalid user in users")
	ErrBadID      = errors.New("invalid message id")
)

// OffsetIDPrefix begins the id that a message published without one gets from its place
// in the log: "offset-" and the offset in decimal ("offset-4711"). Every gateway, live or
// on replay, derives the same id from the same offset. Ids from NewID are hex digits only,
// and Validate refuses an id with this prefix, so no id given at publish can take one.
const OffsetIDPrefix = "offset-"

// OffsetID returns the id of a message at offset that was published without an id.
func OffsetID(offset int64) string {
	return OffsetIDPrefix + strconv.FormatInt(offset, 10)
}

// IsOffsetID reports whether id has the form OffsetID gives: an id that no publisher
// chose, so there is no retry of it to deduplicate.
func IsOffsetID(id string) bool { return strings.HasPrefix(id, OffsetIDPrefix) }

// ValidChannel reports whether name is a channel name the protocol allows:
// 1 to 128 characters of A-Z a-z 0-9 _ - . : /.
func ValidChannel(name string) bool {
	if len(name) == 0 || len(name) > MaxChannelLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '_', c == '-', c == '.', c == ':', c == '/':
		default:
			return false
		}
	}
	return true
}

// Validate checks a message before it is published: the id (not one of the reserved
// OffsetID form), the channel name (when set), the users (non-empty strings), and the
// data (present, valid JSON).
func (m *Message) Validate() error {
	if IsOffsetID(m.ID) {
		return fmt.Errorf("%w: %q: ids beginning with %q are given by the log to messages published without one",
			ErrBadID, m.ID, OffsetIDPrefix)
	}
	if m.Channel != "" && !ValidChannel(m.Channel) {
		return fmt.Errorf("%w: %q", ErrBadChannel, m.Channel)
	}
	for _, u := range m.Users {
		if u == "" || len(u) > MaxUserLen {
			return fmt.Errorf("%w: %q", ErrBadUser, u)
		}
	}
	if len(m.Data) == 0 {
		return ErrNoData
	}
	if !json.Valid(m.Data) {
		return ErrBadData
	}
	return nil
}

// Prepare fills what a publisher must fill before a message goes on the bus: an ID when
// empty and the publish time when zero. It does not validate.
func (m *Message) Prepare(now time.Time) {
	if m.ID == "" {
		m.ID = NewID()
	}
	if m.Time.IsZero() {
		m.Time = now
	}
}

// NewID returns a random 128-bit message id in hex.
func NewID() string {
	var b [16]byte
	// crypto/rand.Read never returns an error on the platforms Go supports.
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
