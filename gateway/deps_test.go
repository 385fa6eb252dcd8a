package gateway

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestGatewayDoesNotLinkAMQP holds the boundary of ARCHITECTURE.md: the gateway sees the
// bus through its own interfaces and never imports an AMQP client, even indirectly.
func TestGatewayDoesNotLinkAMQP(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "amqp") {
			t.Errorf("package gateway depends on %s", dep)
		}
	}
}

// TestArrowsRunOneWay holds the layout of docs/ARCHITECTURE.md: the gateway's internal
// packages import nothing of the API package, and each imports only the parts it is
// drawn with, so that the arrows run one way. A new package says here where it sits.
func TestArrowsRunOneWay(t *testing.T) {
	const module = "github.com/heraldgw/herald/"
	allowed := map[string][]string{
		"gateway/internal/gwtest":       nil,
		"gateway/internal/logsample":    nil,
		"gateway/internal/metrics":      nil,
		"gateway/internal/pending":      nil,
		"gateway/internal/pattern":      {"producer/message"},
		"gateway/internal/wire":         {"producer/message"},
		"gateway/internal/wsframe":      {"gateway/internal/wire"},
		"gateway/internal/writer":       {"gateway/internal/metrics", "gateway/internal/wire"},
		"gateway/internal/edge":         {"gateway/internal/metrics", "gateway/internal/pattern", "producer/message", "producer/redact"},
		"gateway/internal/presence":     {"gateway/internal/metrics", "gateway/internal/pattern", "gateway/internal/wire", "producer/message"},
		"gateway/internal/tail":         nil,
		"gateway/internal/catchup":      {"gateway/internal/tail", "producer/message"},
		"gateway/internal/ssetransport": {"gateway/internal/wire", "gateway/internal/writer"},
		"gateway/internal/wstransport":  {"gateway/internal/logsample", "gateway/internal/metrics", "gateway/internal/wire", "gateway/internal/writer", "gateway/internal/wsframe"},
	}
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./internal/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], module)
		want, known := allowed[pkg]
		if !known {
			t.Errorf("%s: a package this test does not place; add it, with the packages it may import", pkg)
			continue
		}
		for _, dep := range fields[1:] {
			if dep, ours := strings.CutPrefix(dep, module); ours && !slices.Contains(want, dep) {
				t.Errorf("%s imports %s: an arrow the layout does not have", pkg, dep)
			}
		}
	}
}
