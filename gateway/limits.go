package gateway

import (
	"container/list"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/heraldgw/herald/gateway/internal/logsample"
	"github.com/heraldgw/herald/gateway/internal/metrics"
)

// Limits bounds what clients may take of a gateway. Each zero field has the default its
// comment gives; a negative one turns that limit off. Every limit hit is counted in
// herald_limits_hit_total{limit}.
type Limits struct {
	// MaxConnections caps this gateway's open WebSocket connections; over it a handshake
	// gets 503. Default 100000.
	MaxConnections int
	// MaxConnectionsPerIP caps the open connections of one client address (an IPv6
	// client counts by its /64); over it a handshake gets 429. Default 1000.
	MaxConnectionsPerIP int
	// HandshakeRate is how many handshakes per second one client address may make, on
	// average; over it, 429. Default 20.
	HandshakeRate float64
	// HandshakeBurst is how many handshakes one client address may make at once. Default 100.
	HandshakeBurst int
	// MessageRate is how many frames per second a connection may send, on average; a
	// frame over it is answered with error rate_limited and not acted on. Default 50.
	MessageRate float64
	// MessageBurst is how many frames a connection may send at once. Default 100.
	MessageBurst int
	// FrameRate is how many WebSocket frames per second a connection may send, on
	// average, of every kind: data, continuation, ping, pong and close (MessageRate counts
	// messages; pings, pongs and the fragments of a message escape it). A frame over it
	// closes the connection with 4029 at once. Default four times MessageRate, off where
	// MessageRate is off; negative: off.
	FrameRate float64
	// FrameBurst is how many frames a connection may send at once. Default four times
	// MessageBurst.
	FrameBurst int
	// MaxFragments is how many frames one message may come in; a message in more
	// closes the connection with 1009. Default 256; negative: no limit.
	MaxFragments int
	// MaxViolations is how many frames over MessageRate a connection may send within
	// ViolationWindow; one more closes it with 4029. Default 10.
	MaxViolations int
	// ViolationWindow is the window of MaxViolations. Default 10s.
	ViolationWindow time.Duration
	// MaxSubscriptions caps a connection's channel subscriptions, those named at connect
	// included; a subscribe over it gets error too_large, a connect over it HTTP 400.
	// Default 256.
	MaxSubscriptions int
	// TrustedProxies are the addresses of the proxies and load balancers in front of the
	// gateway: for a request from one of them, the client's address is taken from
	// X-Forwarded-For (the rightmost address that is not a trusted proxy). Default none:
	// X-Forwarded-For is ignored.
	TrustedProxies []netip.Prefix
	// TrackedAddresses caps how many client addresses the handshake rate limiter
	// remembers; past it, the least recently seen is forgotten. Default 100000.
	TrackedAddresses int
}

func (l *Limits) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.MaxConnections, 100000)
	def(&l.MaxConnectionsPerIP, 1000)
	def(&l.HandshakeBurst, 100)
	def(&l.MessageBurst, 100)
	def(&l.MaxViolations, 10)
	def(&l.MaxSubscriptions, 256)
	def(&l.TrackedAddresses, 100000)
	if l.HandshakeRate == 0 {
		l.HandshakeRate = 20
	}
	if l.MessageRate == 0 {
		l.MessageRate = 50
	}
	if l.ViolationWindow <= 0 {
		l.ViolationWindow = 10 * time.Second
	}
	if l.FrameRate == 0 && l.MessageRate > 0 {
		l.FrameRate = 4 * l.MessageRate
	}
	def(&l.FrameBurst, 4*max(l.MessageBurst, 1))
	def(&l.MaxFragments, 256)
}

// clientIP is the address a request comes from: its peer, or where the peer is a
// trusted proxy, the rightmost address in X-Forwarded-For that is not one.
func clientIP(r *http.Request, trusted []netip.Prefix) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{} // every unparsable peer shares one (invalid) address
	}
	ip := ap.Addr().Unmap()
	if !isTrusted(ip, trusted) {
		return ip
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return ip // a malformed hop: trust nothing to its left
		}
		ip = hop.Unmap()
		if !isTrusted(ip, trusted) {
			return ip
		}
	}
	return ip
}

func isTrusted(ip netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// addrKey is what limits count a client address under: an IPv6 address by its /64,
// since one client commonly holds a whole /64.
func addrKey(ip netip.Addr) netip.Addr {
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// connSlots counts open connections, in all and by client address.
type connSlots struct {
	mu    sync.Mutex // protects total and byIP
	total int
	byIP  map[netip.Addr]int
}

// acquire takes a slot for a connection from ip, or names the limit that refuses it.
// release gives the slot back; call it once.
func (s *connSlots) acquire(ip netip.Addr, maxTotal, maxPerIP int) (release func(), limit string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if maxTotal > 0 && s.total >= maxTotal {
		return nil, metrics.LimitConnections
	}
	if maxPerIP > 0 && s.byIP[ip] >= maxPerIP {
		return nil, metrics.LimitConnectionsPerIP
	}
	if s.byIP == nil {
		s.byIP = make(map[netip.Addr]int)
	}
	s.total++
	s.byIP[ip]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.total--
			if s.byIP[ip]--; s.byIP[ip] <= 0 {
				delete(s.byIP, ip)
			}
		})
	}, ""
}

// addrRates is a token bucket per client address, for at most max addresses: the least
// recently seen is forgotten past that, so its memory is bounded whatever the traffic.
type addrRates struct {
	limit rate.Limit
	burst int
	max   int

	mu    sync.Mutex // protects order and byIP
	order *list.List // of *addrRate, most recently seen first
	byIP  map[netip.Addr]*list.Element
}

type addrRate struct {
	ip  netip.Addr
	lim *rate.Limiter
}

func newAddrRates(perSecond float64, burst, max int) *addrRates {
	return &addrRates{limit: rate.Limit(perSecond), burst: burst, max: max,
		order: list.New(), byIP: make(map[netip.Addr]*list.Element)}
}

// allow takes a token from ip's bucket, reporting false when it is empty.
func (a *addrRates) allow(ip netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.byIP[ip]
	if ok {
		a.order.MoveToFront(e)
	} else {
		if a.order.Len() >= a.max {
			oldest := a.order.Back()
			a.order.Remove(oldest)
			delete(a.byIP, oldest.Value.(*addrRate).ip)
		}
		e = a.order.PushFront(&addrRate{ip: ip, lim: rate.NewLimiter(a.limit, a.burst)})
		a.byIP[ip] = e
	}
	return e.Value.(*addrRate).lim.Allow()
}

// len returns how many addresses are remembered.
func (a *addrRates) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byIP)
}

// originPolicy decides which browser origins may connect: the gateway's own (same
// host), plus an allowlist of exact origins and wildcards such as https://*.example.com.
type originPolicy struct {
	any      bool
	exact    map[string]bool
	suffixes []wildcardOrigin
}

type wildcardOrigin struct{ scheme, suffix string } // "https://", ".example.com"

// CheckAllowedOrigins checks a list of allowed origins (Config.AllowedOrigins) as
// NewServer does.
func CheckAllowedOrigins(allowed []string) error {
	_, err := newOriginPolicy(allowed)
	return err
}

func newOriginPolicy(allowed []string) (*originPolicy, error) {
	p := &originPolicy{exact: make(map[string]bool)}
	for _, o := range allowed {
		o = strings.ToLower(strings.TrimSpace(o))
		if o == "" {
			continue
		}
		if o == "*" {
			p.any = true
			continue
		}
		scheme, host, ok := strings.Cut(o, "://")
		if !ok || scheme == "" || host == "" || strings.ContainsAny(host, "/?#@") {
			return nil, fmt.Errorf("allowed origin %q: want scheme://host[:port], e.g. https://app.example.com or https://*.example.com", o)
		}
		if rest, ok := strings.CutPrefix(host, "*."); ok {
			if rest == "" || strings.Contains(rest, "*") {
				return nil, fmt.Errorf("allowed origin %q: a wildcard must be the first label, as in https://*.example.com", o)
			}
			p.suffixes = append(p.suffixes, wildcardOrigin{scheme: scheme + "://", suffix: "." + rest})
			continue
		}
		if strings.Contains(host, "*") {
			return nil, fmt.Errorf("allowed origin %q: a wildcard must be the first label, as in https://*.example.com", o)
		}
		p.exact[scheme+"://"+host] = true
	}
	return p, nil
}

// allows reports whether r may connect: it has no Origin header (not a browser), its
// origin's host is the host it asked for (same origin), or its origin is allowed.
func (p *originPolicy) allows(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if p.any {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	o := strings.ToLower(u.Scheme + "://" + u.Host)
	if p.exact[o] {
		return true
	}
	for _, w := range p.suffixes {
		rest, ok := strings.CutPrefix(o, w.scheme)
		if !ok {
			continue
		}
		label, ok := strings.CutSuffix(rest, w.suffix)
		if ok && label != "" && !strings.ContainsAny(label, ":/@") {
			return true
		}
	}
	return false
}

// connEdge is a connection's trust state: who it is, what it may do, its frame rate and
// its token's expiry. The read pump owns it (the expiry timer's function only asks for
// a close, which is safe from any goroutine).
type connEdge struct {
	c        *session
	id       *identity
	expiry   *time.Timer
	limiter  *rate.Limiter // nil: no rate limit
	strikes  int           // frames over the rate since strikeAt
	strikeAt time.Time
	release  func() // gives back the connection's slots
}

// newConnEdge makes c's edge state for the identity it authenticated with; release is
// called when the connection ends.
func newConnEdge(c *session, id *identity, release func()) *connEdge {
	e := &connEdge{c: c, id: id, release: release}
	l := c.deps.limits
	if l.MessageRate > 0 {
		e.limiter = rate.NewLimiter(rate.Limit(l.MessageRate), max(l.MessageBurst, 1))
	}
	e.armExpiry()
	return e
}

// armExpiry (re)starts the timer that closes the connection with 1008 when its token
// expires (after the leeway). No goroutine waits for it.
func (e *connEdge) armExpiry() {
	if e.expiry != nil {
		e.expiry.Stop()
		e.expiry = nil
	}
	if e.id.expires.IsZero() {
		return
	}
	at := e.id.expires.Add(e.c.deps.auth.leeway)
	e.expiry = time.AfterFunc(time.Until(at), e.c.tokenExpired)
}

// stop ends the edge state when the connection ends: the timer, and the slots.
func (e *connEdge) stop() {
	if e == nil {
		return
	}
	if e.expiry != nil {
		e.expiry.Stop()
	}
	if e.release != nil {
		e.release()
	}
}

// allowFrame reports whether a client frame is within the connection's rate. Over it,
// it counts a violation and reports whether the violations went on too long (close 4029).
func (e *connEdge) allowFrame() (ok, tooLong bool) {
	if e == nil || e.limiter == nil || e.limiter.Allow() {
		return true, false
	}
	l := e.c.deps.limits
	now := time.Now()
	if now.Sub(e.strikeAt) > l.ViolationWindow {
		e.strikes, e.strikeAt = 0, now
	}
	e.strikes++
	return false, l.MaxViolations > 0 && e.strikes > l.MaxViolations
}

// maySubscribe and mayPublish report whether the connection's permissions allow ch
// ("" for publish: to everyone).
func (e *connEdge) maySubscribe(ch string) bool { return e == nil || e.id.subscribe.allows(ch) }
func (e *connEdge) mayPublish(ch string) bool   { return e == nil || e.id.publish.allows(ch) }

// subscriptionsOf returns the channels c is subscribed to.
func (h *Hub) subscriptionsOf(c member) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	ms, ok := h.members[c]
	if !ok {
		return nil
	}
	out := make([]string, 0, len(ms.subs))
	for ch := range ms.subs {
		out = append(out, ch)
	}
	return out
}

// subscriptionCount returns how many channels c is subscribed to, and whether ch is
// one of them.
func (h *Hub) subscriptionCount(c member, ch string) (n int, has bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	ms, ok := h.members[c]
	if !ok {
		return 0, false
	}
	_, has = ms.subs[ch]
	return len(ms.subs), has
}

// setupEdge builds the server's authenticator, origin policy and handshake limiter
// from its config.
func (s *Server) setupEdge() error {
	auth, err := newAuthenticator(s.cfg.Auth)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if auth.enabled && s.cfg.InsecureUserParam {
		return errors.New("gateway: InsecureUserParam cannot be used with authentication: it would let any client claim any user")
	}
	s.auth = auth
	if s.origins, err = newOriginPolicy(s.cfg.AllowedOrigins); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	l := &s.cfg.Limits
	if l.HandshakeRate > 0 {
		s.handshakes = newAddrRates(l.HandshakeRate, max(l.HandshakeBurst, 1), max(l.TrackedAddresses, 1))
	}
	return nil
}

// Reasons of sampled refusal log lines (logsample.Sampler): a client may repeat any of
// them at will, so each is written a few times, then at most once a second.
const (
	logOrigin        = "origin"
	logToken         = "token"
	logChannel       = "channel"
	logConnections   = "connections"
	logConnectionsIP = "connections_per_ip"
	logHandshakeRate = "handshake_rate"
	logRateClosed    = "message_rate_closed"
	logRefresh       = "refresh"
)

// handshakeAllowed takes a token from the handshake rate of the request's client
// address, first of all checks (so that a flood of handshakes costs the gateway no
// origin or token check, and no log line, past the burst): over it, 429. It returns the
// address, which the connection's limits count it under.
func (s *Server) handshakeAllowed(w http.ResponseWriter, r *http.Request) (netip.Addr, bool) {
	ip := addrKey(clientIP(r, s.cfg.Limits.TrustedProxies))
	if s.handshakes != nil && !s.handshakes.allow(ip) {
		s.metrics.LimitHit(metrics.LimitHandshakeRate)
		s.refusals.Log(slog.LevelDebug, logHandshakeRate, "handshake refused: rate", "ip", ip)
		w.Header().Set("Retry-After", "1")
		s.refuse(w, http.StatusTooManyRequests, "rate_limited", "too many connection attempts; retry later")
		return ip, false
	}
	return ip, true
}

// admit decides, before the upgrade, whether a client whose handshake rate allowed it
// (handshakeAllowed) may connect: its origin (else 403), its token (401), its permission
// to subscribe to the channels it names (403; too many: 400), and room for one more
// connection (503 for the gateway, 429 for its address). It answers and counts a refusal
// itself, and logs it sampled, with at most a bounded prefix of what the client sent.
// When it admits, release gives the connection's slots back and must be called once.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, ip netip.Addr, channels []string) (id *identity, release func(), ok bool) {
	if !s.origins.allows(r) {
		s.refusals.Log(slog.LevelInfo, logOrigin, "handshake refused: origin not allowed",
			"origin", logsample.Clip(r.Header.Get("Origin")), "ip", ip)
		s.refuse(w, http.StatusForbidden, "origin", "origin not allowed")
		return nil, nil, false
	}
	id, terr := s.auth.authenticate(r)
	if terr != nil {
		s.refusals.Log(slog.LevelInfo, logToken, "handshake refused: token", "why", terr.reason,
			"err", logsample.ClipErr(terr.err), "ip", ip)
		w.Header().Set("WWW-Authenticate", `Bearer realm="herald", error="invalid_token"`)
		s.refuse(w, http.StatusUnauthorized, terr.reason, "token refused: "+terr.err.Error())
		return nil, nil, false
	}
	if max := s.cfg.Limits.MaxSubscriptions; max > 0 && len(channels) > max {
		s.metrics.LimitHit(metrics.LimitSubscriptions)
		s.refuse(w, http.StatusBadRequest, "bad_query", fmt.Sprintf("channels names %d channels; at most %d per connection", len(channels), max))
		return nil, nil, false
	}
	for _, ch := range channels {
		if !id.subscribe.allows(ch) {
			s.refusals.Log(slog.LevelInfo, logChannel, "handshake refused: channel not permitted",
				"user", logsample.Clip(id.user), "channel", ch, "ip", ip)
			s.refuse(w, http.StatusForbidden, CodeForbidden, fmt.Sprintf("not permitted to subscribe to %q", ch))
			return nil, nil, false
		}
	}
	release, limit := s.slots.acquire(ip, s.cfg.Limits.MaxConnections, s.cfg.Limits.MaxConnectionsPerIP)
	switch limit {
	case metrics.LimitConnections:
		s.metrics.LimitHit(limit)
		s.refusals.Log(slog.LevelWarn, logConnections, "handshake refused: the gateway is at its connection limit", "max", s.cfg.Limits.MaxConnections)
		s.refuse(w, http.StatusServiceUnavailable, "too_many_connections", "this gateway is full; connect to another")
		return nil, nil, false
	case metrics.LimitConnectionsPerIP:
		s.metrics.LimitHit(limit)
		s.refusals.Log(slog.LevelDebug, logConnectionsIP, "handshake refused: connections per address", "ip", ip)
		w.Header().Set("Retry-After", "5")
		s.refuse(w, http.StatusTooManyRequests, "too_many_connections_per_ip", "too many connections from this address")
		return nil, nil, false
	}
	return id, release, true
}
