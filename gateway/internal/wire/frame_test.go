package wire

import (
	"compress/flate"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// BenchmarkCompress is permessage-deflate's cost for one message of about 1 KB of text
// (at level 1): paid once per broadcast, whatever the number of recipients that
// negotiated it. out/in is how far it shrinks.
func BenchmarkCompress(b *testing.B) {
	var text strings.Builder
	words := strings.Fields("the order was shipped to your address and will arrive on tuesday payment received invoice for account team alpha new comment on your pull request build passed deploy finished")
	for i := 0; text.Len() < 1000; i++ {
		text.WriteString(words[(i*7)%len(words)] + " ")
	}
	payload, _ := json.Marshal(map[string]string{"op": "message", "data": text.String()})
	d := NewDeflater(256, flate.BestSpeed, nil)
	b.ReportAllocs()
	var out []byte
	for b.Loop() {
		out = d.wireOf(NewFrame(payload, 0, time.Time{}))
	}
	b.ReportMetric(float64(len(out))/float64(len(payload)), "out/in")
}

func TestEventBytes(t *testing.T) {
	msg := NewFrame([]byte(`{"op":"message","id":"a","offset":7,"data":{"x":1}}`), 7, time.Now())
	if got, want := string(msg.EventBytes()), "id: 7\nevent: message\ndata: {\"op\":\"message\",\"id\":\"a\",\"offset\":7,\"data\":{\"x\":1}}\n\n"; got != want {
		t.Errorf("message event:\n%q\nwant\n%q", got, want)
	}
	if &msg.EventBytes()[0] != &msg.EventBytes()[0] {
		t.Error("the event bytes are made again for a second connection")
	}
	reply := Reply(map[string]string{"op": "error"})
	if got, want := string(reply.EventBytes()), "event: error\ndata: {\"op\":\"error\"}\n\n"; got != want {
		t.Errorf("reply without an offset has an id line, or the wrong event:\n%q\nwant %q", got, want)
	}
	welcome := Reply(map[string]string{"op": "welcome"})
	welcome.ResumeAfter = 41
	if got := string(welcome.EventBytes()); !strings.HasPrefix(got, "id: 41\nevent: welcome\n") {
		t.Errorf("welcome that tells where the stream stands: %q", got)
	}
	if got, want := string(AppendEvent(nil, []byte("{\"a\":\r\n1,\n\"b\":2}"), -1)), "event: message\ndata: {\"a\":\ndata: 1,\ndata: \"b\":2}\n\n"; got != want {
		t.Errorf("payload with line breaks:\n%q\nwant\n%q", got, want)
	}
	if got := string((Encoding{Events: true}).AppendPing(nil, 3)); got != Heartbeat {
		t.Errorf("SSE ping = %q, want a comment", got)
	}
}
