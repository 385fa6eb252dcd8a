// Package pending bounds the HTTP connections a server holds that are not WebSockets:
// those accepted and not yet answered or upgraded (pending), and idle keep-alive ones. A
// client that opens connections and sends nothing, or headers and then nothing, holds a
// descriptor and a goroutine per connection until the server's read timeout; without a
// bound, enough of them take every descriptor the process has and nobody else can
// connect. A Listener closes a new connection at once while its caps are reached, so
// that the descriptors such clients can take are bounded, whatever the rate they come at.
//
// Use a Listener as the server's listener and its ConnState as the server's ConnState
// hook; together they follow each connection: accepted (pending), answered and idle
// (idle), reading its next request (pending again), upgraded (Hijacked: no longer
// followed) or closed.
package pending

import (
	"net"
	"net/http"
	"net/netip"
	"sync"
)

// Limits closed at accept (OnRefused's names).
const (
	LimitPending        = "pending_connections"        // Max
	LimitPendingPerAddr = "pending_connections_per_ip" // MaxPerAddr
	LimitIdle           = "idle_connections"           // MaxIdle: closed when it went idle
)

// DefaultMax is Config.Max where it is zero.
const DefaultMax = 10000

// Config shapes a Listener. Each zero field has the default its comment gives.
type Config struct {
	// Max caps the connections accepted and not yet answered or upgraded. Default
	// 10000; negative: no cap.
	Max int
	// MaxPerAddr caps those of one client address (an IPv6 address counts by its /64,
	// which one client commonly holds whole). Clients behind one NAT or proxy share an
	// address, so it is off by default: 0 or negative, no cap.
	MaxPerAddr int
	// MaxIdle caps the idle keep-alive connections: one that goes idle while as many are
	// idle is closed instead of kept (its client opens a new one when it needs one).
	// Default: Max; negative: no cap.
	MaxIdle int
	// OnRefused is called for each connection closed for a cap, with the cap's name (a
	// Limit constant) and the client's address: from the accepting goroutine for the
	// pending caps, from the connection's own for LimitIdle. Default: nothing.
	OnRefused func(limit string, remote net.Addr)
}

// Listener is a net.Listener that closes new connections at once while Max connections
// (or MaxPerAddr of one address) are pending, and keeps at most MaxIdle idle. It hands
// the server the connections it accepts unwrapped.
type Listener struct {
	net.Listener
	cfg Config

	// mu protects conns, byAddr, pending and idle.
	mu      sync.Mutex
	conns   map[net.Conn]*entry // the connections followed: neither upgraded nor closed
	byAddr  map[netip.Addr]int  // pending connections by address; only with MaxPerAddr
	pending int
	idle    int
}

type entry struct {
	addr  netip.Addr
	state http.ConnState // StateNew or StateActive: pending; StateIdle: idle; StateClosed: closed by MaxIdle
}

// NewListener returns a Listener over ln.
func NewListener(ln net.Listener, cfg Config) *Listener {
	if cfg.Max == 0 {
		cfg.Max = DefaultMax
	}
	if cfg.MaxIdle == 0 {
		cfg.MaxIdle = cfg.Max
	}
	if cfg.OnRefused == nil {
		cfg.OnRefused = func(string, net.Addr) {}
	}
	return &Listener{Listener: ln, cfg: cfg, conns: make(map[net.Conn]*entry), byAddr: make(map[netip.Addr]int)}
}

// Accept returns the next connection that is within the caps; it closes the others as
// they come.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if limit := l.admit(c); limit != "" {
			l.cfg.OnRefused(limit, c.RemoteAddr())
			_ = c.Close()
			continue
		}
		return c, nil
	}
}

// admit follows c as pending, or names the cap that refuses it.
func (l *Listener) admit(c net.Conn) string {
	e := &entry{addr: addrOf(c.RemoteAddr()), state: http.StateNew}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.Max > 0 && l.pending >= l.cfg.Max {
		return LimitPending
	}
	if l.cfg.MaxPerAddr > 0 && l.byAddr[e.addr] >= l.cfg.MaxPerAddr {
		return LimitPendingPerAddr
	}
	l.conns[c] = e
	l.addPending(e.addr, 1)
	return ""
}

// ConnState is the server's ConnState hook: it follows c's state.
func (l *Listener) ConnState(c net.Conn, state http.ConnState) {
	l.mu.Lock()
	e, ok := l.conns[c]
	if !ok {
		l.mu.Unlock()
		return // not accepted here, or no longer followed
	}
	tooMany := false
	switch state {
	case http.StateActive:
		if e.state == http.StateIdle { // its next request: pending again (never refused)
			l.idle--
			l.addPending(e.addr, 1)
		}
		e.state = state
	case http.StateIdle:
		if e.state != http.StateIdle && e.state != http.StateClosed {
			l.addPending(e.addr, -1)
			if l.cfg.MaxIdle > 0 && l.idle >= l.cfg.MaxIdle {
				e.state, tooMany = http.StateClosed, true
			} else {
				l.idle++
				e.state = state
			}
		}
	case http.StateHijacked, http.StateClosed:
		switch e.state {
		case http.StateIdle:
			l.idle--
		case http.StateNew, http.StateActive:
			l.addPending(e.addr, -1)
		}
		delete(l.conns, c)
	}
	l.mu.Unlock()
	if tooMany {
		l.cfg.OnRefused(LimitIdle, c.RemoteAddr())
		_ = c.Close() // the server's wait for its next request ends, and it reports StateClosed
	}
}

// addPending counts n more pending connections from addr. l.mu must be held.
func (l *Listener) addPending(addr netip.Addr, n int) {
	l.pending += n
	if l.cfg.MaxPerAddr > 0 {
		if l.byAddr[addr] += n; l.byAddr[addr] <= 0 {
			delete(l.byAddr, addr)
		}
	}
}

// Counts returns how many connections are pending and idle now.
func (l *Listener) Counts() (pending, idle int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pending, l.idle
}

// addrOf is the address a connection counts under: its IP, an IPv6 one by its /64.
func addrOf(a net.Addr) netip.Addr {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip := ta.AddrPort().Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}
