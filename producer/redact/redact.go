// Package redact hides the secrets in URLs before they reach a log line or an error: the
// password of a URL's userinfo, and the values of query parameters whose names look like
// secrets (password, token, key, secret, signature, credential, auth, session). Every part
// of Herald that logs a URL, or returns an error that may hold one, goes through it: the
// AMQP URLs of the publisher, the consumers and the gateway's main, and the JWKS URL. It
// depends on the standard library only, so that every package may import it.
package redact

import (
	"errors"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Mask is what a hidden secret is replaced with.
const Mask = "xxxxx"

// listSplit finds the commas that start another URL of a list ("amqp://a,amqp://b"): a
// comma inside one URL (a password may hold one) is not followed by a scheme.
var listSplit = regexp.MustCompile(`,\s*[A-Za-z][A-Za-z0-9+.-]*://`)

// URL returns raw with its secrets replaced by Mask: the userinfo's password and the
// values of query parameters that look like secrets. The user name, host, port, path and
// other parameters stay, so that the line still says where. raw may be a comma-separated
// list of URLs; each is redacted. A URL that does not parse is redacted as text: all of
// its userinfo but the name goes.
func URL(raw string) string {
	if locs := listSplit.FindAllStringIndex(raw, -1); len(locs) > 0 {
		var b strings.Builder
		start := 0
		for _, loc := range locs {
			b.WriteString(one(raw[start:loc[0]]))
			b.WriteByte(',')
			start = loc[0] + 1
		}
		b.WriteString(one(raw[start:]))
		return b.String()
	}
	return one(raw)
}

// one redacts a single URL.
func one(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" {
		return asText(raw)
	}
	changed := false
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), Mask)
			changed = true
		}
	}
	if q := query(u.RawQuery); q != u.RawQuery {
		u.RawQuery, changed = q, true
	}
	if !changed {
		return raw // nothing to hide: as it was written
	}
	return u.String()
}

// asText redacts a URL that does not parse: everything between "://" (or the start) and
// the last '@' is userinfo, of which only the name before the first ':' is kept.
func asText(raw string) string {
	prefix, rest := "", raw
	if i := strings.Index(raw, "://"); i >= 0 {
		prefix, rest = raw[:i+3], raw[i+3:]
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		name, _, hasPassword := strings.Cut(rest[:at], ":")
		if hasPassword || strings.ContainsAny(name, "/?#") {
			if strings.ContainsAny(name, "/?#") {
				name = ""
			}
			rest = name + ":" + Mask + rest[at:]
		}
	}
	if q := strings.IndexByte(rest, '?'); q >= 0 {
		head, tail := rest[:q+1], rest[q+1:]
		frag := ""
		if h := strings.IndexByte(tail, '#'); h >= 0 {
			tail, frag = tail[:h], tail[h:]
		}
		rest = head + query(tail) + frag
	}
	return prefix + rest
}

// query redacts the values of the secret-looking parameters of a raw query, keeping the
// order and encoding of the others.
func query(raw string) string {
	if raw == "" {
		return raw
	}
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		k, _, hasValue := strings.Cut(p, "=")
		if !hasValue {
			continue
		}
		name, err := url.QueryUnescape(k)
		if err != nil {
			name = k
		}
		if Secret(name) {
			parts[i] = k + "=" + Mask
		}
	}
	return strings.Join(parts, "&")
}

// secretWords are the parts of a parameter name that mark its value as a secret.
var secretWords = []string{"pass", "pwd", "secret", "token", "key", "sig", "auth", "cred", "session"}

// Secret reports whether a query parameter named name looks like it holds a secret
// ("password", "access_token", "api_key", "X-Amz-Signature", "sig", ...).
func Secret(name string) bool {
	name = strings.ToLower(name)
	for _, w := range secretWords {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

// Error returns err with the secrets of raw hidden from its message: raw, as it is and
// as %q quotes it, is replaced by URL(raw), and the URL of every *url.Error in err's tree
// is redacted in place (net/url and net/http quote the URL they failed on). errors.Is and
// errors.As still see what err wraps. Call it on errors fresh from a call that was given
// raw; nil stays nil.
func Error(err error, raw string) error {
	if err == nil {
		return nil
	}
	redactURLErrors(err)
	msg := err.Error()
	safe := URL(raw)
	if raw != "" && safe != raw {
		msg = strings.ReplaceAll(msg, raw, safe)
		if q := strconv.Quote(raw); len(q) > 2 {
			msg = strings.ReplaceAll(msg, q[1:len(q)-1], safe)
		}
	}
	if msg == err.Error() {
		return err
	}
	return &redacted{msg: msg, err: err}
}

// quoted matches a Go-quoted string in an error message.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// redactURLErrors redacts the URL of every *url.Error in err's tree. The reason of a
// parse error loses what it quotes: that is a piece of the URL ("invalid port \":p4ss\"
// after host" where a '/' in a password cut the URL short).
func redactURLErrors(err error) {
	if ue, ok := err.(*url.Error); ok {
		ue.URL = URL(ue.URL)
		if ue.Op == "parse" && ue.Err != nil && quoted.MatchString(ue.Err.Error()) {
			ue.Err = errors.New(quoted.ReplaceAllString(ue.Err.Error(), "(hidden)"))
		}
	}
	switch e := err.(type) {
	case interface{ Unwrap() error }:
		if inner := e.Unwrap(); inner != nil {
			redactURLErrors(inner)
		}
	case interface{ Unwrap() []error }:
		for _, inner := range e.Unwrap() {
			redactURLErrors(inner)
		}
	}
}

// redacted is an error whose message has had secrets taken out.
type redacted struct {
	msg string
	err error
}

func (e *redacted) Error() string { return e.msg }
func (e *redacted) Unwrap() error { return e.err }
