package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/gateway/internal/gwtest"
	"github.com/heraldgw/herald/producer/message"
)

// The browser tests drive the demo page (gateway/web) and herald.js in a real headless
// Chromium against an in-process gateway. They skip when Chromium is missing, except in
// CI (CI=true), where that is a failure.

// browserTimeout bounds each browser test, Chromium's start included.
const browserTimeout = 30 * time.Second

// chromiumPath returns the Chromium to drive.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed: CI must install Debian's chromium for the browser tests")
	}
	t.Skip("chromium is not installed (apt-get install chromium); skipping the browser tests")
	return ""
}

// newBrowser starts a headless Chromium with a fresh profile for the test. It ends with
// the test, or after browserTimeout.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), browserTimeout)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		// Tabs other than the front one must keep their timers and sockets at full speed.
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 860),
	)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
		cancel()
	})
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return browser
}

// page is one browser tab.
type page struct {
	t     *testing.T
	name  string
	ctx   context.Context
	close context.CancelFunc // closes the tab
}

// openPage opens a new tab at url and logs what its scripts print or throw.
func openPage(t *testing.T, browser context.Context, name, url string) *page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	p := &page{t: t, name: name, ctx: ctx, close: cancel}
	if err := chromedp.Do(ctx); err != nil { // opens the tab
		t.Fatalf("%s: open tab: %v", name, err)
	}
	// Log the page's console until the test ends, and not after.
	var mu sync.Mutex
	done := false
	console := chromedp.Console(ctx)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			if strings.Contains(m.URL, "/favicon.ico") {
				continue // the plain pages of TestBrowserHeraldPublishAckAndError have none
			}
			mu.Lock()
			if !done {
				t.Logf("%s console %s: %s (%s:%d)", name, m.Type, m.Text, m.URL, m.Line+1)
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		done = true
		mu.Unlock()
		cancel()
	})
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("%s: navigate to %s: %v", name, url, err)
	}
	return p
}

// openDemo opens the demo page served by g, with the query given, and waits until it is
// connected.
func openDemo(t *testing.T, browser context.Context, g *testGateway, name, query string) *page {
	t.Helper()
	p := openPage(t, browser, name, g.http.URL+"/?"+query)
	p.waitFor("connected", `document.getElementById("state").dataset.state === "open"`)
	return p
}

func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, actions...); err != nil {
		p.t.Fatalf("%s: %s: %v", p.name, what, err)
	}
}

// eval evaluates a JavaScript expression in the page, awaiting a promise, and decodes
// its value into out.
func (p *page) eval(expr string, out any) {
	p.t.Helper()
	raw, err := chromedp.Run(p.ctx, chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("%s: evaluate %.80q: %v", p.name, expr, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			p.t.Fatalf("%s: evaluate %.80q: result %s: %v", p.name, expr, raw, err)
		}
	}
}

// waitFor polls a JavaScript condition until it holds, and fails the test with the
// page's state when it does not within 15s.
func (p *page) waitFor(what, cond string) {
	p.t.Helper()
	_, err := chromedp.Run(p.ctx, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingInterval(20*time.Millisecond),
		chromedp.WithPollingTimeout(15*time.Second)))
	if err != nil {
		p.t.Fatalf("%s: waiting for %s: %v\npage state: %s", p.name, what, err, p.describe())
	}
}

// describe summarizes the demo page for failure messages.
func (p *page) describe() string {
	raw, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`(() => {
		const q = (s) => [...document.querySelectorAll(s)];
		return JSON.stringify({
			state: document.getElementById("state")?.dataset.state,
			offset: document.getElementById("seen")?.dataset.offset,
			auth: document.getElementById("auth")?.hidden === false ? document.getElementById("auth").textContent : "",
			chat: q("#chat li.msg").map((li) => li.dataset.offset + ":" + li.querySelector(".text").textContent),
			notes: q("#notes li").map((li) => li.dataset.offset + ":" + li.textContent),
			events: q("#events li").map((li) => li.textContent),
		});
	})()`))
	if err != nil {
		return fmt.Sprintf("(unreadable: %v)", err)
	}
	return raw
}

// item is one entry of the chat or notifications list, as the page shows it.
type item struct {
	Offset int64  `json:"offset"`
	ID     string `json:"id"`
	Who    string `json:"who"`
	Text   string `json:"text"`
	Mine   bool   `json:"mine"`
}

// list reads the entries of the demo's chat ("#chat li.msg") or notifications ("#notes li").
func (p *page) list(selector string) []item {
	p.t.Helper()
	var items []item
	p.eval(`[...document.querySelectorAll(`+jsString(selector)+`)].map((li) => ({
		offset: li.dataset.offset === undefined ? -1 : Number(li.dataset.offset),
		id: li.dataset.id || "",
		who: (li.querySelector(".who") || li.querySelector(".src") || {}).textContent || "",
		text: [...li.querySelectorAll(".text, .title, .body")].map((e) => e.textContent).join(" | "),
		mine: li.classList.contains("mine"),
	}))`, &items)
	return items
}

func (p *page) count(selector string) int {
	p.t.Helper()
	var n int
	p.eval(`document.querySelectorAll(`+jsString(selector)+`).length`, &n)
	return n
}

// say sends a chat message with the page's form.
func (p *page) say(text string) {
	p.t.Helper()
	p.do("send "+text,
		chromedp.SendKeys(chromedp.ID("text"), text),
		chromedp.Click(chromedp.ID("send-button")),
	)
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// artifactDir is where the tests write screenshots: $HERALD_ARTIFACTS, else a
// temporary directory of the test.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("HERALD_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// shot saves a screenshot of p (what the window shows, or what capture takes) as name in
// the artifact directory.
func shot(t *testing.T, p *page, name string, capture ...chromedp.Action[[]byte]) {
	t.Helper()
	action := chromedp.CaptureScreenshot()
	if len(capture) > 0 {
		action = capture[0]
	}
	png, err := chromedp.Run(p.ctx, action)
	if err != nil {
		t.Fatalf("%s: screenshot: %v", p.name, err)
	}
	path := filepath.Join(artifactDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of %s: %s", p.name, path)
}

// checkOnceInOrder checks that the page shows each message once, in the order of the
// bus: offsets strictly increase.
func checkOnceInOrder(t *testing.T, where string, items []item) {
	t.Helper()
	for i := 1; i < len(items); i++ {
		if items[i].Offset <= items[i-1].Offset {
			t.Errorf("%s: entry %d has offset %d after %d: want each message once, in order", where, i, items[i].Offset, items[i-1].Offset)
		}
	}
}

func mustPublish(t *testing.T, g *testGateway, body string) string {
	t.Helper()
	status, out := g.publish(testKey, body)
	if status != http.StatusAccepted {
		t.Fatalf("POST /api/publish %s: got %d %v, want 202", body, status, out)
	}
	id, _ := out["id"].(string)
	return id
}

func chatBody(name, text string) string {
	b, _ := json.Marshal(map[string]any{"channel": "room", "data": map[string]string{"name": name, "text": text}})
	return string(b)
}

func TestBrowserChatBetweenTwoPages(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	b := newBrowser(t)
	alice := openDemo(t, b, g, "alice", "name=alice")
	bob := openDemo(t, b, g, "bob", "name=bob")

	alice.say("Hi Bob! Is the deploy done?")
	bob.waitFor("alice's message", `document.querySelectorAll("#chat li.msg").length === 1`)
	bob.say("Yes: v1.4.2 is live.")
	alice.waitFor("bob's reply", `document.querySelectorAll("#chat li.msg").length === 2`)
	bob.waitFor("his own reply", `document.querySelectorAll("#chat li.msg").length === 2`)

	want := []item{{Who: "alice", Text: "Hi Bob! Is the deploy done?"}, {Who: "bob", Text: "Yes: v1.4.2 is live."}}
	var ids []string
	for _, p := range []*page{alice, bob} {
		got := p.list("#chat li.msg")
		if len(got) != len(want) {
			t.Fatalf("%s: got %d chat messages %+v, want %d", p.name, len(got), got, len(want))
		}
		for i := range want {
			if got[i].Who != want[i].Who || got[i].Text != want[i].Text {
				t.Errorf("%s: message %d: got %s: %q, want %s: %q", p.name, i, got[i].Who, got[i].Text, want[i].Who, want[i].Text)
			}
			if mine := got[i].Who == p.name; got[i].Mine != mine {
				t.Errorf("%s: message %d from %s: got mine=%v, want %v", p.name, i, got[i].Who, got[i].Mine, mine)
			}
		}
		checkOnceInOrder(t, p.name+" chat", got)
		if ids == nil {
			ids = []string{got[0].ID, got[1].ID}
		} else if got[0].ID != ids[0] || got[1].ID != ids[1] {
			t.Errorf("%s: got ids %s %s, want the same messages as alice's %v", p.name, got[0].ID, got[1].ID, ids)
		}
		var off string
		p.eval(`document.getElementById("seen").dataset.offset`, &off)
		if want := fmt.Sprint(got[1].Offset); off != want {
			t.Errorf("%s: the page resumes from offset %q, want %q (the last message's)", p.name, off, want)
		}
		var time string
		p.eval(`document.querySelector("#chat li.msg time").textContent`, &time)
		if time == "" {
			t.Errorf("%s: the chat message shows no time", p.name)
		}
	}
	// This gateway has no presence: the page says how to turn it on.
	alice.waitFor("the presence-off hint", `!document.getElementById("online-off").hidden`)
	if n := alice.count("#notes li"); n != 0 {
		t.Errorf("alice: got %d notifications, want 0: chat messages stay in the chat", n)
	}
}

func TestBrowserBackendPublishShowsInNotifications(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	b := newBrowser(t)
	p := openDemo(t, b, g, "page", "name=carol")

	id := mustPublish(t, g, `{"channel":"notifications","data":{"title":"Deploy finished","body":"v1.4.2 is live"}}`)
	p.waitFor("the notification", `document.querySelector('#notes li[data-id=`+jsString(id)+`]') !== null`)
	// A message for another channel does not reach the page; a broadcast to all does.
	mustPublish(t, g, `{"channel":"elsewhere","data":"not for this page"}`)
	all := mustPublish(t, g, `{"data":"Maintenance tonight at 22:00"}`)
	p.waitFor("the broadcast", `document.querySelector('#notes li[data-id=`+jsString(all)+`]') !== null`)

	got := p.list("#notes li")
	want := []item{
		{ID: id, Who: "notifications", Text: "Deploy finished | v1.4.2 is live"},
		{ID: all, Who: "everyone", Text: "Maintenance tonight at 22:00"},
	}
	if len(got) != len(want) {
		t.Fatalf("got notifications %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].Who != want[i].Who || got[i].Text != want[i].Text {
			t.Errorf("notification %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	checkOnceInOrder(t, "notifications", got)
	if n := p.count("#chat li"); n != 0 {
		t.Errorf("got %d chat entries, want 0: backend notifications stay out of the chat", n)
	}
}

func TestBrowserDemoScreenshot(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	b := newBrowser(t)
	alice := openDemo(t, b, g, "alice", "name=alice")
	bob := openDemo(t, b, g, "bob", "name=bob")
	alice.say("Morning! Is the v1.4.2 deploy done?")
	bob.waitFor("alice's message", `document.querySelectorAll("#chat li.msg").length === 1`)
	bob.say("Yes, rolled out to every region a minute ago.")
	mustPublish(t, g, `{"channel":"notifications","data":{"title":"Deploy finished","body":"v1.4.2 is live in all regions"}}`)
	alice.waitFor("the chat and the notification",
		`document.querySelectorAll("#chat li.msg").length === 2 && document.querySelectorAll("#notes li").length === 1`)

	shot(t, alice, "herald-demo.png")

	// The same page on a phone: one column, the whole page.
	bob.do("phone viewport", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile))
	bob.waitFor("the notification", `document.querySelectorAll("#notes li").length === 1`)
	var overflow bool
	bob.eval(`document.documentElement.scrollWidth > window.innerWidth`, &overflow)
	if overflow {
		t.Errorf("on a 390px phone the page is wider than the screen")
	}
	shot(t, bob, "herald-demo-phone.png", chromedp.FullScreenshot(100))
}

func TestBrowserResumeAfterDrop(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	b := newBrowser(t)
	// hold: the Drop button keeps the page offline for 2s, while the test publishes.
	p := openDemo(t, b, g, "page", "name=erin&hold=2000")

	var wantChat []string
	nNotes := 0
	for i := range 3 {
		text := fmt.Sprintf("before %d", i)
		mustPublish(t, g, chatBody("bot", text))
		wantChat = append(wantChat, text)
	}
	p.waitFor("the first messages", `document.querySelectorAll("#chat li.msg").length === 3`)

	p.do("drop the connection", chromedp.Click(chromedp.ID("drop")))
	p.waitFor("the page to be offline", `document.getElementById("state").dataset.state === "reconnecting"`)
	for i := range 30 {
		if i%3 == 2 {
			mustPublish(t, g, fmt.Sprintf(`{"channel":"notifications","data":{"title":"while away %d"}}`, i))
			nNotes++
			continue
		}
		text := fmt.Sprintf("while away %d", i)
		mustPublish(t, g, chatBody("bot", text))
		wantChat = append(wantChat, text)
	}
	var state string
	p.eval(`herald.state`, &state)
	if state != "reconnecting" {
		t.Fatalf("the page was %s before the burst was published, want still reconnecting: the test does not test resume", state)
	}

	p.waitFor("the page to resume", `document.getElementById("state").dataset.state === "open" &&
		document.querySelector('#events li[data-kind="resumed"]') !== null`)
	for i := range 3 {
		text := fmt.Sprintf("after %d", i)
		mustPublish(t, g, chatBody("bot", text))
		wantChat = append(wantChat, text)
	}
	p.waitFor("every message", fmt.Sprintf(`document.querySelectorAll("#chat li.msg").length >= %d &&
		document.querySelectorAll("#notes li").length >= %d`, len(wantChat), nNotes))
	time.Sleep(200 * time.Millisecond) // room for a duplicate to show up

	checkAllOnce(t, p, wantChat, nNotes)
	// In a visitor's words: what was caught up on, and no offsets.
	var log []string
	p.eval(`[...document.querySelectorAll("#events li")].map((li) => li.textContent)`, &log)
	var resumed string
	p.eval(`document.querySelector('#events li[data-kind="resumed"]').textContent`, &resumed)
	if want := "caught up on 30 missed messages"; !strings.Contains(resumed, want) {
		t.Errorf("the resume is logged as %q, want it to say %q", resumed, want)
	}
	var header string
	p.eval(`document.querySelector("header").textContent`, &header)
	for _, line := range append(log, header) {
		if strings.Contains(strings.ToLower(line), "offset") {
			t.Errorf("the page says %q: offsets mean nothing to a visitor", strings.TrimSpace(line))
		}
	}
	shot(t, p, "herald-demo-resumed.png")
}

func TestBrowserResumeAfterSlowConsumerClose(t *testing.T) {
	// The write queue holds a few messages; a burst overflows it and the gateway closes
	// the page's connection with 4008. The page reconnects with since and shows every
	// message once, in order.
	g := newTestGateway(t, gateway.Config{WriteQueueBytes: 8 << 10}, nil)
	b := newBrowser(t)
	p := openDemo(t, b, g, "page", "name=frank")

	filler := strings.Repeat("lorem ipsum ", 80) // ~1 KB a message
	var wantChat []string
	for burst := 0; gwtest.Counter(t, g.reg, "herald_slow_consumers_total") == 0; burst++ {
		if burst == 20 {
			t.Fatal("20 bursts of 40 messages never overflowed the page's write queue")
		}
		for i := range 40 {
			text := fmt.Sprintf("burst %d message %d %s", burst, i, filler)
			data, _ := json.Marshal(map[string]string{"name": "bot", "text": text})
			if _, err := g.bus.Publish(context.Background(), message.Message{Channel: "room", Data: data}); err != nil {
				t.Fatal(err)
			}
			wantChat = append(wantChat, text)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.waitFor("the close with 4008", `document.querySelector('#events li[data-code="4008"]') !== null`)
	p.waitFor("every message", fmt.Sprintf(`document.querySelectorAll("#chat li.msg").length >= %d`, len(wantChat)))
	time.Sleep(200 * time.Millisecond)
	checkAllOnce(t, p, wantChat, 0)
}

// checkAllOnce checks that the demo page shows wantChat in its chat, and nNotes
// notifications, each once and in order, and that together they are every offset the
// bus gave out (the page is subscribed to everything the test published).
func checkAllOnce(t *testing.T, p *page, wantChat []string, nNotes int) {
	t.Helper()
	chat := p.list("#chat li.msg")
	notes := p.list("#notes li")
	if len(chat) != len(wantChat) {
		t.Errorf("got %d chat messages, want %d", len(chat), len(wantChat))
	}
	for i := range min(len(chat), len(wantChat)) {
		if chat[i].Text != wantChat[i] {
			t.Errorf("chat message %d: got %.40q, want %.40q", i, chat[i].Text, wantChat[i])
			break
		}
	}
	if len(notes) != nNotes {
		t.Errorf("got %d notifications, want %d", len(notes), nNotes)
	}
	checkOnceInOrder(t, "chat", chat)
	checkOnceInOrder(t, "notifications", notes)
	seen := map[int64]int{}
	for _, it := range append(chat, notes...) {
		seen[it.Offset]++
	}
	total := int64(len(wantChat) + nNotes)
	for off := range total {
		if seen[off] != 1 {
			t.Errorf("offset %d shows %d times, want once", off, seen[off])
		}
	}
	if len(seen) != int(total) {
		t.Errorf("got %d distinct offsets, want %d (0 to %d)", len(seen), total, total-1)
	}
	var shown struct {
		Offset string `json:"offset"`
		Count  string `json:"count"`
	}
	p.eval(`({offset: document.getElementById("seen").dataset.offset, count: document.getElementById("seen").textContent})`, &shown)
	if want := fmt.Sprint(total - 1); shown.Offset != want {
		t.Errorf("the page resumes from offset %q, want %q", shown.Offset, want)
	}
	if want := fmt.Sprint(total); shown.Count != want {
		t.Errorf("the page counts %q messages, want %q", shown.Count, want)
	}
}

func TestBrowserHeraldPublishAckAndError(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	closed := newTestGateway(t, gateway.Config{DisableClientPublish: true}, nil)
	b := newBrowser(t)

	// A plain same-origin page (no demo) that imports the client the gateway serves.
	const script = `(async () => {
		const { Herald, HeraldError } = await import("/herald.js");
		const h = new Herald("/ws", { channels: ["api"] });
		const states = [];
		h.addEventListener("state", (e) => states.push(e.detail.state));
		const got = [];
		h.addEventListener("message", (e) => got.push(e.detail));
		await new Promise((resolve) => h.addEventListener("state", (e) => e.detail.state === "open" && resolve()));
		const out = { states };
		try {
			out.ack = await h.publish("api", { n: 1 });
		} catch (e) {
			out.error = { code: e.code, message: e.message, herald: e instanceof HeraldError };
		}
		await h.subscribe("extra");
		await h.publish("extra", "x").catch(() => {});
		await new Promise((resolve) => setTimeout(resolve, 300));
		out.messages = got.map((m) => ({ id: m.id, channel: m.channel, offset: m.offset }));
		h.close();
		out.final = h.state;
		return out;
	})()`
	type result struct {
		States []string `json:"states"`
		Ack    *struct {
			ID string `json:"id"`
		} `json:"ack"`
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Herald  bool   `json:"herald"`
		} `json:"error"`
		Messages []struct {
			ID      string `json:"id"`
			Channel string `json:"channel"`
			Offset  int64  `json:"offset"`
		} `json:"messages"`
		Final string `json:"final"`
	}

	var ok result
	openPage(t, b, "open gateway", g.http.URL+"/healthz").eval(script, &ok)
	if ok.Ack == nil || ok.Ack.ID == "" || ok.Error != nil {
		t.Fatalf("publish: got ack %+v error %+v, want an ack with an id", ok.Ack, ok.Error)
	}
	if len(ok.Messages) != 2 || ok.Messages[0].ID != ok.Ack.ID || ok.Messages[0].Channel != "api" ||
		ok.Messages[1].Channel != "extra" || ok.Messages[1].Offset != ok.Messages[0].Offset+1 {
		t.Errorf("got messages %+v, want the page's own publish (id %s) on api, then its publish on extra", ok.Messages, ok.Ack.ID)
	}
	if want := []string{"connecting", "open", "closed"}; strings.Join(ok.States, ",") != strings.Join(want, ",") || ok.Final != "closed" {
		t.Errorf("got states %v, final %s, want %v, final closed", ok.States, ok.Final, want)
	}

	var refused result
	openPage(t, b, "closed gateway", closed.http.URL+"/healthz").eval(script, &refused)
	if refused.Error == nil || refused.Error.Code != gateway.CodeForbidden || !refused.Error.Herald {
		t.Errorf("publish where clients may not: got ack %+v error %+v, want a HeraldError with code forbidden", refused.Ack, refused.Error)
	}
}

// onlineList reads the demo's "Online" card: "user:connections" for each user listed.
func (p *page) onlineList() []string {
	p.t.Helper()
	var out []string
	p.eval(`[...document.querySelectorAll("#online li[data-user]")].map((li) => li.dataset.user + ":" + li.dataset.connections)`, &out)
	return out
}

// TestBrowserDemoShowsWhoIsOnline: on a gateway with presence on the room and
// compression on, demo pages in Chromium show who is online, follow joins and leaves,
// and read compressed frames (Chromium offers permessage-deflate).
func TestBrowserDemoShowsWhoIsOnline(t *testing.T) {
	p := gateway.NewPresence(gateway.PresenceConfig{Node: "test-node", Channels: []string{"room"}, Interval: 100 * time.Millisecond, Logger: gwtest.Logger(t)})
	g := newTestGateway(t, gateway.Config{InsecureUserParam: true, Presence: p, Compression: true}, nil)
	b := newBrowser(t)
	alice := openDemo(t, b, g, "alice", "user=alice&name=alice")
	bob := openDemo(t, b, g, "bob", "user=bob&name=bob")
	both := `[...document.querySelectorAll("#online li[data-user]")].map((li) => li.dataset.user).join() === "alice,bob"`
	alice.waitFor("alice and bob online", both)
	bob.waitFor("alice and bob online", both)
	if got := alice.onlineList(); strings.Join(got, " ") != "alice:1 bob:1" {
		t.Errorf("alice's page lists %v, want alice:1 bob:1", got)
	}

	// A second tab of bob's and an anonymous one: bob on two connections, one anonymous.
	openDemo(t, b, g, "bob-2", "user=bob&name=bob")
	openDemo(t, b, g, "anonymous", "name=guest")
	carol := openDemo(t, b, g, "carol", "user=carol&name=carol") // her join refreshes the lists
	alice.waitFor("carol's join, bob's two tabs and the anonymous one",
		`document.querySelector('#online li[data-user="carol"]') && `+
			`document.querySelector('#online li[data-user="bob"]').dataset.connections === "2" && `+
			`document.getElementById("online-anonymous").dataset.count === "1"`)

	// A long chat message goes compressed to every page (all of them negotiated it).
	long := strings.TrimSpace(strings.Repeat("Is the deploy done yet? ", 30))
	alice.eval(`document.getElementById("text").value = `+jsString(long), nil) // typing it takes long
	alice.do("send the long message", chromedp.Click(chromedp.ID("send-button")))
	carol.waitFor("alice's long message", `[...document.querySelectorAll("#chat li.msg .text")].some((e) => e.textContent === `+jsString(long)+`)`)
	if n := gwtest.Counter(t, g.reg, "herald_compression_negotiated_total"); n != 5 {
		t.Errorf("connections that negotiated compression: got %v, want 5 (every tab)", n)
	}
	gwtest.WaitFor(t, "the long message compressed", func() bool { return gwtest.Counter(t, g.reg, "herald_compressed_frames_total") >= 1 })

	// carol closes her tab: her leave reaches the others.
	carol.close()
	alice.waitFor("carol's leave", `!document.querySelector('#online li[data-user="carol"]')`)
	shot(t, alice, "herald-demo-online.png")
}

// chatItem is one chat message as the demo shows it, with how it names its sender.
type chatItem struct {
	Who   string `json:"who"`
	User  bool   `json:"user"`  // a user the gateway vouches for
	Guest bool   `json:"guest"` // a guest's name of their choosing
	Text  string `json:"text"`
	Mine  bool   `json:"mine"`
}

func (p *page) chat() []chatItem {
	p.t.Helper()
	var out []chatItem
	p.eval(`[...document.querySelectorAll("#chat li.msg")].map((li) => ({
		who: li.querySelector(".who").textContent,
		user: li.querySelector(".who").classList.contains("user"),
		guest: li.querySelector(".tag") !== null,
		text: li.querySelector(".text").textContent,
		mine: li.classList.contains("mine"),
	}))`, &out)
	return out
}

// TestBrowserDemoChatNames: the chat name is the connection's user where it has one (read
// only, shown as a user); a guest picks a name of its own, kept per tab and shown as a
// guest's; a message is "mine" only in the tab that sent it, whatever names collide.
func TestBrowserDemoChatNames(t *testing.T) {
	g := newTestGateway(t, gateway.Config{InsecureUserParam: true, Limits: gateway.Limits{HandshakeRate: -1}}, nil)
	b := newBrowser(t)
	guest := openDemo(t, b, g, "guest", "")
	alice := openDemo(t, b, g, "alice", "user=alice")
	guest.eval(`document.getElementById("name").value = "bob"`, nil)
	guest.say("hello from a guest called bob")
	alice.waitFor("the guest's message", `document.querySelectorAll("#chat li.msg").length === 1`)
	var name struct {
		Value    string `json:"value"`
		ReadOnly bool   `json:"readOnly"`
		Kind     string `json:"kind"`
	}
	alice.eval(`({value: document.getElementById("name").value, readOnly: document.getElementById("name").readOnly,
		kind: document.getElementById("name-kind").textContent})`, &name)
	if name.Value != "alice" || !name.ReadOnly || name.Kind != "you are" {
		t.Errorf("alice's page: name %+v, want alice, read-only, labelled as her", name)
	}
	alice.say("hello from alice")
	for _, p := range []*page{guest, alice} {
		p.waitFor("both messages", `document.querySelectorAll("#chat li.msg").length === 2`)
		got := p.chat()
		want := []chatItem{
			{Who: "bob", Guest: true, Text: "hello from a guest called bob", Mine: p == guest},
			{Who: "alice", User: true, Text: "hello from alice", Mine: p == alice},
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s: message %d: got %+v, want %+v", p.name, i, got[i], want[i])
			}
		}
	}

	// Another tab does not take the first one's name; two guests of the same name are
	// told apart: a message is mine only where it was sent.
	other := openDemo(t, b, g, "other guest", "")
	var otherName string
	other.eval(`document.getElementById("name").value`, &otherName)
	if otherName == "bob" || !strings.HasPrefix(otherName, "guest-") {
		t.Errorf("a new tab's guest name: got %q, want a fresh guest-NNNN, not another tab's", otherName)
	}
	samA := openDemo(t, b, g, "sam A", "name=sam")
	samB := openDemo(t, b, g, "sam B", "name=sam")
	// A tab that joins late shows the recent conversation first (history on subscribe).
	samB.waitFor("the recent conversation", `document.querySelectorAll("#chat li.msg").length === 2`)
	samA.say("I am the first sam")
	samB.waitFor("sam A's message", `document.querySelectorAll("#chat li.msg").length === 3`)
	samA.waitFor("its own message", `document.querySelectorAll("#chat li.msg.mine").length === 1`)
	got := samB.chat()
	if len(got) != 3 || got[0].Text != "hello from a guest called bob" || got[1].Text != "hello from alice" || got[0].Mine || got[1].Mine {
		t.Errorf("sam B sees %+v, want the two earlier messages (not its own) before sam A's", got)
	} else if got[2].Mine || !got[2].Guest || got[2].Who != "sam" || got[2].Text != "I am the first sam" {
		t.Errorf("sam B sees %+v last, want sam A's message as a guest's, not its own", got[2])
	}
	shot(t, alice, "herald-demo-names.png")
}

// TestBrowserDemoUserParamHints: the page tells people to use ?user= only where the
// gateway honours it, and says so when ?user= is ignored.
func TestBrowserDemoUserParamHints(t *testing.T) {
	presence := func() *gateway.Presence {
		return gateway.NewPresence(gateway.PresenceConfig{Node: "test-node", Channels: []string{"room"}, Logger: gwtest.Logger(t)})
	}
	plain := newTestGateway(t, gateway.Config{Presence: presence()}, nil)
	demo := newTestGateway(t, gateway.Config{Presence: presence(), InsecureUserParam: true}, nil)
	b := newBrowser(t)

	p := openDemo(t, b, plain, "ignored", "user=alice")
	p.waitFor("the notice", `!document.getElementById("notice").hidden`)
	var got struct {
		Notice string `json:"notice"`
		Empty  string `json:"empty"`
		Kind   string `json:"kind"`
		Items  int    `json:"items"`
	}
	read := func(p *page) {
		p.eval(`({notice: document.getElementById("notice").hidden ? "" : document.getElementById("notice").textContent,
			empty: document.getElementById("online").dataset.empty, kind: document.getElementById("name-kind").textContent,
			items: document.querySelectorAll("#online li[data-user]").length})`, &got)
	}
	p.waitFor("the presence answer", `document.getElementById("online-anonymous").dataset.count === "1"`)
	read(p)
	if !strings.Contains(got.Notice, "?user=alice is ignored") || got.Kind != "guest name" {
		t.Errorf("?user= on a gateway that ignores it: notice %q, name kind %q; want it said ignored, and a guest", got.Notice, got.Kind)
	}
	if strings.Contains(got.Empty, "Open this page with ?user=") || got.Items != 0 {
		t.Errorf("a gateway without --insecure-user-param: the Online card says %q (%d users): it must not offer ?user=", got.Empty, got.Items)
	}
	shot(t, p, "herald-demo-user-ignored.png")

	q := openDemo(t, b, demo, "honoured", "")
	read(q)
	if !strings.Contains(got.Empty, "Open this page with ?user=NAME") || got.Notice != "" {
		t.Errorf("a gateway with --insecure-user-param: Online card %q, notice %q: want the ?user= hint and no notice", got.Empty, got.Notice)
	}
}

// TestBrowserDemoNeedsAToken: with authentication on, the page without a token says a
// token is needed and how to pass it, without trying to connect; with a refused token it
// says why (the gateway's 401) and stops; a token that does not permit the page's
// channels gets the 403's reason; a good token connects as its user; an expired one
// says so.
func TestBrowserDemoNeedsAToken(t *testing.T) {
	g := newTestGateway(t, gateway.Config{Auth: gateway.AuthConfig{Secret: testSecret, Leeway: -1}}, nil)
	b := newBrowser(t)
	room := claims{"channels": []string{"room", "notifications"}}
	authState := func(p *page) (kind, text, pill string) {
		var out struct{ Kind, Text, Pill string }
		p.eval(`({kind: document.getElementById("auth").hidden ? "" : document.getElementById("auth").dataset.kind,
			text: document.getElementById("auth").textContent, pill: document.getElementById("state").textContent})`, &out)
		return out.Kind, out.Text, out.Pill
	}

	none := openPage(t, b, "no token", g.http.URL+"/")
	none.waitFor("the token panel", `!document.getElementById("auth").hidden`)
	if kind, text, pill := authState(none); kind != "needed" || !strings.Contains(text, "?token=YOUR_JWT") || pill != "token needed" {
		t.Errorf("no token: panel %q %q, pill %q; want it to say a token is needed and how to pass it", kind, text, pill)
	}
	shot(t, none, "herald-demo-token-needed.png")
	time.Sleep(500 * time.Millisecond)
	if n := gwtest.CounterWith(t, g.reg, "herald_handshakes_refused_total", "reason", "token_missing"); n != 0 {
		t.Errorf("the page without a token tried to connect %v times, want none", n)
	}

	bad := openPage(t, b, "expired token", g.http.URL+"/?token="+hs(t, "alice", -time.Minute, room))
	bad.waitFor("the refusal", `document.getElementById("auth").dataset.kind === "refused"`)
	if _, text, _ := authState(bad); !strings.Contains(text, "401") || !strings.Contains(text, "expired") {
		t.Errorf("expired token: the page says %q, want the gateway's 401 and its reason", text)
	}
	before := gwtest.CounterWith(t, g.reg, "herald_handshakes_refused_total", "reason", "token_expired")
	time.Sleep(3 * time.Second) // herald.js would have retried by now
	if n := gwtest.CounterWith(t, g.reg, "herald_handshakes_refused_total", "reason", "token_expired"); n != before || before > 3 {
		t.Errorf("expired token: %v refused handshakes, then %v more: want the page to stop trying", before, n-before)
	}
	var state string
	bad.eval(`herald.state`, &state)
	if state != "closed" {
		t.Errorf("expired token: herald.js is %s, want closed: no loop on connection lost", state)
	}

	noChannels := openPage(t, b, "no channels claim", g.http.URL+"/?token="+hs(t, "alice", time.Hour, nil))
	noChannels.waitFor("the refusal", `document.getElementById("auth").dataset.kind === "forbidden"`)
	if _, text, _ := authState(noChannels); !strings.Contains(text, "403") || !strings.Contains(text, `"room"`) {
		t.Errorf("token without the page's channels: the page says %q, want the 403 naming the channel", text)
	}

	good := openDemo(t, b, g, "good token", "token="+hs(t, "carol", 3*time.Second, room))
	var name string
	good.eval(`document.getElementById("name").value`, &name)
	if name != "carol" {
		t.Errorf("good token: the chat name is %q, want the token's sub, carol", name)
	}
	good.waitFor("the expiry", `document.getElementById("auth").dataset.kind === "expired"`)
	shot(t, good, "herald-demo-token-expired.png")
}

// TestBrowserDemoFooterSaysWhetherTheAPIIsOn: the footer's curl comes with the truth:
// without an API key the API is off (404), and the page says so.
func TestBrowserDemoFooterSaysWhetherTheAPIIsOn(t *testing.T) {
	b := newBrowser(t)
	for _, tt := range []struct {
		name string
		g    *testGateway
		want string
		not  string
	}{
		{"no API key", newTestGatewayNoKey(t), "The backend API is off on this gateway (no API key), so this command would answer 404", ""},
		{"an API key", newTestGateway(t, gateway.Config{}, nil), "with the gateway's API key", "off"},
	} {
		p := openDemo(t, b, tt.g, tt.name, "")
		var note, curl string
		p.eval(`document.getElementById("api-note").textContent`, &note)
		p.eval(`document.getElementById("curl").textContent`, &curl)
		if !strings.Contains(note, tt.want) || tt.not != "" && strings.Contains(note, tt.not) {
			t.Errorf("%s: the footer says %q, want %q", tt.name, note, tt.want)
		}
		if !strings.Contains(curl, tt.g.http.URL+"/api/publish") {
			t.Errorf("%s: the curl %q does not name this gateway", tt.name, curl)
		}
	}
}

// TestBrowserDemoLabelsNotifications: a notification to named users is labelled for the
// page's user, not "everyone".
func TestBrowserDemoLabelsNotifications(t *testing.T) {
	g := newTestGateway(t, gateway.Config{InsecureUserParam: true}, nil)
	b := newBrowser(t)
	p := openDemo(t, b, g, "alice", "user=alice")
	direct := mustPublish(t, g, `{"users":["alice"],"data":{"title":"Your order shipped"}}`)
	all := mustPublish(t, g, `{"data":{"title":"Maintenance tonight"}}`)
	ch := mustPublish(t, g, `{"channel":"notifications","data":{"title":"Deploy finished"}}`)
	p.waitFor("three notifications", `document.querySelectorAll("#notes li").length === 3`)
	got := p.list("#notes li")
	want := map[string]string{direct: "to alice", all: "everyone", ch: "notifications"}
	for _, it := range got {
		if it.Who != want[it.ID] {
			t.Errorf("notification %q: labelled %q, want %q", it.Text, it.Who, want[it.ID])
		}
	}
	shot(t, p, "herald-demo-direct.png")
}

// TestBrowserDemoConnectionLog: the connection log fills its column: with more lines than
// the old four-line box, it reaches the bottom of the chat beside it (no empty space
// below a clipped list) and shows at least six lines at once.
func TestBrowserDemoConnectionLog(t *testing.T) {
	g := newTestGateway(t, gateway.Config{}, nil)
	b := newBrowser(t)
	p := openDemo(t, b, g, "page", "hold=100")
	for i := range 4 {
		p.do("drop", chromedp.Click(chromedp.ID("drop")))
		p.waitFor("back online", fmt.Sprintf(`document.querySelectorAll('#events li[data-kind="welcome"]').length === %d &&
			document.getElementById("state").dataset.state === "open"`, i+2))
	}
	var layout struct {
		Lines     int     `json:"lines"`
		Visible   int     `json:"visible"`
		LogBottom float64 `json:"logBottom"`
		ChatBot   float64 `json:"chatBottom"`
	}
	p.eval(`(() => {
		const feed = document.getElementById("events");
		const box = feed.getBoundingClientRect();
		const lis = [...feed.children];
		return {
			lines: lis.length,
			visible: lis.filter((li) => { const r = li.getBoundingClientRect(); return r.top >= box.top - 1 && r.bottom <= box.bottom + 1; }).length,
			logBottom: document.querySelector(".card.log").getBoundingClientRect().bottom,
			chatBottom: document.querySelector(".card.chat").getBoundingClientRect().bottom,
		};
	})()`, &layout)
	if layout.Lines < 8 {
		t.Fatalf("the log has %d lines, want 8 or more for the test", layout.Lines)
	}
	if layout.Visible < 6 {
		t.Errorf("the log shows %d of its %d lines at once, want 6 or more", layout.Visible, layout.Lines)
	}
	if d := layout.ChatBot - layout.LogBottom; d > 2 || d < -2 {
		t.Errorf("the log card ends %.0fpx above the chat card beside it, want them level (no empty space below it)", d)
	}
	shot(t, p, "herald-demo-log.png")
}
