package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The slow resume storm (issue 18): a gateway whose tail of the log is full, and a
// thousand clients that connect with since=-1 (everything retained) and read slowly. Each
// replay goes at its client's pace, its write queue holding at most its cap in references
// to the frames the tail shares, so the gateway's memory grows by about the connections'
// own cost, not by a copy of the log per client. The scenario measures that growth.

// slowConfig is a slowresume run.
type slowConfig struct {
	scenarioConfig
	TailBytes   byteSize
	Fill        byteSize
	Since       int64
	ReadRate    int
	ReadDelay   time.Duration
	RcvBuf      int
	Window      time.Duration
	Settle      time.Duration
	HeapProfile string
}

// SlowResumeResult is what a slowresume run measured.
type SlowResumeResult struct {
	Gateway       string  `json:"gateway"`
	GatewayArgs   string  `json:"gateway_args,omitempty"`
	Clients       int     `json:"clients"`
	Since         int64   `json:"since"`
	ReadRate      int     `json:"read_bytes_per_sec"`
	ReadDelaySecs float64 `json:"read_delay_seconds"`
	RcvBuf        int     `json:"client_rcvbuf"`
	WindowSecs    float64 `json:"window_seconds"`

	Connected     int64          `json:"connected"`
	ConnectFailed int64          `json:"connect_failed"`
	ConnectSecs   float64        `json:"connect_seconds"`
	DialErrors    map[string]int `json:"dial_errors,omitempty"`

	TailCapBytes  int64      `json:"tail_cap_bytes"`
	TailFillSecs  float64    `json:"tail_fill_seconds"`
	Tail          *tailState `json:"tail"`
	TailEnd       *tailState `json:"tail_end,omitempty"`
	QueueCapBytes int64      `json:"write_queue_cap_bytes"`

	ServerPID    int     `json:"server_pid"`
	RSSBeforeKiB int64   `json:"rss_before_kib"`
	RSSPeakKiB   int64   `json:"rss_peak_kib"`
	RSSPeakSecs  float64 `json:"rss_peak_at_seconds"`
	RSSEndKiB    int64   `json:"rss_end_kib"`
	// Peak RSS - RSS before, in all and per client, against what the clients' write
	// queues may hold at their cap and what a copy of the tail per client would cost.
	RSSGrowthKiB          int64   `json:"rss_growth_kib"`
	RSSGrowthPerClientKiB float64 `json:"rss_growth_per_client_kib"`
	QueueCapsKiB          int64   `json:"clients_x_queue_cap_kib"`
	TailCopiesKiB         int64   `json:"clients_x_tail_kib"`
	// The kernel's memory for TCP buffers (all of the machine's sockets, /proc/net/sockstat)
	// before and at its peak: what the gateway has written that the slow clients have
	// not read waits there, not in the gateway's RSS (--socket-send-buffer bounds it).
	KernelTCPBeforeKiB int64  `json:"kernel_tcp_before_kib"`
	KernelTCPPeakKiB   int64  `json:"kernel_tcp_peak_kib"`
	GoMemBefore        *goMem `json:"go_mem_before,omitempty"`
	GoMemPeak          *goMem `json:"go_mem_at_peak_queue,omitempty"`

	// From the gateway's /metrics: the bytes its write queues held at the fullest moment
	// seen (all of them, and the fullest one), connections closed as slow consumers
	// (4008), and resumes by source, over the run.
	QueuedBytesPeak    int64            `json:"queued_bytes_peak"`
	QueueMaxBytesPeak  int64            `json:"fullest_queue_bytes_peak"`
	Dropped            map[string]int64 `json:"dropped_by_reason,omitempty"`
	ClosedByCode       map[string]int64 `json:"gateway_closed_by_code,omitempty"`
	SlowClosed         int64            `json:"slow_consumers_closed"`
	ResumesBySource    map[string]int64 `json:"resumes_by_source,omitempty"`
	ReplayedMessages   int64            `json:"replayed_messages"`
	ConnectionsAtEnd   int64            `json:"connections_at_end"`
	ClientsWelcomed    int64            `json:"clients_welcomed"`
	ClientsResumed     int64            `json:"clients_resumed"`
	ClientsReset       int64            `json:"clients_reset"`
	ClientBytesRead    int64            `json:"client_bytes_read"`
	ClientFramesRead   int64            `json:"client_frames_read"`
	ClientsEnded       map[string]int   `json:"clients_ended,omitempty"`
	HeapProfile        string           `json:"heap_profile,omitempty"`
	HeapProfileSecs    float64          `json:"heap_profile_at_seconds,omitempty"`
	MachineBusyPercent float64          `json:"machine_busy_percent"`
	Warnings           []string         `json:"warnings,omitempty"`
}

func slowResumeCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := slowConfig{scenarioConfig: defaultScenarioConfig("slowresume"), TailBytes: 64 << 20, Since: -1,
		ReadRate: 4096, RcvBuf: 4096, Window: 20 * time.Second, Settle: 3 * time.Second}
	cfg.Clients, cfg.Gateways, cfg.Workers, cfg.ConnectRate = 1000, 1, 1, 500
	fs := flag.NewFlagSet("herald-bench slowresume", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.GatewayBin, "gateway-bin", cfg.GatewayBin, "herald-gateway binary to measure (go build, not go run)")
	fs.StringVar(&cfg.GatewayArgs, "gateway-args", cfg.GatewayArgs, "extra flags for herald-gateway, space-separated")
	fs.StringVar(&cfg.Host, "host", cfg.Host, "address the gateway listens on (127.0.0.0/8)")
	fs.IntVar(&cfg.Port, "port", cfg.Port, "port of the gateway; its admin listener (metrics, pprof) is on port+1")
	fs.StringVar(&cfg.AMQPURL, "amqp-url", cfg.AMQPURL, "RabbitMQ URL; the run uses a fresh exchange and stream and deletes them")
	fs.StringVar(&cfg.APIKey, "api-key", cfg.APIKey, "API key the gateway is started with (the fill publishes with it)")
	fs.IntVar(&cfg.Clients, "clients", cfg.Clients, "clients that connect with -since and read slowly")
	fs.IntVar(&cfg.DataBytes, "data-bytes", cfg.DataBytes, "size of each message's data in the fill")
	fs.Var(&cfg.TailBytes, "tail-bytes", "the gateway's -tail-bytes (default 64MiB)")
	fs.Var(&cfg.Fill, "fill", "bytes of the tail to fill before the baseline (default: all of -tail-bytes, so that it is full and evicting; below it, the tail still holds the stream from its first message)")
	fs.Int64Var(&cfg.Since, "since", cfg.Since, "the clients' since (-1: everything retained)")
	fs.IntVar(&cfg.ReadRate, "read-rate", cfg.ReadRate, "bytes per second each client reads (in 10 reads a second)")
	fs.DurationVar(&cfg.ReadDelay, "read-delay", cfg.ReadDelay, "how long each client reads nothing after its handshake before it reads at -read-rate")
	fs.IntVar(&cfg.RcvBuf, "rcvbuf", cfg.RcvBuf, "SO_RCVBUF of each client's socket, so that the kernel does not read ahead for it (0: the kernel's default)")
	fs.DurationVar(&cfg.Window, "window", cfg.Window, "how long RSS is watched after the first client connects")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "wait after the fill before the RSS baseline")
	fs.IntVar(&cfg.ConnectRate, "connect-rate", cfg.ConnectRate, "connects per second")
	fs.IntVar(&cfg.SourceAddrs, "source-addrs", cfg.SourceAddrs, "127.0.0.x addresses the clients dial from, from 127.0.0.2")
	fs.StringVar(&cfg.HeapProfile, "heap-profile", cfg.HeapProfile, "file for a heap profile of the gateway (/debug/pprof/heap) when its write queues held the most (looked at each second)")
	fs.StringVar(&cfg.Out, "out", cfg.Out, "directory for the gateway's log and the result's JSON")
	fs.BoolVar(&cfg.JSON, "json", cfg.JSON, "print the result as JSON")
	fs.Float64Var(&cfg.QuietBelow, "quiet-below", cfg.QuietBelow, "before starting, wait until the machine is less busy than this percent (0: don't wait)")
	fs.DurationVar(&cfg.QuietWait, "quiet-wait", cfg.QuietWait, "longest wait for a quiet machine; then measure anyway, with a warning")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: herald-bench slowresume [flags]

The slow resume storm: one herald-gateway on RabbitMQ (a fresh exchange and stream) with
-tail-bytes; its tail is filled with -data-bytes messages through /api/publish (-fill,
default all of it) and the gateway's RSS read as the baseline; then -clients clients
connect with since=-since (-1: everything retained) and read -read-rate bytes a second
each (after -read-delay). Reported: the gateway's RSS growth, peak over -window, against
clients x its write-queue cap and clients x the tail's bytes (what a copy per client would
cost); its queued bytes; how many it closed as slow consumers (4008); resumes by source.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return errUsage
	}
	if cfg.Fill == 0 {
		cfg.Fill = cfg.TailBytes
	}
	switch {
	case cfg.Clients <= 0 || cfg.ReadRate < 10 || cfg.Window <= 0 || cfg.TailBytes <= 0:
		fmt.Fprintln(stderr, "herald-bench slowresume: -clients, -window and -tail-bytes must be positive, -read-rate at least 10")
		return errUsage
	case cfg.Fill > cfg.TailBytes:
		fmt.Fprintln(stderr, "herald-bench slowresume: -fill is above -tail-bytes")
		return errUsage
	}
	admin := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port+1))
	if dialableTarget(admin) {
		return fmt.Errorf("%s (the admin listener) is in use: pick another -port", admin)
	}
	cfg.GatewayArgs = strings.TrimSpace(fmt.Sprintf("-tail-bytes %d -admin-addr %s %s", cfg.TailBytes, admin, cfg.GatewayArgs))
	res, err := slowResume(ctx, cfg, "http://"+admin, stderr)
	if err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(cfg.Out, fmt.Sprintf("slowresume-%d.json", time.Now().Unix())))
	if err == nil {
		err = errors.Join(writeJSON(f, res), f.Close())
	}
	if err != nil {
		fmt.Fprintf(stderr, "warning: writing the result: %v\n", err)
	}
	if cfg.JSON {
		return writeJSON(stdout, res)
	}
	printSlowResume(stdout, res)
	return nil
}

// slowResume runs the scenario; admin is the base URL of the gateway's admin listener.
func slowResume(ctx context.Context, cfg slowConfig, admin string, stderr io.Writer) (SlowResumeResult, error) {
	res := SlowResumeResult{Gateway: cfg.GatewayBin, GatewayArgs: cfg.GatewayArgs, Clients: cfg.Clients, Since: cfg.Since,
		ReadRate: cfg.ReadRate, ReadDelaySecs: cfg.ReadDelay.Seconds(), RcvBuf: cfg.RcvBuf, WindowSecs: cfg.Window.Seconds(),
		TailCapBytes: int64(cfg.TailBytes)}
	s, err := newScenario(ctx, cfg.scenarioConfig, stderr)
	if err != nil {
		return res, err
	}
	defer s.close()
	res.Warnings = s.res.Warnings
	target, metricsURL := s.addrs[0], admin+"/metrics"
	res.ServerPID = s.gws[0].cmd.Process.Pid

	began := time.Now()
	if _, err := fillTail(ctx, tailFill{Target: target, MetricsURL: metricsURL, APIKey: cfg.APIKey, Channel: cfg.Name + "-0",
		Bytes: int64(cfg.Fill), DataBytes: cfg.DataBytes, Conns: 16}, stderr); err != nil {
		return res, err
	}
	res.TailFillSecs = time.Since(began).Seconds()
	time.Sleep(cfg.Settle) // the fill's garbage collected before the baseline
	if res.Tail, res.GoMemBefore, err = tailAndMem(metricsURL); err != nil {
		return res, err
	}
	m0 := scrapeMetrics(metricsURL)
	res.QueueCapBytes = int64(m0["herald_write_queue_cap_bytes"])
	before, err := readProc(res.ServerPID)
	if err != nil {
		return res, fmt.Errorf("gateway process %d: %w", res.ServerPID, err)
	}
	res.RSSBeforeKiB, res.RSSPeakKiB = before.rssKiB, before.rssKiB
	res.KernelTCPBeforeKiB = kernelTCPKiB()
	res.KernelTCPPeakKiB = res.KernelTCPBeforeKiB
	fmt.Fprintf(stderr, "baseline: RSS %d KiB with the tail at %d bytes (%d messages, edge %d); connecting %d clients with since=%d reading %d B/s\n",
		before.rssKiB, res.Tail.Bytes, res.Tail.Messages, res.Tail.Edge, cfg.Clients, cfg.Since, cfg.ReadRate)

	busy0, tot0 := machineCPU()
	sc := newSlowClients(cfg, target)
	window, stop := context.WithTimeout(ctx, cfg.Window)
	defer stop()
	t0 := time.Now()
	go sc.connect(window)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var lastScrape time.Time
	for window.Err() == nil {
		select {
		case <-window.Done():
		case <-tick.C:
		}
		if p, err := readProc(res.ServerPID); err == nil && p.rssKiB > res.RSSPeakKiB {
			res.RSSPeakKiB, res.RSSPeakSecs = p.rssKiB, time.Since(t0).Seconds()
		}
		res.KernelTCPPeakKiB = max(res.KernelTCPPeakKiB, kernelTCPKiB())
		if time.Since(lastScrape) >= time.Second {
			lastScrape = time.Now()
			if m := scrapeMetrics(metricsURL); m != nil {
				if q := int64(m["herald_write_queue_bytes"]); q > res.QueuedBytesPeak {
					res.QueuedBytesPeak = q
					_, res.GoMemPeak, _ = tailAndMem(metricsURL)
					// The profile of the fullest queues seen (a profile takes the gateway
					// a few milliseconds).
					if cfg.HeapProfile != "" {
						res.HeapProfile = fetchHeapProfile(admin, cfg.HeapProfile, stderr)
						res.HeapProfileSecs = time.Since(t0).Seconds()
					}
				}
				res.QueueMaxBytesPeak = max(res.QueueMaxBytesPeak, int64(m["herald_write_queue_max_bytes"]))
				fmt.Fprintf(stderr, "%5.1fs connected %5d  resumed %4d  closed %4d  client bytes %9d  gateway RSS peak +%d KiB  queued %d KiB (fullest %d KiB)  slow closed %.0f\n",
					time.Since(t0).Seconds(), sc.connected.Load(), sc.resumed.Load(), sc.ended.Load(), sc.bytes.Load(),
					res.RSSPeakKiB-before.rssKiB, int64(m["herald_write_queue_bytes"])>>10, int64(m["herald_write_queue_max_bytes"])>>10,
					m["herald_slow_consumers_total"]-m0["herald_slow_consumers_total"])
			}
		}
	}
	if end, err := readProc(res.ServerPID); err == nil {
		res.RSSEndKiB = end.rssKiB
	}
	if busy, tot := machineCPU(); tot > tot0 {
		res.MachineBusyPercent = 100 * float64(busy-busy0) / float64(tot-tot0)
	}
	m1 := scrapeMetrics(metricsURL)
	res.TailEnd, _, _ = tailAndMem(metricsURL)
	res.SlowClosed = int64(m1["herald_slow_consumers_total"] - m0["herald_slow_consumers_total"])
	res.ReplayedMessages = int64(m1["herald_replayed_messages_total"] - m0["herald_replayed_messages_total"])
	res.ConnectionsAtEnd = int64(m1["herald_connections"])
	res.Dropped = map[string]int64{}
	for k, v := range m1 {
		if why, ok := strings.CutPrefix(k, `herald_messages_dropped_total{reason="`); ok {
			if n := int64(v - m0[k]); n > 0 {
				res.Dropped[strings.TrimSuffix(why, `"}`)] = n
			}
		}
	}
	res.ClosedByCode = map[string]int64{}
	for k, v := range m1 {
		if rest, ok := strings.CutPrefix(k, `herald_connections_closed_total{code="`); ok {
			code, _, _ := strings.Cut(rest, `"`)
			if n := int64(v - m0[k]); n > 0 {
				res.ClosedByCode[code] += n
			}
		}
	}
	res.ResumesBySource = map[string]int64{}
	for _, src := range []string{"tail", "stream", "reset"} {
		k := `herald_resumes_total{source="` + src + `"}`
		if n := int64(m1[k] - m0[k]); n > 0 {
			res.ResumesBySource[src] = n
		}
	}
	sc.close()
	res.Connected, res.ConnectFailed, res.ConnectSecs = sc.connected.Load(), sc.failed.Load(), sc.connectSecs()
	res.ClientsWelcomed, res.ClientsResumed, res.ClientsReset = sc.welcomed.Load(), sc.resumed.Load(), sc.resets.Load()
	res.ClientBytesRead, res.ClientFramesRead = sc.bytes.Load(), sc.frames.Load()
	res.ClientsEnded, res.DialErrors = sc.endings()
	res.RSSGrowthKiB = res.RSSPeakKiB - res.RSSBeforeKiB
	if res.Connected > 0 {
		res.RSSGrowthPerClientKiB = float64(res.RSSGrowthKiB) / float64(res.Connected)
	}
	res.QueueCapsKiB = int64(cfg.Clients) * res.QueueCapBytes >> 10
	res.TailCopiesKiB = int64(cfg.Clients) * res.Tail.Bytes >> 10
	if res.MachineBusyPercent > 20 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("the machine was %.0f%% busy over the window (this run's own processes included)", res.MachineBusyPercent))
	}
	return res, nil
}

// fetchHeapProfile writes the gateway's heap profile to out; it returns out, or "" when
// it failed (and says why).
func fetchHeapProfile(admin, out string, stderr io.Writer) string {
	if err := download(admin+"/debug/pprof/heap", 30*time.Second, out); err != nil {
		fmt.Fprintf(stderr, "warning: heap profile: %v\n", err)
		return ""
	}
	return out
}

func printSlowResume(w io.Writer, r SlowResumeResult) {
	row := func(name, format string, args ...any) {
		fmt.Fprintf(w, "%-52s "+format+"\n", append([]any{name}, args...)...)
	}
	kib := func(n int64) string { return fmt.Sprintf("%d KiB = %.1f MiB", n, float64(n)/1024) }
	row("gateway", "%s %s", r.Gateway, r.GatewayArgs)
	row("clients: connected / failed", "%d / %d of %d in %.1fs, since=%d, reading %d B/s each after %.0fs (SO_RCVBUF %d)",
		r.Connected, r.ConnectFailed, r.Clients, r.ConnectSecs, r.Since, r.ReadRate, r.ReadDelaySecs, r.RcvBuf)
	if len(r.DialErrors) > 0 {
		row("connect errors", "%s", countsString(r.DialErrors))
	}
	if t := r.Tail; t != nil {
		row("tail at the baseline", "%d bytes = %.1f MiB, %d messages, edge %d (cap %.1f MiB, filled in %.1fs)",
			t.Bytes, float64(t.Bytes)/(1<<20), t.Messages, t.Edge, float64(r.TailCapBytes)/(1<<20), r.TailFillSecs)
	}
	row("gateway RSS before / peak / end", "%d / %d / %d KiB (peak %.1fs after the first connect)", r.RSSBeforeKiB, r.RSSPeakKiB, r.RSSEndKiB, r.RSSPeakSecs)
	row("gateway RSS growth, peak: in all / per client", "%s / %.1f KiB", kib(r.RSSGrowthKiB), r.RSSGrowthPerClientKiB)
	row("clients x write-queue cap", "%s (cap %d bytes)", kib(r.QueueCapsKiB), r.QueueCapBytes)
	row("clients x tail (a copy per client)", "%s", kib(r.TailCopiesKiB))
	row("queued in write queues, peak: all / fullest", "%s / %d KiB", kib(r.QueuedBytesPeak>>10), r.QueueMaxBytesPeak>>10)
	if b, p := r.GoMemBefore, r.GoMemPeak; b != nil && p != nil {
		row("Go heap in use / free unreleased / stacks", "before %d / %d / %d KiB, at peak queue %d / %d / %d KiB",
			b.HeapInuseKiB, b.HeapFreeKiB, b.StackInuseKiB, p.HeapInuseKiB, p.HeapFreeKiB, p.StackInuseKiB)
	}
	row("kernel TCP buffers (machine-wide) before / peak", "%s / %s", kib(r.KernelTCPBeforeKiB), kib(r.KernelTCPPeakKiB))
	row("closed as slow consumers (4008)", "%d", r.SlowClosed)
	row("connections the gateway closed, by code", "%v (open at the end: %d)", r.ClosedByCode, r.ConnectionsAtEnd)
	if len(r.Dropped) > 0 {
		row("messages dropped by the gateway, by reason", "%v", r.Dropped)
	}
	row("resumes done, by source", "%v (replayed %d messages)", r.ResumesBySource, r.ReplayedMessages)
	row("clients: welcomed / resumed / reset", "%d / %d / %d", r.ClientsWelcomed, r.ClientsResumed, r.ClientsReset)
	row("clients read", "%d bytes, %d frames", r.ClientBytesRead, r.ClientFramesRead)
	if len(r.ClientsEnded) > 0 {
		row("client connections ended by", "%s", countsString(r.ClientsEnded))
	}
	if r.HeapProfile != "" {
		row("heap profile (at the fullest queues)", "%s, %.1fs after the first connect", r.HeapProfile, r.HeapProfileSecs)
	}
	row("machine busy over the window", "%.0f%%", r.MachineBusyPercent)
	for _, warn := range r.Warnings {
		row("warning", "%s", warn)
	}
}

// slowClients are the scenario's clients: a goroutine each, reading its socket at a
// fixed rate and parsing the frames it reads.
type slowClients struct {
	cfg    slowConfig
	target string
	srcs   *sourceDialer
	path   string

	connected, failed, ended  atomic.Int64
	welcomed, resumed, resets atomic.Int64
	bytes, frames             atomic.Int64
	firstConnect, lastConnect atomic.Int64 // UnixNano
	mu                        sync.Mutex
	conns                     []net.Conn
	closed                    bool
	closes, dialErrs          map[string]int
	wg                        sync.WaitGroup
	stop                      chan struct{}
}

func newSlowClients(cfg slowConfig, target string) *slowClients {
	srcs := newSourceDialer(2, cfg.SourceAddrs)
	srcs.rcvBuf = cfg.RcvBuf
	return &slowClients{cfg: cfg, target: target, srcs: srcs, stop: make(chan struct{}),
		path:   "/ws?channels=" + cfg.Name + "-0&since=" + strconv.FormatInt(cfg.Since, 10),
		closes: map[string]int{}, dialErrs: map[string]int{}}
}

// connect opens the clients at the configured rate until they are all open or ctx ends.
func (sc *slowClients) connect(ctx context.Context) {
	start := time.Now()
	for i := range sc.cfg.Clients {
		if due := start.Add(time.Duration(i) * time.Second / time.Duration(max(sc.cfg.ConnectRate, 1))); time.Until(due) > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(due)):
			}
		}
		sc.mu.Lock()
		if sc.closed {
			sc.mu.Unlock()
			return
		}
		sc.wg.Add(1)
		sc.mu.Unlock()
		go func() {
			defer sc.wg.Done()
			sc.run()
		}()
	}
}

// run is one client: it connects, then reads at the configured rate until closed.
func (sc *slowClients) run() {
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, err := sc.srcs.DialContext(dctx, "tcp", sc.target)
	cancel()
	var rest []byte
	if err == nil {
		if rest, err = upgrade(conn, sc.target, sc.path); err != nil {
			conn.Close()
		}
	}
	if err != nil {
		sc.failed.Add(1)
		sc.count(sc.dialErrs, shortErr(err))
		return
	}
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		conn.Close()
		return
	}
	sc.conns = append(sc.conns, conn)
	sc.mu.Unlock()
	now := time.Now().UnixNano()
	sc.firstConnect.CompareAndSwap(0, now)
	sc.lastConnect.Store(now)
	sc.connected.Add(1)

	fr := &frameReader{sc: sc, conn: conn}
	fr.feed(rest)
	if d := sc.cfg.ReadDelay; d > 0 {
		select {
		case <-sc.stop:
			return
		case <-time.After(d):
		}
	}
	const perSec = 10
	quota := max(sc.cfg.ReadRate/perSec, 1)
	buf := make([]byte, quota)
	tick := time.NewTicker(time.Second / perSec)
	defer tick.Stop()
	for {
		select {
		case <-sc.stop:
			return
		case <-tick.C:
		}
		// One read a tick, of at most quota: whatever the socket has, up to the rate.
		_ = conn.SetReadDeadline(time.Now().Add(time.Second / perSec / 2))
		n, err := conn.Read(buf)
		sc.bytes.Add(int64(n))
		if why := fr.feed(buf[:n]); why != "" {
			sc.end(why)
			return
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			select {
			case <-sc.stop:
			default:
				sc.end(shortErr(err))
			}
			return
		}
	}
}

func (sc *slowClients) end(why string) {
	sc.ended.Add(1)
	sc.count(sc.closes, why)
}

func (sc *slowClients) count(m map[string]int, why string) {
	sc.mu.Lock()
	m[why]++
	sc.mu.Unlock()
}

func (sc *slowClients) endings() (map[string]int, map[string]int) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.closes, sc.dialErrs
}

func (sc *slowClients) connectSecs() float64 {
	first, last := sc.firstConnect.Load(), sc.lastConnect.Load()
	return time.Duration(last - first).Seconds()
}

// close stops the clients and closes their sockets.
func (sc *slowClients) close() {
	sc.mu.Lock()
	sc.closed = true
	close(sc.stop)
	conns := sc.conns
	sc.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	sc.wg.Wait()
}

// frameReader parses the server's frames from what a client reads, a piece at a time.
type frameReader struct {
	sc   *slowClients
	conn net.Conn
	buf  []byte
}

// feed takes p and handles the whole frames it completes; it returns why the connection
// ends (a close frame) or "".
func (fr *frameReader) feed(p []byte) string {
	fr.buf = append(fr.buf, p...)
	for {
		b := fr.buf
		if len(b) < 2 {
			break
		}
		op, n, hdr := b[0]&0x0f, int(b[1]&0x7f), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return ""
			}
			n, hdr = int(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				return ""
			}
			n, hdr = int(binary.BigEndian.Uint64(b[2:])), 10
		}
		if b[1]&0x80 != 0 { // a masked server frame: not WebSocket as servers speak it
			return "masked frame from the server"
		}
		if len(b) < hdr+n {
			break
		}
		payload := b[hdr : hdr+n]
		fr.sc.frames.Add(1)
		switch op {
		case 0x1:
			switch {
			case bytes.Contains(payload, []byte(`"op":"welcome"`)):
				fr.sc.welcomed.Add(1)
			case bytes.Contains(payload, []byte(`"op":"resumed"`)):
				fr.sc.resumed.Add(1)
			case bytes.Contains(payload, []byte(`"op":"reset"`)):
				fr.sc.resets.Add(1)
			}
		case 0x8:
			code := 1005
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			return "close " + strconv.Itoa(code)
		case 0x9: // ping: answer with a pong, masked as a client's frames are
			_ = fr.conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = fr.conn.Write(maskedFrame(0xA, payload))
		}
		fr.buf = b[hdr+n:]
	}
	if len(fr.buf) == 0 {
		fr.buf = fr.buf[:0:0] // let a large buffer go
	}
	return ""
}

// maskedFrame is a final client frame of opcode op carrying payload (at most 125 bytes),
// with a zero mask.
func maskedFrame(op byte, payload []byte) []byte {
	f := []byte{0x80 | op, 0x80 | byte(len(payload)), 0, 0, 0, 0}
	return append(f, payload...)
}

// kernelTCPKiB is the kernel's memory for TCP buffers, machine-wide (/proc/net/sockstat's
// TCP mem, in pages); 0 when it cannot be read.
func kernelTCPKiB() int64 {
	data, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i++ {
			if f[i] == "mem" {
				n, _ := strconv.ParseInt(f[i+1], 10, 64)
				return n * int64(os.Getpagesize()) >> 10
			}
		}
	}
	return 0
}
