package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

var errUsage = errors.New("usage")

// runConfig is one load run: the connections, and what is published to them.
type runConfig struct {
	Preset        string
	Target        string
	Channel       string
	Conns         int
	Stalled       int
	StalledRcvBuf int
	ConnectRate   int
	SourceAddrs   int
	Rate          float64
	Duration      time.Duration
	Warmup        time.Duration
	Messages      int
	DataBytes     int
	DataText      bool
	Compression   bool
	Settle        time.Duration
	DrainWait     time.Duration
	PID           int
	PprofURL      string
	PprofOut      string
	AdminURL      string
	JSON          bool
	Receiver      string
	Transport     string
	QuietBelow    float64
	QuietWait     time.Duration
	Pub           publisherConfig
	// FillTail, when positive, is the gateway's cap of the tail of the log (its
	// --tail-bytes, or --retain-bytes on the embedded bus): before the RSS baseline the
	// run publishes until the tail is full, and reports it beside RSS per connection.
	FillTail   byteSize
	MetricsURL string
}

// presets are the regimes of issue 8. Flags given on the command line win over them.
var presets = map[string]func(*runConfig){
	"A":    func(c *runConfig) { c.Conns, c.Rate, c.Duration = 1000, 100, 20*time.Second },
	"B":    func(c *runConfig) { c.Conns, c.Rate, c.Duration = 1000, 500, 20*time.Second },
	"C":    func(c *runConfig) { c.Conns, c.Rate, c.Duration = 10000, 5, 30*time.Second },
	"p99":  func(c *runConfig) { c.Conns, c.Rate, c.Duration = 1000, 200, 20*time.Second },
	"idle": func(c *runConfig) { c.Rate = 0 },
}

func defaultRunConfig() runConfig {
	return runConfig{
		Target:        "127.0.0.1:8080",
		Channel:       "bench",
		Conns:         1000,
		StalledRcvBuf: 4096,
		ConnectRate:   2000,
		SourceAddrs:   16,
		Rate:          100,
		Duration:      20 * time.Second,
		Warmup:        5 * time.Second,
		DataBytes:     100,
		Settle:        3 * time.Second,
		DrainWait:     15 * time.Second,
		Receiver:      "epoll",
		Transport:     "ws",
		QuietBelow:    20,
		QuietWait:     3 * time.Minute,
		Pub:           publisherConfig{Kind: "http", Exchange: "herald", Conns: 4},
	}
}

// presetIn returns the value of -preset in args, before the flags are parsed, so that
// the preset can set the defaults that the other flags override.
func presetIn(args []string) string {
	for i, a := range args {
		a = strings.TrimLeft(a, "-")
		if v, ok := strings.CutPrefix(a, "preset="); ok {
			return v
		}
		if a == "preset" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// bindRunFlags defines the flags of a load run on fs, with cfg's values as defaults.
func bindRunFlags(fs *flag.FlagSet, c *runConfig) {
	fs.StringVar(&c.Preset, "preset", c.Preset, "regime: A (1k conns, 100 msg/s), B (1k, 500 msg/s), C (10k, 5 msg/s), p99 (1k, 200 msg/s), idle (no messages)")
	fs.StringVar(&c.Target, "target", c.Target, "gateway host:port (127.0.0.0/8 only)")
	fs.StringVar(&c.Channel, "channel", c.Channel, "channel the clients subscribe to and messages are published to")
	fs.IntVar(&c.Conns, "conns", c.Conns, "receiving connections")
	fs.IntVar(&c.Stalled, "stalled", c.Stalled, "extra connections that subscribe and never read")
	fs.IntVar(&c.StalledRcvBuf, "stalled-rcvbuf", c.StalledRcvBuf, "SO_RCVBUF of stalled connections, so they stall soon (0: the kernel's default)")
	fs.IntVar(&c.ConnectRate, "connect-rate", c.ConnectRate, "connections opened per second while ramping up")
	fs.IntVar(&c.SourceAddrs, "source-addrs", c.SourceAddrs, "dial from 127.0.0.2 .. 127.0.0.(1+n) in turn")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "messages published per second (0: connect, measure idle RSS, stop)")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "how long to publish (messages = rate x duration unless -messages)")
	fs.DurationVar(&c.Warmup, "warmup", c.Warmup, "publishing time before the steady-state window opens")
	fs.IntVar(&c.Messages, "messages", c.Messages, "messages to publish (0: rate x duration)")
	fs.IntVar(&c.DataBytes, "data-bytes", c.DataBytes, "size of each message's data (JSON with the send time)")
	fs.BoolVar(&c.DataText, "data-text", c.DataText, "pad the data with words, as a notification's text, instead of x's (which compress far better than anything real)")
	fs.BoolVar(&c.Compression, "compression", c.Compression, "receivers offer permessage-deflate (the gateway negotiates it when started with -compression)")
	fs.DurationVar(&c.Settle, "settle", c.Settle, "wait after connecting before idle RSS is read")
	fs.DurationVar(&c.DrainWait, "drain-wait", c.DrainWait, "longest wait for the last deliveries after publishing ends")
	fs.IntVar(&c.PID, "pid", c.PID, "gateway process id (default: the process listening on the target port)")
	fs.StringVar(&c.PprofURL, "pprof-url", c.PprofURL, "base URL of the gateway's net/http/pprof, to take a CPU profile over the window (e.g. http://127.0.0.1:6060)")
	fs.StringVar(&c.PprofOut, "pprof-out", "cpu.pprof", "file for the CPU profile")
	fs.StringVar(&c.AdminURL, "admin-url", c.AdminURL, "base URL of the gateway's admin listener, to read its dispatch traces after the phase (herald-gateway --trace-dispatches) for the p99 breakdown (e.g. http://127.0.0.1:6060)")
	fs.BoolVar(&c.JSON, "json", c.JSON, "print the result as JSON instead of a table")
	fs.Float64Var(&c.QuietBelow, "quiet-below", c.QuietBelow, "before connecting and before publishing, wait until the machine is less busy than this percent (0: don't wait)")
	fs.DurationVar(&c.QuietWait, "quiet-wait", c.QuietWait, "longest wait for the machine to be quiet; then the run goes on, and says so")
	fs.StringVar(&c.Receiver, "receiver", c.Receiver, "how clients read: epoll (a few goroutines read raw sockets; least CPU) or gorilla (a goroutine per connection with NextReader)")
	fs.StringVar(&c.Transport, "transport", c.Transport, "how clients receive: ws (GET /ws, WebSocket frames) or sse (GET /sse, Server-Sent Events; read with -receiver epoll)")
	fs.StringVar(&c.Pub.Kind, "publisher", c.Pub.Kind, "how to publish: http (/api/publish), amqp (producer package) or ws (publish op)")
	fs.IntVar(&c.Pub.Conns, "publish-conns", c.Pub.Conns, "publishes in flight at once (HTTP connections, AMQP confirms, WebSocket connections)")
	fs.StringVar(&c.Pub.APIKey, "api-key", c.Pub.APIKey, "bearer key of /api/publish")
	fs.StringVar(&c.Pub.AMQPURL, "amqp-url", c.Pub.AMQPURL, "RabbitMQ URL for -publisher amqp")
	fs.StringVar(&c.Pub.Exchange, "exchange", c.Pub.Exchange, "fanout exchange for -publisher amqp")
	fs.Var(&c.FillTail, "fill-tail", "the gateway's tail cap (its -tail-bytes; -retain-bytes on the embedded bus), e.g. 16MiB: before the RSS baseline, publish -data-bytes messages through /api/publish (-api-key) until herald_tail_bytes is within two messages of it; 0: no fill")
	fs.StringVar(&c.MetricsURL, "metrics-url", c.MetricsURL, "the gateway's /metrics (default: http://<target>/metrics; with -admin-addr the gateway serves it there only)")
}

func parseRunFlags(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (runConfig, error) {
	c := defaultRunConfig()
	if p := presetIn(args); p != "" {
		set, ok := presets[p]
		if !ok {
			fmt.Fprintf(stderr, "herald-bench %s: unknown preset %q: want A, B, C, p99 or idle\n", name, p)
			return c, errUsage
		}
		set(&c)
	}
	fs := flag.NewFlagSet("herald-bench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	bindRunFlags(fs, &c)
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, errUsage
		}
		return c, errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "herald-bench %s: unexpected arguments %q\n", name, fs.Args())
		return c, errUsage
	}
	if _, _, err := loopbackTarget(c.Target); err != nil {
		fmt.Fprintf(stderr, "herald-bench %s: %v\n", name, err)
		return c, errUsage
	}
	c.Pub.Target, c.Pub.Channel = c.Target, c.Channel
	if c.MetricsURL == "" {
		c.MetricsURL = "http://" + c.Target + "/metrics"
	}
	return c, nil
}

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseRunFlags("run", args, stderr, nil)
	if err != nil {
		return err
	}
	res, err := runLoad(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	if cfg.JSON {
		return writeJSON(stdout, res)
	}
	printResult(stdout, res)
	return nil
}

// Result is what one load run measured. Figures of the server come from /proc; latency
// and deliveries per second are over the steady-state window only.
type Result struct {
	Label       string         `json:"label"`
	Target      string         `json:"target"`
	Transport   string         `json:"transport"`
	Publisher   string         `json:"publisher"`
	Conns       int            `json:"conns"`
	ConnsMade   int            `json:"conns_made"`
	ConnsFailed int            `json:"conns_failed"`
	ConnErrors  map[string]int `json:"conn_errors,omitempty"`
	Stalled     int            `json:"stalled"`
	StalledMade int            `json:"stalled_made"`
	ConnectSecs float64        `json:"connect_seconds"`

	ServerPID          int     `json:"server_pid"`
	RSSBeforeKiB       int64   `json:"rss_before_kib"`
	RSSIdleKiB         int64   `json:"rss_idle_kib"`
	RSSPerIdleConnKiB  float64 `json:"rss_per_idle_conn_kib"`
	RSSPeakLoadKiB     int64   `json:"rss_peak_load_kib,omitempty"`
	ServerCPUConnectUS float64 `json:"server_cpu_per_connect_us"`
	// With -fill-tail: the cap asked, the tail when the baseline was read and once the
	// connections had settled, and the gateway's Go memory at both moments.
	TailCapBytes int64      `json:"tail_cap_bytes,omitempty"`
	TailFillSecs float64    `json:"tail_fill_seconds,omitempty"`
	TailBefore   *tailState `json:"tail_before,omitempty"`
	TailIdle     *tailState `json:"tail_idle,omitempty"`
	GoMemBefore  *goMem     `json:"go_mem_before,omitempty"`
	GoMemIdle    *goMem     `json:"go_mem_idle,omitempty"`

	Phase    *PhaseResult `json:"phase,omitempty"`
	Warnings []string     `json:"warnings,omitempty"`
}

// PhaseResult is one publishing phase: a rate held for a duration.
type PhaseResult struct {
	Rate            float64        `json:"rate"`
	Messages        int            `json:"messages"`
	Sent            int64          `json:"sent"`
	Accepted        int64          `json:"accepted"`
	PublishErrors   int64          `json:"publish_errors"`
	PublishErrKinds map[string]int `json:"publish_error_kinds,omitempty"`
	PublishRate     float64        `json:"publish_rate"`
	PublisherBehind float64        `json:"publisher_max_behind_ms"`
	Receivers       int64          `json:"receivers"`
	Expected        int64          `json:"expected"`
	Received        int64          `json:"received"`
	Lost            int64          `json:"lost"`
	// Dups is the message events (SSE only) whose id was not above the one before on
	// their stream; Lost counts the deliveries missing once they are taken away.
	Dups           int64          `json:"dups,omitempty"`
	ReceiversEnded map[string]int `json:"receivers_ended,omitempty"`

	WindowSecs       float64        `json:"window_seconds"`
	WindowDeliveries int64          `json:"window_deliveries"`
	DeliveriesPerSec float64        `json:"deliveries_per_sec"`
	Latency          latencySummary `json:"latency"`

	ServerCPUSecs       float64 `json:"server_cpu_seconds"`
	ServerCPUPercent    float64 `json:"server_cpu_percent"`
	ServerCPUPerDelivUS float64 `json:"server_cpu_per_delivery_us"`
	ToolCPUSecs         float64 `json:"tool_cpu_seconds"`
	ToolCPUPercent      float64 `json:"tool_cpu_percent"`
	ToolCPUPerDelivUS   float64 `json:"tool_cpu_per_delivery_us"`
	// From the gateway's /metrics over the window, where it has them (Herald does, the
	// baseline not): bytes written to sockets per delivery, frames compressed, and
	// deliveries per socket write (how many frames or events each write carried: the
	// more, the less CPU a delivery costs).
	WireBytesPerDeliv  float64 `json:"wire_bytes_per_delivery,omitempty"`
	CompressedFrames   float64 `json:"compressed_frames,omitempty"`
	DelivPerWrite      float64 `json:"deliveries_per_write,omitempty"`
	MachineBusyPercent float64 `json:"machine_busy_percent"`
	OtherCPUPercent    float64 `json:"other_cpu_percent"`
	Profile            string  `json:"profile,omitempty"`
	// Breakdown is where the messages' time went (with -admin-url): see Breakdown.
	Breakdown *Breakdown `json:"breakdown,omitempty"`
}

// session is a load run's connections, open until close.
type session struct {
	cfg    runConfig
	stderr io.Writer
	pid    int
	rec    *recorder
	cs     *clientSet
	pub    publisher
	res    Result
}

// runLoad opens the connections, publishes one phase (unless the rate is 0) and closes.
func runLoad(ctx context.Context, cfg runConfig, stderr io.Writer) (Result, error) {
	s, err := openSession(ctx, cfg, stderr)
	if err != nil {
		return Result{}, err
	}
	defer s.close()
	if cfg.Rate > 0 {
		ph, err := s.phase(ctx, cfg.Rate, cfg.Duration, cfg.Warmup, cfg.Messages, cfg.PprofURL)
		if err != nil {
			return s.res, err
		}
		s.res.Phase = &ph
	}
	return s.res, ctx.Err()
}

// openSession finds the server's process, reads its RSS, opens the connections (and the
// stalled ones), reads the RSS again once they have settled, and makes the publisher.
func openSession(ctx context.Context, cfg runConfig, stderr io.Writer) (*session, error) {
	ip, port, err := loopbackTarget(cfg.Target)
	if err != nil {
		return nil, err
	}
	if need := cfg.Conns + cfg.Stalled + 64; need > noFileLimit() {
		return nil, fmt.Errorf("%d connections need %d descriptors; the limit is %d", cfg.Conns+cfg.Stalled, need, noFileLimit())
	}
	cfg.Pub.Target, cfg.Pub.Channel = cfg.Target, cfg.Channel
	s := &session{cfg: cfg, stderr: stderr, rec: newRecorder(64)}
	s.cs = newClientSet(s.rec)
	sse := cfg.Transport == "sse"
	switch {
	case cfg.Transport != "ws" && !sse:
		return nil, fmt.Errorf("unknown transport %q: want ws or sse", cfg.Transport)
	case sse && cfg.Receiver != "epoll":
		return nil, errors.New("-transport sse reads with -receiver epoll only")
	case sse && cfg.Compression:
		return nil, errors.New("-transport sse has no compression")
	}
	switch cfg.Receiver {
	case "epoll":
		if s.cs.ep, err = newEpollReceivers(s.cs, 2, sse); err != nil {
			return nil, err
		}
	case "gorilla":
	default:
		return nil, fmt.Errorf("unknown receiver %q: want epoll or gorilla", cfg.Receiver)
	}
	label := cfg.Preset
	if label == "" {
		label = "custom"
	}
	s.res = Result{Label: label, Target: cfg.Target, Transport: cfg.Transport, Publisher: cfg.Pub.Kind, Conns: cfg.Conns, Stalled: cfg.Stalled}
	s.pid = cfg.PID
	if s.pid == 0 {
		if s.pid, err = findListener(ip, port); err != nil {
			fmt.Fprintf(stderr, "warning: %v: server CPU and RSS are not measured (give -pid)\n", err)
		}
	}
	s.res.ServerPID = s.pid
	if cfg.FillTail > 0 {
		began := time.Now()
		if _, err := fillTail(ctx, tailFill{Target: cfg.Target, MetricsURL: cfg.MetricsURL, APIKey: cfg.Pub.APIKey,
			Channel: cfg.Channel, Bytes: int64(cfg.FillTail), DataBytes: cfg.DataBytes, Conns: 16}, stderr); err != nil {
			return nil, err
		}
		s.res.TailCapBytes, s.res.TailFillSecs = int64(cfg.FillTail), time.Since(began).Seconds()
		// Let the garbage of the fill be collected before the baseline.
		time.Sleep(cfg.Settle)
		if s.res.TailBefore, s.res.GoMemBefore, err = tailAndMem(cfg.MetricsURL); err != nil {
			return nil, err
		}
	}
	var before procSample
	if s.pid > 0 {
		if before, err = readProc(s.pid); err != nil {
			return nil, fmt.Errorf("server process %d: %w", s.pid, err)
		}
		s.res.RSSBeforeKiB = before.rssKiB
	}

	if cfg.Rate > 0 { // RSS does not need a quiet machine
		s.waitQuiet(ctx)
	}
	sd := newSourceDialer(2, cfg.SourceAddrs)
	url := wsURL(cfg.Target, cfg.Channel)
	open := wsOpener(wsDialer(sd, 2048, cfg.Compression), url, s.cs.addReceiver)
	if sse {
		url = "http://" + cfg.Target + ssePath(cfg.Channel)
		open = sseOpener(sd, cfg.Target, ssePath(cfg.Channel), s.cs.addSSEReceiver)
	}
	fmt.Fprintf(stderr, "connecting %d clients to %s (pid %d, RSS %d KiB)\n", cfg.Conns, url, s.pid, before.rssKiB)
	cr := connect(ctx, open, cfg.Conns, cfg.ConnectRate, func(made, failed int) {
		fmt.Fprintf(stderr, "  connected %d/%d, failed %d\n", made, cfg.Conns, failed)
	})
	s.res.ConnsMade, s.res.ConnsFailed, s.res.ConnectSecs = cr.Made, cr.Failed, cr.Elapsed.Seconds()
	if len(cr.Errors) > 0 {
		s.res.ConnErrors = cr.Errors
	}
	fmt.Fprintf(stderr, "connected %d, failed %d in %.1fs\n", cr.Made, cr.Failed, cr.Elapsed.Seconds())
	for why := range cr.Errors {
		if strings.Contains(why, "429") {
			s.res.Warnings = append(s.res.Warnings, "the gateway refused handshakes with 429: start herald-gateway with -max-connections-per-ip 0 -handshake-rate 0 to measure many connections from a few addresses")
			break
		}
	}
	if err := ctx.Err(); err != nil {
		s.close()
		return nil, err
	}
	if s.pid > 0 {
		time.Sleep(cfg.Settle)
		idle, err := readProc(s.pid)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("server process %d: %w", s.pid, err)
		}
		s.res.RSSIdleKiB = idle.rssKiB
		if cr.Made > 0 {
			s.res.RSSPerIdleConnKiB = float64(idle.rssKiB-before.rssKiB) / float64(cr.Made)
			s.res.ServerCPUConnectUS = float64((idle.cpu - before.cpu).Microseconds()) / float64(cr.Made)
		}
		fmt.Fprintf(stderr, "idle: RSS %d KiB, %.1f KiB per connection\n", idle.rssKiB, s.res.RSSPerIdleConnKiB)
	}
	if cfg.FillTail > 0 {
		if s.res.TailIdle, s.res.GoMemIdle, err = tailAndMem(cfg.MetricsURL); err != nil {
			s.close()
			return nil, err
		}
	}
	if cfg.Stalled > 0 {
		sdStalled := newSourceDialer(2, cfg.SourceAddrs)
		sdStalled.rcvBuf = cfg.StalledRcvBuf
		openStalled := wsOpener(wsDialer(sdStalled, 1024, cfg.Compression), url, s.cs.addStalled)
		if sse {
			openStalled = sseOpener(sdStalled, cfg.Target, ssePath(cfg.Channel), s.cs.addStalledSSE)
		}
		scr := connect(ctx, openStalled, cfg.Stalled, cfg.ConnectRate, nil)
		s.res.StalledMade = scr.Made
		fmt.Fprintf(stderr, "stalled clients: %d connected, %d failed\n", scr.Made, scr.Failed)
	}
	if cfg.Rate > 0 {
		if s.pub, err = newPublisher(ctx, cfg.Pub); err != nil {
			s.close()
			return nil, fmt.Errorf("publisher: %w", err)
		}
	}
	return s, nil
}

// waitQuiet waits until the machine is quiet, as configured, and notes it when it was not.
func (s *session) waitQuiet(ctx context.Context) {
	if s.cfg.QuietBelow <= 0 {
		return
	}
	pct, ok := waitQuiet(ctx, s.cfg.QuietBelow, s.cfg.QuietWait, func(pct float64) {
		fmt.Fprintf(s.stderr, "waiting for a quiet machine: %.0f%% busy (other processes)\n", pct)
	})
	if !ok {
		s.res.Warnings = append(s.res.Warnings, fmt.Sprintf("the machine was %.0f%% busy with other work when measuring began", pct))
		fmt.Fprintf(s.stderr, "warning: the machine is still %.0f%% busy: measuring anyway\n", pct)
	}
}

func (s *session) close() {
	if s.pub != nil {
		s.pub.close()
	}
	s.cs.close(5 * time.Second)
}

// phase publishes at rate for duration (or count messages), and measures over the window
// that opens after warmup and closes when publishing ends.
func (s *session) phase(ctx context.Context, rate float64, duration, warmup time.Duration, count int, pprofURL string) (PhaseResult, error) {
	if count <= 0 {
		count = int(rate * duration.Seconds())
	}
	ph := PhaseResult{Rate: rate, Messages: count}
	s.waitQuiet(ctx)
	receivers := s.cs.live.Load()
	ph.Receivers = receivers
	acc0, dups0 := s.pub.accepted(), s.cs.dups.Load()
	s.rec.drain(newHist()) // forget deliveries from before this phase

	pubCtx, stopPub := context.WithCancel(ctx)
	defer stopPub()
	pubDone := make(chan publishStats, 1)
	start := time.Now()
	go func() {
		pubDone <- publishAt(pubCtx, s.pub, count, rate, s.cfg.Pub.Conns, s.cfg.DataBytes, s.cfg.DataText, warmup)
	}()

	interval, window := newHist(), newHist()
	var (
		publishing           = true
		inWindow, windowDone bool
		pst                  publishStats
		phaseRecv, winRecv   int64
		gwStart, gwLast      procSample
		selfStart, selfLast  = selfCPU(), selfCPU()
		busyStart, totStart  int64
		winStart, winEnd     time.Time
		metricsStart         map[string]float64
		lastTick             = start
		lastRecv             = time.Now()
		profDone             chan string
	)
	if s.pid > 0 {
		gwLast, _ = readProc(s.pid)
	}
	openWindow := func() {
		inWindow, winStart = true, time.Now()
		metricsStart = scrapeCounters(s.cfg.Target, wireCounters...)
		selfStart = selfCPU()
		busyStart, totStart = machineCPU()
		if s.pid > 0 {
			gwStart, _ = readProc(s.pid)
		}
		if pprofURL != "" {
			secs := max(int((duration-warmup).Seconds())-1, 1)
			profDone = make(chan string, 1)
			go func() { profDone <- fetchProfile(pprofURL, secs, s.cfg.PprofOut, s.stderr) }()
		}
	}
	closeWindow := func() {
		inWindow, windowDone, winEnd = false, true, time.Now()
		el := winEnd.Sub(winStart)
		ph.WindowSecs = el.Seconds()
		ph.WindowDeliveries = winRecv
		ph.DeliveriesPerSec = float64(winRecv) / el.Seconds()
		ph.Latency = summarize(window)
		tool := selfCPU() - selfStart
		ph.ToolCPUSecs = tool.Seconds()
		ph.ToolCPUPercent = 100 * tool.Seconds() / el.Seconds()
		if winRecv > 0 {
			ph.ToolCPUPerDelivUS = float64(tool.Nanoseconds()) / 1e3 / float64(winRecv)
		}
		if m := scrapeCounters(s.cfg.Target, wireCounters...); m != nil && metricsStart != nil && winRecv > 0 {
			ph.WireBytesPerDeliv = (m["herald_bytes_written_total"] - metricsStart["herald_bytes_written_total"]) / float64(winRecv)
			ph.CompressedFrames = m["herald_compressed_frames_total"] - metricsStart["herald_compressed_frames_total"]
			if w := m["herald_socket_writes_total"] - metricsStart["herald_socket_writes_total"]; w > 0 {
				ph.DelivPerWrite = float64(winRecv) / w
			}
		}
		busy, tot := machineCPU()
		if tot > totStart {
			ph.MachineBusyPercent = 100 * float64(busy-busyStart) / float64(tot-totStart)
		}
		if s.pid > 0 {
			if gw, err := readProc(s.pid); err == nil {
				cpu := gw.cpu - gwStart.cpu
				// What ran besides the server and this tool, in percent of one core.
				ph.OtherCPUPercent = max(ph.MachineBusyPercent*float64(runtime.NumCPU())-100*cpu.Seconds()/el.Seconds()-ph.ToolCPUPercent, 0)
				ph.ServerCPUSecs = cpu.Seconds()
				ph.ServerCPUPercent = 100 * cpu.Seconds() / el.Seconds()
				if winRecv > 0 {
					ph.ServerCPUPerDelivUS = float64(cpu.Nanoseconds()) / 1e3 / float64(winRecv)
				}
			}
		}
	}
	if warmup <= 0 {
		openWindow()
	}

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	drainStart := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return ph, ctx.Err()
		case <-tick.C:
		case pst = <-pubDone:
			publishing = false
			pubDone = nil
			drainStart = time.Now()
		}
		n := s.rec.drain(interval)
		phaseRecv += n
		if n > 0 {
			lastRecv = time.Now()
		}
		if inWindow {
			window.Merge(interval)
			winRecv += n
			if !publishing {
				closeWindow()
			}
		} else if publishing && !windowDone && time.Since(start) >= warmup {
			openWindow()
		}
		now := time.Now()
		s.progress(now.Sub(start), now.Sub(lastTick), phaseRecv, n, interval, &gwLast, &selfLast)
		lastTick = now
		if !publishing {
			expected := (s.pub.accepted() - acc0) * receivers
			if phaseRecv >= expected || time.Since(drainStart) > s.cfg.DrainWait ||
				time.Since(lastRecv) > 3*time.Second {
				break
			}
		}
	}
	if !windowDone { // the phase was shorter than the warm-up: the window is all of it
		ph.WindowSecs = 0
	}
	ph.Sent, ph.PublishErrors = pst.Sent, pst.Errors
	if len(pst.ErrorKind) > 0 {
		ph.PublishErrKinds = pst.ErrorKind
	}
	ph.Accepted = s.pub.accepted() - acc0
	ph.PublishRate = float64(pst.Sent) / pst.Elapsed.Seconds()
	ph.PublisherBehind = float64(pst.MaxBehind.Microseconds()) / 1e3
	ph.Expected = ph.Accepted * receivers
	ph.Received = phaseRecv
	ph.Dups = s.cs.dups.Load() - dups0
	ph.Lost = lost(ph.Expected, ph.Received, ph.Dups)
	if ended := s.cs.endedCounts(); len(ended) > 0 {
		ph.ReceiversEnded = ended
	}
	if s.pid > 0 {
		if gw, err := readProc(s.pid); err == nil {
			s.res.RSSPeakLoadKiB = max(s.res.RSSPeakLoadKiB, gw.rssKiB)
		}
	}
	if profDone != nil {
		ph.Profile = <-profDone
	}
	if s.cfg.AdminURL != "" && windowDone {
		if traces, err := fetchDispatches(s.cfg.AdminURL); err != nil {
			fmt.Fprintf(s.stderr, "warning: no p99 breakdown: %v\n", err)
		} else {
			b := breakdown(traces, winStart, winEnd, float64(pst.Calls.ValueAtQuantile(99))/1e3)
			ph.Breakdown = &b
		}
	}
	return ph, nil
}

// lost is how many of expected deliveries did not come, when received counts dups
// deliveries that were duplicates.
func lost(expected, received, dups int64) int64 {
	return max(expected-(received-dups), 0)
}

// progress prints one line about the last second to stderr.
func (s *session) progress(el, since time.Duration, total, n int64, h *hdrhistogram.Histogram, gwLast *procSample, selfLast *time.Duration) {
	gw := ""
	if s.pid > 0 {
		if cur, err := readProc(s.pid); err == nil {
			pct := 100 * (cur.cpu - gwLast.cpu).Seconds() / since.Seconds()
			gw = fmt.Sprintf(" | server cpu %3.0f%% rss %d MiB", pct, cur.rssKiB>>10)
			s.res.RSSPeakLoadKiB = max(s.res.RSSPeakLoadKiB, cur.rssKiB)
			*gwLast = cur
		}
	}
	self := selfCPU()
	toolPct := 100 * (self - *selfLast).Seconds() / since.Seconds()
	*selfLast = self
	fmt.Fprintf(s.stderr, "%5.1fs recv %9d (%7.0f/s) p50 %7.2fms p99 %7.2fms max %7.2fms | live %d%s | tool cpu %3.0f%%\n",
		el.Seconds(), total, float64(n)/since.Seconds(),
		float64(h.ValueAtQuantile(50))/1e3, float64(h.ValueAtQuantile(99))/1e3, float64(h.Max())/1e3,
		s.cs.live.Load(), gw, toolPct)
}

// fetchProfile takes a CPU profile of secs seconds from a net/http/pprof endpoint and
// writes it to out. It returns out, or "" when it failed (and says why on stderr).
func fetchProfile(base string, secs int, out string, stderr io.Writer) string {
	u := strings.TrimSuffix(base, "/") + fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs)
	if err := download(u, time.Duration(secs+30)*time.Second, out); err != nil {
		fmt.Fprintf(stderr, "warning: CPU profile: %v\n", err)
		return ""
	}
	fmt.Fprintf(stderr, "CPU profile (%ds) written to %s\n", secs, out)
	return out
}

// download writes what a GET of url answers to the file out, within timeout.
func download(url string, timeout time.Duration, out string) error {
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: HTTP %d", url, resp.StatusCode)
	}
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("save %s: %w", url, err)
	}
	_, err = io.Copy(f, resp.Body)
	if err = errors.Join(err, f.Close()); err != nil {
		return fmt.Errorf("save %s: %w", url, err)
	}
	return nil
}

// wireCounters are the gateway counters a phase reads over its window.
var wireCounters = []string{"herald_bytes_written_total", "herald_compressed_frames_total", "herald_socket_writes_total"}

// scrapeCounters reads unlabelled counters from the gateway's /metrics; nil when it has
// no such endpoint (the baseline) or none of them.
func scrapeCounters(target string, names ...string) map[string]float64 {
	all := scrapeMetrics("http://" + target + "/metrics")
	out := map[string]float64{}
	for _, name := range names {
		if v, ok := all[name]; ok {
			out[name] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
