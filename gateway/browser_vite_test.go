package gateway_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/heraldgw/herald/gateway"
)

// viteDistEnv names the folder of the built Vite page (gateway/web/testdata/vite-app/dist)
// that TestBrowserViteBundle loads: absolute, or relative to gateway/ (where go test runs
// the package). .ci/test builds it (npm ci, then npm run build -w herald-vite-app in
// gateway/web) and runs the test with the variable set; without it the test skips, since
// a plain `go test ./...` has no node_modules to build with.
const viteDistEnv = "HERALD_VITE_DIST"

// TestBrowserViteBundle loads the page that Vite built from a TypeScript project
// importing @heraldgw/client by its name, in Chromium, against a gateway: the bundle holds
// the client (the page is served without /herald.js), connects, receives a backend
// publish, publishes with an ack, and resumes after a drop with no loss and no duplicate.
func TestBrowserViteBundle(t *testing.T) {
	dist := os.Getenv(viteDistEnv)
	if dist == "" {
		t.Skipf("%s is not set: build the page (cd gateway/web && npm ci && npm run build -w herald-vite-app) and set it to $PWD/gateway/web/testdata/vite-app/dist, as .ci/test does", viteDistEnv)
	}
	dist, err := filepath.Abs(dist)
	if err != nil {
		t.Fatal(err)
	}

	// The bundle: Vite wrote the page and its script, and the client is inside the script
	// (its subprotocol), not left as an import of the package for the browser to resolve.
	if _, err := os.Stat(filepath.Join(dist, "index.html")); err != nil {
		t.Fatalf("the built page: %v (did vite build run?)", err)
	}
	scripts, err := filepath.Glob(filepath.Join(dist, "assets", "*.js"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no script in %s/assets (err %v): did vite build run?", dist, err)
	}
	var bundle strings.Builder
	for _, s := range scripts {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		bundle.Write(b)
	}
	if !strings.Contains(bundle.String(), gateway.Subprotocol) {
		t.Fatalf("the bundle (%d bytes in %d files) does not contain the client: no %q", bundle.Len(), len(scripts), gateway.Subprotocol)
	}
	if strings.Contains(bundle.String(), "@heraldgw/client") {
		t.Fatalf("the bundle imports @heraldgw/client instead of containing it")
	}

	// One origin: the built page from dist, and /ws from the gateway. Nothing else is
	// served, so the page works only with the client it bundled.
	g := newTestGateway(t, gateway.Config{}, nil)
	files := http.FileServer(http.Dir(dist))
	var mu sync.Mutex
	var asked []string
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path)
		mu.Unlock()
		if r.URL.Path == "/ws" {
			g.srv.Handler().ServeHTTP(w, r)
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(site.Close)

	b := newBrowser(t)
	p := openPage(t, b, "vite page", site.URL+"/?channel=vite")
	p.waitFor("open", `document.getElementById("state").dataset.state === "open"`)
	var title string
	p.eval(`document.title`, &title)
	if want := "test-node " + gateway.Subprotocol; title != want {
		t.Errorf("the page's title after welcome is %q, want %q (node and SUBPROTOCOL)", title, want)
	}

	type shown struct {
		ID      string `json:"id"`
		Channel string `json:"channel"`
		Offset  string `json:"offset"`
		Text    string `json:"text"`
	}
	messages := func() []shown {
		var out []shown
		p.eval(`[...document.querySelectorAll("#messages li")].map((li) => ({
			id: li.dataset.id, channel: li.dataset.channel, offset: li.dataset.offset ?? "", text: li.textContent,
		}))`, &out)
		return out
	}

	// A backend publish reaches the page.
	id1 := mustPublish(t, g, `{"channel":"vite","data":{"text":"from the backend"}}`)
	p.waitFor("the backend's message", `document.querySelectorAll("#messages li").length >= 1`)

	// The page publishes with the bundled client and gets an ack with the message's id.
	var id2 string
	p.eval(`window.herald.publish("vite", {text: "from the page"}).then((ack) => ack.id)`, &id2)
	if id2 == "" {
		t.Fatal("the page's publish resolved with no id")
	}
	p.waitFor("the page's own message", `document.querySelectorAll("#messages li").length >= 2`)

	// Cut the connection, publish while it is down, and let the client resume.
	var state string
	p.eval(`window.herald.drop(300), window.herald.state`, &state)
	if state != "reconnecting" {
		t.Fatalf("after drop the client is %q, want reconnecting", state)
	}
	id3 := mustPublish(t, g, `{"channel":"vite","data":{"text":"while away"}}`)
	p.waitFor("the missed message, after resume", `document.querySelectorAll("#messages li").length >= 3 && window.herald.state === "open"`)

	got := messages()
	want := []shown{
		{ID: id1, Channel: "vite", Offset: "0", Text: `{"text":"from the backend"}`},
		{ID: id2, Channel: "vite", Offset: "1", Text: `{"text":"from the page"}`},
		{ID: id3, Channel: "vite", Offset: "2", Text: `{"text":"while away"}`},
	}
	if len(got) != len(want) {
		t.Fatalf("the page shows %+v, want %+v (each once)", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("message %d: the page shows %+v, want %+v", i, got[i], want[i])
		}
	}

	mu.Lock()
	defer mu.Unlock()
	for _, path := range asked {
		if path == "/herald.js" || strings.Contains(path, "heraldgw") {
			t.Errorf("the page asked for %s: the client should come from the bundle", path)
		}
	}
	t.Logf("bundle: %d bytes in %s; the page asked for %v", bundle.Len(), strings.Join(relNames(dist, scripts), ", "), asked)
}

// relNames returns paths relative to dir, for logs.
func relNames(dir string, paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		r, err := filepath.Rel(dir, p)
		if err != nil {
			r = p
		}
		out[i] = r
	}
	return out
}
