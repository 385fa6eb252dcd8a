package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/heraldgw/herald/gateway/internal/edge"
	"github.com/heraldgw/herald/gateway/internal/logsample"
	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/producer/message"
)

// The client endpoints: what a WebSocket client sends as ops, a client of an event stream
// (which sends nothing on it) sends as POSTs, authorized by the same user token (query,
// Authorization or cookie) and its permissions, at the same rate (Limits.MessageRate,
// per client address). A POST may reach another gateway than the stream: subscriptions
// are not an endpoint, they are the stream's URL. Browsers from the allowed origins may
// call them with credentials (CORS, with preflight).
const clientAPIPrefix = "/api/client/"

// clientOps are the ops the client endpoints take, by path.
var clientOps = map[string]string{clientAPIPrefix + "publish": "publish", clientAPIPrefix + "presence": "presence"}

// serveClientPreflight answers a CORS preflight of a client endpoint: the methods and
// headers a page may use, for an allowed origin only.
func (s *Server) serveClientPreflight(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Origin") == "" || !s.origins.Allows(r) {
		writeError(w, http.StatusForbidden, "origin", "origin not allowed")
		return
	}
	h := w.Header()
	for k, v := range s.corsHeader(r) {
		h[k] = v
	}
	h.Set("Access-Control-Allow-Methods", "POST")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

// serveClientOp is POST /api/client/publish and /api/client/presence: the body is the
// op's frame without its op ({"channel":"news","data":{...}}), and the answer is the
// frame a WebSocket client would get (ack, presence) with status 200, or an error:
// {"error":{"code","message"}} with the status of the refusal.
func (s *Server) serveClientOp(w http.ResponseWriter, r *http.Request) {
	for k, v := range s.corsHeader(r) {
		w.Header()[k] = v
	}
	ip := edge.AddrKey(edge.ClientIP(r, s.cfg.Limits.TrustedProxies))
	if s.clientRates != nil && !s.clientRates.Allow(ip) {
		closeUnread(w, r)
		s.metrics.LimitHit(metrics.LimitMessageRate)
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, CodeRateLimited, fmt.Sprintf("more than %g requests a second; slow down", s.cfg.Limits.MessageRate))
		return
	}
	if !s.origins.Allows(r) {
		closeUnread(w, r)
		writeError(w, http.StatusForbidden, "origin", "origin not allowed")
		return
	}
	id, terr := s.auth.Authenticate(r, s.origins.TrustsCookies(r))
	if terr != nil {
		closeUnread(w, r)
		s.refusals.Log(slog.LevelInfo, logToken, "client request refused: token", "why", terr.Reason,
			"err", logsample.ClipErr(terr.Err), "ip", ip)
		w.Header().Set("WWW-Authenticate", `Bearer realm="herald", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, terr.Reason, "token refused: "+terr.Err.Error())
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxMessageBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("body is larger than %d bytes", s.cfg.MaxMessageBytes))
			return
		}
		writeError(w, http.StatusBadRequest, CodeBadRequest, "reading body: "+err.Error())
		return
	}
	op := clientOps[r.URL.Path]
	req, perr := decodeClientOp(op, body)
	if perr != nil {
		writeError(w, http.StatusBadRequest, perr.code, perr.msg)
		return
	}
	user := id.User
	switch op {
	case "publish":
		s.clientPublish(w, r, id, user, req)
	case "presence":
		ch := *req.Channel
		switch {
		case !s.presence.Enabled(ch):
			writeError(w, http.StatusForbidden, CodeForbidden, fmt.Sprintf("presence is off for %q on this gateway", ch))
		case !id.Subscribe.Allows(ch):
			writeError(w, http.StatusForbidden, CodeForbidden, notPermitted("see who is on", ch))
		default:
			limit := 0
			if req.Limit != nil {
				limit = *req.Limit
			}
			writeJSON(w, http.StatusOK, presenceFrame{Op: "presence", ChannelPresence: s.presence.Channel(ch, req.After, limit)})
		}
	}
}

// decodeClientOp decodes the body of a client endpoint as the frame of op, checked as a
// WebSocket client's frame is (decodeRequest).
func decodeClientOp(op string, body []byte) (request, *protocolError) {
	body = bytes.TrimSpace(body)
	if len(body) < 2 || body[0] != '{' {
		return request{}, badRequest("the body must be a JSON object")
	}
	frame := []byte(`{"op":"` + op + `"`)
	if rest := bytes.TrimSpace(body[1:]); rest[0] != '}' {
		frame = append(frame, ',')
	}
	r, perr := decodeRequest(append(frame, body[1:]...))
	if perr == nil && r.Op != op {
		return r, badRequest("the body names another op (%q) than its endpoint", r.Op)
	}
	return r, perr
}

// clientPublish puts a client's message on the bus, as a publish op does, and answers
// the ack frame.
func (s *Server) clientPublish(w http.ResponseWriter, r *http.Request, id *edge.Identity, user string, req request) {
	if s.disablePublish {
		writeError(w, http.StatusForbidden, CodeForbidden, "clients may not publish on this gateway")
		return
	}
	ch := ""
	if req.Channel != nil {
		ch = *req.Channel
	}
	if !id.Publish.Allows(ch) {
		writeError(w, http.StatusForbidden, CodeForbidden, notPermitted("publish to", ch))
		return
	}
	m := messageOf(req, user, metrics.SourceClientHTTP)
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.PublishTimeout)
	defer cancel()
	msgID, err := s.pub.publish(ctx, m)
	if err != nil {
		if isInvalid(err) {
			writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
			return
		}
		s.metrics.PublishFailed(metrics.SourceClientHTTP)
		s.logger.Warn("client HTTP publish failed", "err", err)
		writeError(w, http.StatusServiceUnavailable, CodeUnavailable, "the bus cannot take messages now; retry")
		return
	}
	s.metrics.Published(metrics.SourceClientHTTP)
	writeJSON(w, http.StatusOK, replyFrame{Op: "ack", ID: msgID})
}

// messageOf is the message a client's publish puts on the bus, from user.
func messageOf(r request, user, source string) message.Message {
	m := message.Message{ID: r.ID, From: user, Data: r.Data, Source: source}
	if r.Channel != nil {
		m.Channel = *r.Channel
	}
	return m
}
