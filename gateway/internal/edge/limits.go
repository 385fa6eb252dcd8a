package edge

import (
	"container/list"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

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

// The defaults of Limits' zero fields (FrameRate and FrameBurst are four times the
// message rate and burst).
const (
	DefaultMaxConnections      = 100000
	DefaultMaxConnectionsPerIP = 1000
	DefaultHandshakeRate       = 20
	DefaultHandshakeBurst      = 100
	DefaultMessageRate         = 50
	DefaultMessageBurst        = 100
	DefaultMaxViolations       = 10
	DefaultViolationWindow     = 10 * time.Second
	DefaultMaxSubscriptions    = 256
	DefaultTrackedAddresses    = 100000
	DefaultMaxFragments        = 256
)

// SetDefaults puts the default of each zero field in its place.
func (l *Limits) SetDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.MaxConnections, DefaultMaxConnections)
	def(&l.MaxConnectionsPerIP, DefaultMaxConnectionsPerIP)
	def(&l.HandshakeBurst, DefaultHandshakeBurst)
	def(&l.MessageBurst, DefaultMessageBurst)
	def(&l.MaxViolations, DefaultMaxViolations)
	def(&l.MaxSubscriptions, DefaultMaxSubscriptions)
	def(&l.TrackedAddresses, DefaultTrackedAddresses)
	if l.HandshakeRate == 0 {
		l.HandshakeRate = DefaultHandshakeRate
	}
	if l.MessageRate == 0 {
		l.MessageRate = DefaultMessageRate
	}
	if l.ViolationWindow <= 0 {
		l.ViolationWindow = DefaultViolationWindow
	}
	if l.FrameRate == 0 && l.MessageRate > 0 {
		l.FrameRate = 4 * l.MessageRate
	}
	def(&l.FrameBurst, 4*max(l.MessageBurst, 1))
	def(&l.MaxFragments, DefaultMaxFragments)
}

// ClientIP is the address a request comes from: its peer, or where the peer is a
// trusted proxy, the rightmost address in X-Forwarded-For that is not one.
func ClientIP(r *http.Request, trusted []netip.Prefix) netip.Addr {
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

// AddrKey is what limits count a client address under: an IPv6 address by its /64,
// since one client commonly holds a whole /64.
func AddrKey(ip netip.Addr) netip.Addr {
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// Slots counts open connections, in all and by client address. Its zero value is ready;
// it is safe for concurrent use.
type Slots struct {
	mu    sync.Mutex // protects total and byIP
	total int
	byIP  map[netip.Addr]int
}

// Acquire takes a slot for a connection from ip, or names the limit that refuses it
// (metrics.LimitConnections or metrics.LimitConnectionsPerIP). release gives the slot
// back; calling it again does nothing.
func (s *Slots) Acquire(ip netip.Addr, maxTotal, maxPerIP int) (release func(), limit string) {
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

// AddrRates is a token bucket per client address, for at most max addresses: the least
// recently seen is forgotten past that, so its memory is bounded whatever the traffic.
type AddrRates struct {
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

// NewAddrRates returns buckets of perSecond tokens a second, burst at most, for at most
// max addresses.
func NewAddrRates(perSecond float64, burst, max int) *AddrRates {
	return &AddrRates{limit: rate.Limit(perSecond), burst: burst, max: max,
		order: list.New(), byIP: make(map[netip.Addr]*list.Element)}
}

// Allow takes a token from ip's bucket, reporting false when it is empty.
func (a *AddrRates) Allow(ip netip.Addr) bool {
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

// Len returns how many addresses are remembered.
func (a *AddrRates) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byIP)
}

// Origins decides which browser origins may connect: the gateway's own (same host), plus
// an allowlist of exact origins and wildcards such as https://*.example.com. It is
// immutable after NewOrigins.
type Origins struct {
	any      bool
	exact    map[string]bool
	suffixes []wildcardOrigin
}

type wildcardOrigin struct{ scheme, suffix string } // "https://", ".example.com"

// CheckAllowedOrigins checks a list of allowed origins (Config.AllowedOrigins of package
// gateway) as NewServer does.
func CheckAllowedOrigins(allowed []string) error {
	_, err := NewOrigins(allowed)
	return err
}

// NewOrigins returns the policy that allows the origins in allowed (Config.AllowedOrigins
// of package gateway), or an error naming the first it cannot read.
func NewOrigins(allowed []string) (*Origins, error) {
	p := &Origins{exact: make(map[string]bool)}
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

// TrustsCookies reports whether a cookie of r may sign its client in: r comes from the
// gateway's own origin or one listed (not merely allowed by "*": a cookie goes with
// cross-site requests too, so the origin is what stops another site from using it), or
// it has no Origin and the browser says it is same-origin (Sec-Fetch-Site, as browsers
// send with a same-origin EventSource, which has no Origin).
func (p *Origins) TrustsCookies(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return r.Header.Get("Sec-Fetch-Site") == "same-origin"
	}
	return p.allows(r, origin, false)
}

// Allows reports whether r may connect: it has no Origin header (not a browser), its
// origin's host is the host it asked for (same origin), or its origin is allowed.
func (p *Origins) Allows(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	return p.allows(r, origin, true)
}

// allows reports whether origin, r's, is r's host or one allowed; by "*" only with any.
func (p *Origins) allows(r *http.Request, origin string, any bool) bool {
	if p.any && any {
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

// Conn is a connection's edge state: who it is, what it may do, its frame rate and its
// token's expiry. The connection's read pump owns it; the expiry timer calls back only
// through the function ArmExpiry is given.
type Conn struct {
	id       *Identity
	expiry   *time.Timer
	limiter  *rate.Limiter // nil: no rate limit
	strikes  int           // frames over the rate since strikeAt
	strikeAt time.Time
	release  func() // gives back the connection's slots
	limits   *Limits
}

// NewConn returns the edge state of a connection that authenticated as id, held to
// limits; release is called when the connection ends (Stop).
func NewConn(id *Identity, limits *Limits, release func()) *Conn {
	e := &Conn{id: id, release: release, limits: limits}
	if limits.MessageRate > 0 {
		e.limiter = rate.NewLimiter(rate.Limit(limits.MessageRate), max(limits.MessageBurst, 1))
	}
	return e
}

// Identity is who the connection is and what it may do.
func (e *Conn) Identity() *Identity { return e.id }

// SetIdentity replaces the connection's identity (a refreshed token); call ArmExpiry
// after.
func (e *Conn) SetIdentity(id *Identity) { e.id = id }

// ArmExpiry (re)starts the timer that calls expired (which closes the connection with
// 1008) when the identity's token expires, after leeway. No goroutine waits for it.
func (e *Conn) ArmExpiry(leeway time.Duration, expired func()) {
	if e.expiry != nil {
		e.expiry.Stop()
		e.expiry = nil
	}
	if e.id.Expires.IsZero() {
		return
	}
	e.expiry = time.AfterFunc(time.Until(e.id.Expires.Add(leeway)), expired)
}

// Stop ends the edge state when the connection ends: the timer, and the slots.
func (e *Conn) Stop() {
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

// AllowFrame reports whether a client frame is within the connection's rate. Over it,
// it counts a violation and reports whether the violations went on too long (close 4029).
func (e *Conn) AllowFrame() (ok, tooLong bool) {
	if e == nil || e.limiter == nil || e.limiter.Allow() {
		return true, false
	}
	l := e.limits
	now := time.Now()
	if now.Sub(e.strikeAt) > l.ViolationWindow {
		e.strikes, e.strikeAt = 0, now
	}
	e.strikes++
	return false, l.MaxViolations > 0 && e.strikes > l.MaxViolations
}

// MaySubscribe reports whether the connection's permissions allow subscribing to ch.
func (e *Conn) MaySubscribe(ch string) bool { return e == nil || e.id.Subscribe.Allows(ch) }

// MayPublish reports whether the connection's permissions allow publishing to ch ("":
// to everyone).
func (e *Conn) MayPublish(ch string) bool { return e == nil || e.id.Publish.Allows(ch) }
