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
