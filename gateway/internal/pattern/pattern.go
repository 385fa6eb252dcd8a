// Package pattern matches channel names against the patterns that permissions and
// presence are configured with: a channel name, matched exactly, or a prefix ending in
// "*", which matches every channel that starts with the prefix ("user:alice:*", or "*"
// for all). In a permission, "{sub}" stands for the token's sub (docs/PROTOCOL.md section
// 10). It imports nothing of the gateway.
package pattern

import (
	"fmt"
	"strings"

	"github.com/heraldgw/herald/producer/message"
)

// entry is one compiled pattern: prefix matched exactly, or as a prefix when wildcard.
type entry struct {
	prefix   string
	wildcard bool
}

// Set is a compiled list of patterns: what a connection may subscribe or publish to, or
// the channels that have presence. Its zero value allows nothing; it is immutable.
type Set struct {
	all     bool // every channel, and publishing to everyone
	entries []entry
}

// All is the Set that allows every channel, and publishing to everyone.
func All() Set { return Set{all: true} }

// Sub stands for the token's sub in a pattern.
const Sub = "{sub}"

// UsesSub reports whether a pattern of list has "{sub}".
func UsesSub(list []string) bool {
	for _, s := range list {
		if strings.Contains(s, Sub) {
			return true
		}
	}
	return false
}

// SafeSub reports whether sub may stand for "{sub}": 1 to 128 characters of
// A-Z a-z 0-9 _ -, so that it can neither end a channel segment (':' '/' '.') nor match
// anything but itself.
func SafeSub(sub string) bool {
	if sub == "" || len(sub) > message.MaxChannelLen {
		return false
	}
	for i := 0; i < len(sub); i++ {
		switch c := sub[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// isSeparator reports whether c separates the segments of a channel name.
func isSeparator(c byte) bool { return c == ':' || c == '/' || c == '.' }

// Check checks a list of permission patterns: braces only as "{sub}", and in a pattern
// ending in "*", every "{sub}" followed by a separator, so that one user's prefix never
// covers another's ("user:{sub}*" would give alice user:alice2).
func Check(list []string) error {
	for _, s := range list {
		s = strings.TrimSpace(s)
		if strings.Count(s, "{") != strings.Count(s, Sub) || strings.Count(s, "}") != strings.Count(s, Sub) {
			return fmt.Errorf("pattern %.140q: braces are only for {sub}", s)
		}
		if !strings.HasSuffix(s, "*") {
			continue
		}
		for rest := s; ; {
			i := strings.Index(rest, Sub)
			if i < 0 {
				break
			}
			rest = rest[i+len(Sub):]
			if rest == "" || !isSeparator(rest[0]) {
				return fmt.Errorf("pattern %.140q: {sub} must be followed by ':', '/' or '.' in a pattern ending in *", s)
			}
		}
	}
	return nil
}

// Compile compiles patterns, putting sub in place of "{sub}" (Check and SafeSub have
// passed). Whether a pattern is a wildcard is decided before the substitution, so a sub
// cannot make one. A pattern with "{sub}" gives nothing where sub is empty (an anonymous
// client).
func Compile(list []string, sub string) Set {
	var p Set
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" || sub == "" && strings.Contains(s, Sub) {
			continue
		}
		e := entry{prefix: s}
		if strings.HasSuffix(s, "*") {
			e = entry{prefix: strings.TrimSuffix(s, "*"), wildcard: true}
		}
		e.prefix = strings.ReplaceAll(e.prefix, Sub, sub)
		if e.wildcard && e.prefix == "" {
			return All()
		}
		p.entries = append(p.entries, e)
	}
	return p
}

// Allows reports whether channel is permitted; "" (everyone) only with "*".
func (p Set) Allows(channel string) bool {
	if p.all {
		return true
	}
	if channel == "" {
		return false
	}
	for _, e := range p.entries {
		if e.wildcard && strings.HasPrefix(channel, e.prefix) || !e.wildcard && channel == e.prefix {
			return true
		}
	}
	return false
}
