package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/heraldgw/herald/gateway/internal/tail"
	"github.com/heraldgw/herald/gateway/internal/wire"
)

// historyAnswer is GET /api/history's answer: a channel's newest messages that this
// gateway holds in memory, oldest first, each as a client receives it (a message frame).
type historyAnswer struct {
	Channel  string            `json:"channel"`
	Messages []json.RawMessage `json:"messages"`
	// Complete is false when the gateway's memory may not reach back to all the messages
	// asked for (it holds fewer than limit, and may miss older ones).
	Complete bool `json:"complete"`
}

// serveHistory is GET /api/history?channel=&limit=&since= (API key): the channel's newest
// limit messages (at most HistoryMax, the default) after offset since (default: any),
// that the gateway holds in the tail of the log. Messages for listed users only are left
// out: they are not the channel's to show.
func (s *Server) serveHistory(w http.ResponseWriter, r *http.Request) {
	if !s.apiAllowed(w, r) {
		return
	}
	q := r.URL.Query()
	ch, ok := queryChannel(w, q)
	if !ok {
		return
	}
	limit := s.cfg.HistoryMax
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "limit must be a positive integer")
			return
		}
		limit = min(n, s.cfg.HistoryMax)
	}
	since := int64(-1)
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < -1 {
			writeError(w, http.StatusBadRequest, CodeBadRequest, "since must be -1 or an offset")
			return
		}
		since = n
	}
	entries, complete := s.hub.Tail().History(ch, since, limit, func(e *tail.Entry[*wire.Frame]) bool {
		return len(e.Users) == 0
	}, nil)
	ans := historyAnswer{Channel: ch, Messages: make([]json.RawMessage, len(entries)), Complete: complete}
	for i, e := range entries {
		ans.Messages[i] = e.Value.Payload()
	}
	writeJSON(w, http.StatusOK, ans)
}
