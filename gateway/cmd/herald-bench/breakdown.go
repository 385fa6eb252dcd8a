package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// breakdownTraces is how many messages' traces compare has Herald keep
// (--trace-dispatches): more than any regime publishes.
const breakdownTraces = 20000

// Breakdown is where the time of a regime's messages went, each segment's p99 on its own
// (the p99 message of one segment is not, in general, that of another, so the four do not
// add up to the end-to-end p99):
//
//   - publish to the bus: herald-bench's publish calls, from the send until the bus
//     accepted the message (the HTTP publish's answer, the broker's confirm);
//   - bus to the hub: from the message's publish time (for a publish through the
//     gateway, when it handed the message to the bus) to the start of the hub's dispatch;
//   - hub to the last enqueue: the dispatch, until it was queued to its last recipient;
//   - last enqueue to the last write: until a writer wrote it to its last recipient.
//
// The last three come from the gateway's own stamps (GET /debug/dispatches on its admin
// listener, herald-gateway --trace-dispatches), of the messages dispatched within the
// steady-state window.
type Breakdown struct {
	Messages      int     `json:"messages"` // traced messages in the window
	PublishP99Ms  float64 `json:"publish_to_bus_p99_ms"`
	BusHubP99Ms   float64 `json:"bus_to_hub_p99_ms"`
	EnqueueP99Ms  float64 `json:"hub_to_last_enqueue_p99_ms"`
	WriteP99Ms    float64 `json:"last_enqueue_to_last_write_p99_ms"`
	HubWriteP99Ms float64 `json:"hub_to_last_write_p99_ms"` // the gateway's part, whole
}

// dispatchTrace is one message of the gateway's GET /debug/dispatches (Unix nanoseconds).
type dispatchTrace struct {
	ID         string `json:"id"`
	Recipients int    `json:"recipients"`
	Published  int64  `json:"published_ns"`
	Dispatched int64  `json:"dispatched_ns"`
	Enqueued   int64  `json:"enqueued_ns"`
	Written    int64  `json:"written_ns"`
}

// fetchDispatches reads the gateway's traces from its admin listener at adminURL.
func fetchDispatches(adminURL string) ([]dispatchTrace, error) {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(strings.TrimSuffix(adminURL, "/") + "/debug/dispatches")
	if err != nil {
		return nil, fmt.Errorf("dispatch traces: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("dispatch traces: GET /debug/dispatches: %s (a gateway without --trace-dispatches?)", resp.Status)
	}
	return parseDispatches(resp.Body)
}

func parseDispatches(r io.Reader) ([]dispatchTrace, error) {
	var body struct {
		Dispatches []dispatchTrace `json:"dispatches"`
	}
	if err := json.NewDecoder(r).Decode(&body); err != nil {
		return nil, fmt.Errorf("dispatch traces: %w", err)
	}
	return body.Dispatches, nil
}

// breakdown makes a Breakdown of the traces of the messages dispatched from from to to,
// written to at least one recipient, with the publish calls' p99 publishP99Ms.
func breakdown(traces []dispatchTrace, from, to time.Time, publishP99Ms float64) Breakdown {
	var busHub, enqueue, write, hubWrite []int64
	for _, t := range traces {
		if t.Recipients == 0 || t.Written == 0 || t.Dispatched < from.UnixNano() || t.Dispatched > to.UnixNano() {
			continue
		}
		busHub = append(busHub, t.Dispatched-t.Published)
		enqueue = append(enqueue, t.Enqueued-t.Dispatched)
		write = append(write, t.Written-t.Enqueued)
		hubWrite = append(hubWrite, t.Written-t.Dispatched)
	}
	return Breakdown{Messages: len(busHub), PublishP99Ms: publishP99Ms,
		BusHubP99Ms: p99Ms(busHub), EnqueueP99Ms: p99Ms(enqueue), WriteP99Ms: p99Ms(write), HubWriteP99Ms: p99Ms(hubWrite)}
}

// p99Ms is the 99th percentile of ns (nearest rank), in milliseconds; 0 for none.
func p99Ms(ns []int64) float64 {
	if len(ns) == 0 {
		return 0
	}
	slices.Sort(ns)
	rank := (99*len(ns) + 99) / 100 // ceil(0.99 n), 1-based
	return float64(ns[rank-1]) / 1e6
}

// String is the breakdown on one line, in milliseconds.
func (b Breakdown) String() string {
	return fmt.Sprintf("publish->bus %s | bus->hub %s | hub->last enqueue %s | last enqueue->last write %s ms (hub->last write %s ms; p99 of each, %d messages)",
		num(b.PublishP99Ms), num(b.BusHubP99Ms), num(b.EnqueueP99Ms), num(b.WriteP99Ms), num(b.HubWriteP99Ms), b.Messages)
}
