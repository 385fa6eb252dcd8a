package gateway

import (
	"errors"
	"net/http"
	"time"

	"github.com/heraldgw/herald/gateway/internal/ssetransport"
	"github.com/heraldgw/herald/gateway/internal/wire"
)

// What a session is to the SSE transport, checked by the compiler.
var (
	_ transport            = (*ssetransport.Conn)(nil)
	_ ssetransport.Session = (*session)(nil)
)

// sseRetry is the reconnection delay an event stream suggests to EventSource.
const sseRetry = 2 * time.Second

// serveSSE is GET /sse: a client's session over Server-Sent Events. It is admitted as a
// WebSocket client is (admitClient: a refusal is an HTTP status), with Last-Event-ID
// (which wins over since) as its resume point; then the transport takes the connection
// and the session runs as any other.
func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request) {
	a, ok := s.admitClient(w, r, r.Header.Get("Last-Event-ID"))
	if !ok {
		return // answered and counted
	}
	t, err := ssetransport.Open(&s.sse, w, s.corsHeader(r))
	if err != nil {
		a.release()
		if errors.Is(err, ssetransport.ErrNoHijack) {
			s.refuse(w, http.StatusHTTPVersionNotSupported, "bad_handshake", err.Error())
		}
		return
	}
	c := newSession(&s.sessionDeps, a.user, t, t.Socket(), t.Encoding())
	t.Init(c, &c.Queue)
	s.startSession(c, t, a, t.Refuse, c.welcomeResumable)
}

// welcomeResumable is welcome for a stream that resumes nothing: its event carries the
// newest offset as its id, so that a client that reconnects before its first message
// resumes from where its live delivery began.
func (c *session) welcomeResumable(newest int64, known bool) {
	wf := welcomeFrame{Op: "welcome", Conn: c.id, Node: c.deps.nodeID, User: c.user}
	if known {
		wf.Offset = &newest
	}
	f := wire.Reply(wf)
	if known {
		f.ResumeAfter = newest
	}
	c.Enqueue(f)
}

// corsHeader returns the CORS header of an answer to r from another origin that the
// origin list allows (credentials included: a cookie or an Authorization header);
// none for a same-origin request or one without Origin.
func (s *Server) corsHeader(r *http.Request) http.Header {
	h := http.Header{}
	origin := r.Header.Get("Origin")
	if origin == "" || !s.origins.Allows(r) {
		return h
	}
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Credentials", "true")
	h.Set("Vary", "Origin")
	return h
}
