package gateway

import (
	"net/http"
	"sync"

	"github.com/heraldgw/herald/gateway/internal/wire"
)

// DispatchTrace is where one message's time went in this gateway, from the traces the
// hub keeps when HubConfig.TraceDispatches is set: served as JSON by GET
// /debug/dispatches on the admin listener. Times are Unix nanoseconds; written is 0 while
// no recipient has been written to.
type DispatchTrace struct {
	ID         string `json:"id"`
	Offset     int64  `json:"offset"`
	Recipients int    `json:"recipients"`
	// Published is the message's publish time: for a publish through a gateway, when
	// that gateway handed it to the bus; for another publisher, its own time. Where the
	// message has none, Dispatched.
	Published  int64 `json:"published_ns"`
	Dispatched int64 `json:"dispatched_ns"` // the hub began to dispatch it
	Enqueued   int64 `json:"enqueued_ns"`   // the hub had queued it to its last recipient
	Written    int64 `json:"written_ns"`    // a writer wrote it to its last recipient's socket
}

// dispatchTraces keeps the traces of the newest messages dispatched, in a ring of fixed
// size: the dispatching goroutine adds one per message, once its fan-out is done, and
// GET /debug/dispatches reads them.
type dispatchTraces struct {
	mu   sync.Mutex // protects ring and next
	ring []*wire.Trace
	next int // where the next trace goes; the oldest is there once the ring is full
}

func newDispatchTraces(n int) *dispatchTraces {
	return &dispatchTraces{ring: make([]*wire.Trace, n)}
}

func (d *dispatchTraces) add(t *wire.Trace) {
	d.mu.Lock()
	d.ring[d.next] = t
	d.next = (d.next + 1) % len(d.ring)
	d.mu.Unlock()
}

// list returns the traces held, oldest first.
func (d *dispatchTraces) list() []DispatchTrace {
	d.mu.Lock()
	ring := append(d.ring[d.next:len(d.ring):len(d.ring)], d.ring[:d.next]...)
	d.mu.Unlock()
	out := make([]DispatchTrace, 0, len(ring))
	for _, t := range ring {
		if t != nil {
			out = append(out, DispatchTrace{ID: t.ID, Offset: t.Offset, Recipients: t.Recipients,
				Published: t.Published, Dispatched: t.Dispatched, Enqueued: t.Enqueued, Written: t.LastWrite()})
		}
	}
	return out
}

// Dispatches returns the traces of the newest messages dispatched, oldest first: at most
// HubConfig.TraceDispatches, none when it is 0.
func (h *Hub) Dispatches() []DispatchTrace {
	if h.traces == nil {
		return nil
	}
	return h.traces.list()
}

// serveDispatches is GET /debug/dispatches, on the admin listener only, where the hub
// traces dispatches: {"dispatches": [...]}, oldest first.
func (s *Server) serveDispatches(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string][]DispatchTrace{"dispatches": s.hub.Dispatches()})
}
