package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/heraldgw/herald/producer"
)

// The drain and rolling scenarios (issue 18) run real herald-gateway processes on the
// real RabbitMQ, and clients (a fleet, in this process or spread over worker processes,
// each dialling from its own 127.0.0.x addresses) that reconnect with since when a
// gateway goes away, while a publisher publishes at a steady rate.

// fleetWorkerCmd is the hidden subcommand a scenario runs its worker processes with.
const fleetWorkerCmd = "fleet-worker"

// scenarioConfig is what drain and rolling share.
type scenarioConfig struct {
	Name         string
	GatewayBin   string
	GatewayArgs  string
	Gateways     int
	Host         string
	Port         int
	AMQPURL      string
	APIKey       string
	Clients      int
	Channels     int
	Rate         float64
	DataBytes    int
	Publisher    string
	PublishConns int
	Warmup       time.Duration
	After        time.Duration
	StormWait    time.Duration
	SettleWait   time.Duration
	Workers      int
	SourceAddrs  int
	ConnectRate  int
	Dialers      int
	Out          string
	JSON         bool
	QuietBelow   float64
	QuietWait    time.Duration
}

// bindScenarioFlags defines the flags drain and rolling share, with c's values as defaults.
func bindScenarioFlags(fs *flag.FlagSet, c *scenarioConfig) {
	fs.StringVar(&c.GatewayBin, "gateway-bin", c.GatewayBin, "herald-gateway binary to measure (go build, not go run)")
	fs.StringVar(&c.GatewayArgs, "gateway-args", c.GatewayArgs, "extra flags for every herald-gateway, space-separated")
	fs.StringVar(&c.Host, "host", c.Host, "address the gateways listen on (127.0.0.0/8)")
	fs.IntVar(&c.Port, "port", c.Port, "port of the first gateway; gateway i listens on port+i")
	fs.StringVar(&c.AMQPURL, "amqp-url", c.AMQPURL, "RabbitMQ URL; the scenario uses a fresh exchange and stream and deletes them")
	fs.StringVar(&c.APIKey, "api-key", c.APIKey, "API key the gateways are started with (the HTTP publisher uses it)")
	fs.IntVar(&c.Clients, "clients", c.Clients, "WebSocket clients")
	fs.IntVar(&c.Channels, "channels", c.Channels, "channels: client i subscribes to channel i mod channels; message n goes to channel n mod channels")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "messages published per second, across the channels")
	fs.IntVar(&c.DataBytes, "data-bytes", c.DataBytes, "size of each message's data")
	fs.StringVar(&c.Publisher, "publisher", c.Publisher, "http (POST /api/publish to a gateway that stays up) or amqp (the producer package, straight to the exchange)")
	fs.IntVar(&c.PublishConns, "publish-conns", c.PublishConns, "publishes in flight at once")
	fs.DurationVar(&c.Warmup, "warmup", c.Warmup, "publishing before the first SIGTERM")
	fs.DurationVar(&c.After, "after", c.After, "publishing after every client has resumed")
	fs.DurationVar(&c.StormWait, "storm-wait", c.StormWait, "longest wait for every client to resume")
	fs.DurationVar(&c.SettleWait, "settle-wait", c.SettleWait, "longest wait, after publishing, for the last deliveries")
	fs.IntVar(&c.Workers, "workers", c.Workers, "processes the clients are spread over (this tool started again); 0: one per 8,000 clients; 1: in this process")
	fs.IntVar(&c.SourceAddrs, "source-addrs", c.SourceAddrs, "127.0.0.x addresses each worker dials from (worker k from 127.0.0.(2+k*n))")
	fs.IntVar(&c.ConnectRate, "connect-rate", c.ConnectRate, "first connects per second, in all")
	fs.IntVar(&c.Dialers, "dialers", c.Dialers, "(re)connects under way at once, per worker")
	fs.StringVar(&c.Out, "out", c.Out, "directory for the gateways' logs and the result's JSON")
	fs.BoolVar(&c.JSON, "json", c.JSON, "print the result as JSON")
	fs.Float64Var(&c.QuietBelow, "quiet-below", c.QuietBelow, "before starting, wait until the machine is less busy than this percent (0: don't wait)")
	fs.DurationVar(&c.QuietWait, "quiet-wait", c.QuietWait, "longest wait for a quiet machine; then measure anyway, with a warning")
}

func defaultScenarioConfig(name string) scenarioConfig {
	return scenarioConfig{
		Name: name, GatewayBin: "bin/herald-gateway", Host: "127.0.0.1", Port: 18200,
		AMQPURL: "amqp://guest:guest@127.0.0.1:5672/", APIKey: "bench-key",
		Clients: 2000, Channels: 1, Rate: 100, DataBytes: 100, Publisher: "http", PublishConns: 4,
		Warmup: 5 * time.Second, After: 5 * time.Second, StormWait: 5 * time.Minute, SettleWait: 30 * time.Second,
		SourceAddrs: 16, ConnectRate: 1000, Dialers: 128, Out: "bench-out",
		QuietBelow: 20, QuietWait: 3 * time.Minute,
	}
}

// check validates c after the flags are parsed.
func (c *scenarioConfig) check() error {
	switch {
	case c.Clients <= 0 || c.Channels <= 0 || c.Rate <= 0 || c.DataBytes < 40:
		return errors.New("-clients, -channels and -rate must be positive, -data-bytes at least 40")
	case c.Publisher != "http" && c.Publisher != "amqp":
		return fmt.Errorf("-publisher %q: want http or amqp", c.Publisher)
	case c.AMQPURL == "":
		return errors.New("-amqp-url is required: the scenarios run on RabbitMQ")
	}
	if _, _, err := loopbackTarget(net.JoinHostPort(c.Host, strconv.Itoa(c.Port))); err != nil {
		return err
	}
	if c.Workers <= 0 {
		c.Workers = (c.Clients + 7999) / 8000
	}
	if last := 2 + c.Workers*max(c.SourceAddrs, 1); last > 254 {
		return fmt.Errorf("%d workers x %d source addresses go past 127.0.0.254", c.Workers, c.SourceAddrs)
	}
	return nil
}

// ScenarioResult is what a drain or rolling run measured.
type ScenarioResult struct {
	Scenario  string `json:"scenario"`
	Gateway   string `json:"gateway"`
	Gateways  int    `json:"gateways"`
	Clients   int    `json:"clients"`
	Channels  int    `json:"channels"`
	Workers   int    `json:"workers"`
	Publisher string `json:"publisher"`

	Connected     int64 `json:"connected"`
	ConnectFailed int64 `json:"connect_failed"`

	Rate          float64        `json:"rate"`
	Published     int64          `json:"published"`
	Accepted      int64          `json:"accepted"`
	PublishErrors map[string]int `json:"publish_errors,omitempty"`

	// Close -> resumed, over every reconnect of every client.
	Resumes int64          `json:"resumes"`
	Resets  int64          `json:"resets"`
	Resume  latencySummary `json:"resume"`
	// From the first SIGTERM until the last client resumed.
	LastResumedSecs float64 `json:"last_resumed_seconds"`
	// Delivery latency (publish to receipt) from the first SIGTERM until the last client
	// resumed, and over the whole run.
	StormDelivery latencySummary `json:"storm_delivery"`
	Delivery      latencySummary `json:"delivery"`

	// Per client: every accepted message of its channel once, in the bus's order.
	ClientsOK       int      `json:"clients_ok"`
	ClientsLost     int      `json:"clients_lost"`
	ClientsDup      int      `json:"clients_dup"`
	ClientsDisorder int      `json:"clients_disorder"`
	ClientsReset    int      `json:"clients_reset"`
	ClientsAwaiting int      `json:"clients_awaiting"`
	ClientsNever    int      `json:"clients_never"`
	MaxLost         int64    `json:"max_lost_per_client"`
	MaxDups         int64    `json:"max_dups_per_client"`
	Lost            int64    `json:"lost"`
	Dups            int64    `json:"dups"`
	Disorder        int64    `json:"disorder"`
	Unexpected      int64    `json:"unexpected"`
	Failures        []string `json:"failures,omitempty"`

	Steps      []StepResult   `json:"steps,omitempty"`
	Closes     map[string]int `json:"closes,omitempty"`
	DialErrors map[string]int `json:"dial_errors,omitempty"`
	Warnings   []string       `json:"warnings,omitempty"`
}

// StepResult is one gateway's SIGTERM: how long it took to exit and, in rolling, to be
// ready again.
type StepResult struct {
	Gateway   int     `json:"gateway"`
	ExitSecs  float64 `json:"exit_seconds"`
	ReadySecs float64 `json:"ready_seconds,omitempty"`
	ExitErr   string  `json:"exit_error,omitempty"`
}

// scenario is a run in progress: its gateways, workers and publisher.
type scenario struct {
	cfg      scenarioConfig
	stderr   io.Writer
	exchange string
	stream   string
	addrs    []string
	gws      []*gatewayProc
	workers  []fleetWorker
	pub      *channelPublisher
	res      ScenarioResult
}

// gatewayProc is a running herald-gateway.
type gatewayProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // how it exited; set before done closes
	log  *os.File
}

// newScenario checks the machine, creates the output directory and starts the gateways.
func newScenario(ctx context.Context, cfg scenarioConfig, stderr io.Writer) (*scenario, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, err
	}
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	s := &scenario{cfg: cfg, stderr: stderr, exchange: "herald-bench-" + suffix, stream: "herald-bench-" + suffix + ".stream"}
	s.res = ScenarioResult{Scenario: cfg.Name, Gateway: cfg.GatewayBin, Gateways: cfg.Gateways, Clients: cfg.Clients,
		Channels: cfg.Channels, Workers: cfg.Workers, Publisher: cfg.Publisher, Rate: cfg.Rate}
	for i := range cfg.Gateways {
		addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port+i))
		if dialableTarget(addr) {
			return nil, fmt.Errorf("%s is in use: stop what listens there, or pick another -port", addr)
		}
		s.addrs = append(s.addrs, addr)
	}
	if cfg.QuietBelow > 0 {
		pct, ok := waitQuiet(ctx, cfg.QuietBelow, cfg.QuietWait, func(pct float64) {
			fmt.Fprintf(stderr, "waiting for a quiet machine: %.0f%% busy\n", pct)
		})
		if !ok {
			s.res.Warnings = append(s.res.Warnings, fmt.Sprintf("the machine was %.0f%% busy with other work when the run began", pct))
		}
	}
	s.gws = make([]*gatewayProc, cfg.Gateways)
	for i := range cfg.Gateways {
		if err := s.startGateway(ctx, i); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

// startGateway starts gateway i (again) and waits until it is ready.
func (s *scenario) startGateway(ctx context.Context, i int) error {
	bin := s.cfg.GatewayBin
	args := []string{"-addr", s.addrs[i], "-amqp-url", s.cfg.AMQPURL, "-exchange", s.exchange, "-stream", s.stream,
		"-node-id", "gw-" + strconv.Itoa(i), "-api-key", s.cfg.APIKey}
	args = append(args, loadLimitsOff(bin)...)
	args = append(args, strings.Fields(s.cfg.GatewayArgs)...)
	logf, err := os.OpenFile(filepath.Join(s.cfg.Out, fmt.Sprintf("%s-gw-%d.log", s.cfg.Name, i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("gateway %d: start %s: %w", i, bin, err)
	}
	g := &gatewayProc{cmd: cmd, done: make(chan struct{}), log: logf}
	go func() { g.err = cmd.Wait(); close(g.done) }()
	s.gws[i] = g
	// Ready when /readyz answers 200: connected to the bus, consuming the stream.
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(time.Minute)
	for {
		if resp, err := client.Get("http://" + s.addrs[i] + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-g.done:
			s.gws[i] = nil
			logf.Close()
			return fmt.Errorf("gateway %d exited at start (%v): see %s", i, g.err, logf.Name())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("gateway %d at %s not ready within a minute: see %s", i, s.addrs[i], logf.Name())
		}
	}
}

// stopGateway sends SIGTERM to gateway i and waits (up to limit) for it to exit.
func (s *scenario) stopGateway(i int, limit time.Duration) StepResult {
	g := s.gws[i]
	st := StepResult{Gateway: i}
	start := time.Now()
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(limit):
		_ = g.cmd.Process.Kill()
		<-g.done
		st.ExitErr = fmt.Sprintf("still running %v after SIGTERM: killed", limit)
	}
	st.ExitSecs = time.Since(start).Seconds()
	if g.err != nil && st.ExitErr == "" {
		st.ExitErr = g.err.Error()
	}
	g.log.Close()
	s.gws[i] = nil
	return st
}

// close stops what is still running and deletes the exchange and stream.
func (s *scenario) close() {
	for _, w := range s.workers {
		w.kill()
	}
	if s.pub != nil {
		s.pub.close()
	}
	for i, g := range s.gws {
		if g != nil {
			s.stopGateway(i, 40*time.Second)
		}
	}
	if err := amqpCleanup(s.cfg.AMQPURL, s.exchange, s.stream); err != nil {
		fmt.Fprintf(s.stderr, "warning: RabbitMQ cleanup of %s and %s: %v\n", s.exchange, s.stream, err)
	}
}

// startFleets starts the workers with their share of the clients and waits until every
// client is connected (or failed to), printing progress.
func (s *scenario) startFleets(ctx context.Context, start, reconnect int) error {
	n := s.cfg.Workers
	per := (s.cfg.Clients + n - 1) / n
	for k := range n {
		first := k * per
		count := min(per, s.cfg.Clients-first)
		if count <= 0 {
			break
		}
		fc := fleetConfig{First: first, Count: count, Channels: s.cfg.Channels, Prefix: s.cfg.Name + "-",
			Gateways: s.addrs, Start: start, Reconnect: reconnect, SourceFirst: 2 + k*s.cfg.SourceAddrs,
			SourceCount: s.cfg.SourceAddrs, ConnectRate: max(s.cfg.ConnectRate/n, 1), Dialers: s.cfg.Dialers}
		var w fleetWorker
		var err error
		if n == 1 {
			w, err = newInprocWorker(fc)
		} else {
			w, err = newChildWorker(ctx, fc, k, s.stderr)
		}
		if err != nil {
			return fmt.Errorf("worker %d: %w", k, err)
		}
		s.workers = append(s.workers, w)
	}
	fmt.Fprintf(s.stderr, "connecting %d clients over %d channels to %v in %d worker(s)\n", s.cfg.Clients, s.cfg.Channels, s.addrs, len(s.workers))
	deadline := time.Now().Add(time.Duration(s.cfg.Clients/max(s.cfg.ConnectRate, 1))*time.Second + time.Minute)
	for {
		p := s.progress()
		if p.Welcomed+p.ConnectFailed >= int64(s.cfg.Clients) {
			s.res.Connected, s.res.ConnectFailed = p.Welcomed, p.ConnectFailed
			fmt.Fprintf(s.stderr, "connected %d, failed %d\n", p.Welcomed, p.ConnectFailed)
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("only %d of %d clients connected (%d failed)", p.Welcomed, s.cfg.Clients, p.ConnectFailed)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// progress sums the workers' progress.
func (s *scenario) progress() fleetProgress {
	var t fleetProgress
	for _, w := range s.workers {
		p := w.progress()
		t.Welcomed += p.Welcomed
		t.Live += p.Live
		t.Awaiting += p.Awaiting
		t.Resumed += p.Resumed
		t.Resets += p.Resets
		t.Deliveries += p.Deliveries
		t.Distinct += p.Distinct
		t.ConnectFailed += p.ConnectFailed
		t.LastResumedNS = max(t.LastResumedNS, p.LastResumedNS)
	}
	return t
}

// logProgress prints one line of progress.
func (s *scenario) logProgress(since time.Time, what string) fleetProgress {
	p := s.progress()
	fmt.Fprintf(s.stderr, "%6.1fs %-10s live %6d  awaiting resumed %6d  resumed %6d  resets %d  deliveries %9d\n",
		time.Since(since).Seconds(), what, p.Live, p.Awaiting, p.Resumed, p.Resets, p.Deliveries)
	return p
}

// waitResumed waits until every connected client has resumed wantResumes times in all and
// none awaits, for at most StormWait, printing progress once a second.
func (s *scenario) waitResumed(ctx context.Context, t0 time.Time, wantResumes int64) fleetProgress {
	deadline := time.Now().Add(s.cfg.StormWait)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		p := s.progress()
		if p.Awaiting == 0 && p.Resumed >= wantResumes {
			return p
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.res.Warnings = append(s.res.Warnings, fmt.Sprintf("after %v, %d clients still had not resumed", s.cfg.StormWait, p.Awaiting))
			return p
		}
		select {
		case <-tick.C:
			s.logProgress(t0, "storm")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// settle waits, after publishing stopped, until every client has every accepted message
// of its channel, or deliveries stop for 3 seconds, or SettleWait passes.
func (s *scenario) settle(acc accepted) {
	perChannel := make([]int64, s.cfg.Channels)
	failed := map[int64]bool{}
	for _, f := range acc.Failed {
		failed[f] = true
	}
	for seq := range acc.Total {
		if !failed[seq] {
			perChannel[seq%int64(s.cfg.Channels)]++
		}
	}
	var want int64
	for id := range s.cfg.Clients {
		want += perChannel[id%s.cfg.Channels]
	}
	deadline := time.Now().Add(s.cfg.SettleWait)
	last, lastChange := int64(-1), time.Now()
	for time.Now().Before(deadline) {
		p := s.progress()
		if p.Distinct >= want {
			return
		}
		if p.Distinct != last {
			last, lastChange = p.Distinct, time.Now()
		} else if time.Since(lastChange) > 3*time.Second {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// finish ends the workers and folds their reports into the result; window is the storm
// (from the first SIGTERM to the last resume).
func (s *scenario) finish(acc accepted, stormFrom, stormTo time.Time) error {
	resume, all, storm := newHist(), newTimelineHist(), newTimelineHist()
	s.res.Closes, s.res.DialErrors = map[string]int{}, map[string]int{}
	var failures []string
	for k, w := range s.workers {
		rep, err := w.finish(acc)
		if err != nil {
			return fmt.Errorf("worker %d: %w", k, err)
		}
		resume.Merge(rep.Resume.hist())
		for sec, sh := range rep.Timeline {
			h := sh.hist()
			all.Merge(h)
			if sec >= stormFrom.Unix() && sec <= stormTo.Unix() {
				storm.Merge(h)
			}
		}
		for why, n := range rep.Closes {
			s.res.Closes[why] += n
		}
		for why, n := range rep.DialErrors {
			s.res.DialErrors[why] += n
		}
		s.res.Resets += rep.Progress.Resets
		for _, c := range rep.Clients {
			s.res.MaxLost = max(s.res.MaxLost, c.Lost)
			s.res.MaxDups = max(s.res.MaxDups, c.Dups)
			s.res.Lost += c.Lost
			s.res.Dups += c.Dups
			s.res.Disorder += c.Disorder
			s.res.Unexpected += c.Unexpected
			switch {
			case c.Never:
				s.res.ClientsNever++
			case c.ok():
				s.res.ClientsOK++
			}
			if c.Lost > 0 {
				s.res.ClientsLost++
			}
			if c.Dups > 0 {
				s.res.ClientsDup++
			}
			if c.Disorder > 0 {
				s.res.ClientsDisorder++
			}
			if c.Resets > 0 {
				s.res.ClientsReset++
			}
			if c.Awaiting {
				s.res.ClientsAwaiting++
			}
			if !c.ok() && len(failures) < 20 {
				b, _ := json.Marshal(c)
				failures = append(failures, string(b))
			}
		}
	}
	s.workers = nil
	s.res.Failures = failures
	s.res.Resumes = resume.TotalCount()
	s.res.Resume = summarize(resume)
	s.res.Delivery = summarize(all)
	s.res.StormDelivery = summarize(storm)
	return nil
}

// report writes the result: a table (or JSON) to stdout, JSON to the output directory.
func (s *scenario) report(stdout io.Writer) error {
	f, err := os.Create(filepath.Join(s.cfg.Out, fmt.Sprintf("%s-%d.json", s.cfg.Name, time.Now().Unix())))
	if err == nil {
		err = errors.Join(writeJSON(f, s.res), f.Close())
	}
	if err != nil {
		fmt.Fprintf(s.stderr, "warning: writing the result: %v\n", err)
	}
	if s.cfg.JSON {
		return writeJSON(stdout, s.res)
	}
	printScenario(stdout, s.res)
	return nil
}

func printScenario(w io.Writer, r ScenarioResult) {
	row := func(name, format string, args ...any) {
		fmt.Fprintf(w, "%-50s "+format+"\n", append([]any{name}, args...)...)
	}
	row("scenario", "%s: %d gateways (%s), %d clients over %d channel(s), %d worker(s)", r.Scenario, r.Gateways, r.Gateway, r.Clients, r.Channels, r.Workers)
	row("clients connected / failed", "%d / %d", r.Connected, r.ConnectFailed)
	row("published: accepted / sent", "%d / %d at %.0f msg/s (%s)", r.Accepted, r.Published, r.Rate, r.Publisher)
	if len(r.PublishErrors) > 0 {
		row("publish errors", "%s", countsString(r.PublishErrors))
	}
	for _, st := range r.Steps {
		ready := ""
		if st.ReadySecs > 0 {
			ready = fmt.Sprintf(", ready again %.1fs later", st.ReadySecs)
		}
		row(fmt.Sprintf("gateway %d SIGTERM", st.Gateway), "exited in %.1fs%s %s", st.ExitSecs, ready, st.ExitErr)
	}
	l := r.Resume
	row("close -> resumed: p50 / p99 / max", "%.0f / %.0f / %.0f ms over %d resumes (%d resets)", l.P50Ms, l.P99Ms, l.MaxMs, r.Resumes, r.Resets)
	row("first SIGTERM -> last client resumed", "%.1f s", r.LastResumedSecs)
	row("delivery latency in the storm: p50 / p99 / max", "%.0f / %.0f / %.0f ms (%d deliveries, whole seconds)", r.StormDelivery.P50Ms, r.StormDelivery.P99Ms, r.StormDelivery.MaxMs, r.StormDelivery.Count)
	row("delivery latency, whole run: p50 / p99 / max", "%.0f / %.0f / %.0f ms (%d deliveries)", r.Delivery.P50Ms, r.Delivery.P99Ms, r.Delivery.MaxMs, r.Delivery.Count)
	row("clients with every message once, in order", "%d of %d", r.ClientsOK, r.Clients)
	row("clients with lost / duplicated / disordered", "%d / %d / %d (reset %d, still awaiting resumed %d, never connected %d)",
		r.ClientsLost, r.ClientsDup, r.ClientsDisorder, r.ClientsReset, r.ClientsAwaiting, r.ClientsNever)
	row("messages lost / duplicated / disordered", "%d / %d / %d (unexpected %d)", r.Lost, r.Dups, r.Disorder, r.Unexpected)
	row("most lost / duplicated by one client", "%d / %d", r.MaxLost, r.MaxDups)
	if len(r.Closes) > 0 {
		row("connections ended by", "%s", countsString(r.Closes))
	}
	if len(r.DialErrors) > 0 {
		row("reconnect attempts that failed", "%s", countsString(r.DialErrors))
	}
	for _, f := range r.Failures {
		row("failing client", "%s", f)
	}
	for _, warn := range r.Warnings {
		row("warning", "%s", warn)
	}
}

// fleetWorker is a share of the clients: in this process or in a worker process.
type fleetWorker interface {
	progress() fleetProgress
	finish(acc accepted) (fleetReport, error)
	kill()
}

// inprocWorker runs a fleet in this process.
type inprocWorker struct{ f *fleet }

func newInprocWorker(cfg fleetConfig) (*inprocWorker, error) {
	f, err := newFleet(cfg)
	if err != nil {
		return nil, err
	}
	f.connect()
	return &inprocWorker{f: f}, nil
}

func (w *inprocWorker) progress() fleetProgress { return w.f.progress() }
func (w *inprocWorker) finish(acc accepted) (fleetReport, error) {
	return w.f.finish(acc), nil
}
func (w *inprocWorker) kill() { w.f.close() }

// childWorker is a worker process: this program started again with fleetWorkerCmd. It
// reads its fleetConfig from stdin, writes progress lines to stdout, and on a finish line
// writes its report and exits.
type childWorker struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	last   atomic.Pointer[fleetProgress]
	report chan fleetReport
	done   chan struct{} // closed when its stdout ends
	once   sync.Once
}

// workerMsg is one line a worker writes.
type workerMsg struct {
	Progress *fleetProgress `json:"progress,omitempty"`
	Report   *fleetReport   `json:"report,omitempty"`
	Err      string         `json:"error,omitempty"`
}

func newChildWorker(ctx context.Context, cfg fleetConfig, k int, stderr io.Writer) (*childWorker, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, fleetWorkerCmd)
	cmd.Stderr = &prefixWriter{w: stderr, prefix: fmt.Sprintf("worker %d: ", k)}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &childWorker{cmd: cmd, stdin: stdin, report: make(chan fleetReport, 1), done: make(chan struct{})}
	w.last.Store(&fleetProgress{})
	go w.read(stdout, stderr, k)
	if err := json.NewEncoder(stdin).Encode(cfg); err != nil {
		w.kill()
		return nil, err
	}
	return w, nil
}

func (w *childWorker) read(stdout io.Reader, stderr io.Writer, k int) {
	defer close(w.done)
	dec := json.NewDecoder(bufio.NewReaderSize(stdout, 1<<20))
	for {
		var m workerMsg
		if err := dec.Decode(&m); err != nil {
			return
		}
		switch {
		case m.Err != "":
			fmt.Fprintf(stderr, "worker %d: %s\n", k, m.Err)
		case m.Report != nil:
			w.last.Store(&m.Report.Progress)
			w.report <- *m.Report
		case m.Progress != nil:
			w.last.Store(m.Progress)
		}
	}
}

func (w *childWorker) progress() fleetProgress { return *w.last.Load() }

func (w *childWorker) finish(acc accepted) (fleetReport, error) {
	if err := json.NewEncoder(w.stdin).Encode(struct {
		Finish accepted `json:"finish"`
	}{acc}); err != nil {
		return fleetReport{}, err
	}
	select {
	case rep := <-w.report:
		_ = w.cmd.Wait()
		return rep, nil
	case <-w.done:
		_ = w.cmd.Wait()
		return fleetReport{}, errors.New("the worker ended without a report")
	case <-time.After(2 * time.Minute):
		w.kill()
		return fleetReport{}, errors.New("no report within 2 minutes")
	}
}

func (w *childWorker) kill() {
	w.once.Do(func() {
		_ = w.stdin.Close()
		select {
		case <-w.done:
		case <-time.After(5 * time.Second):
			_ = w.cmd.Process.Kill()
		}
		_ = w.cmd.Wait()
	})
}

// fleetWorker runs in a worker process: see childWorker.
func fleetWorkerMain(stdin io.Reader, stdout io.Writer) error {
	dec := json.NewDecoder(stdin)
	var cfg fleetConfig
	if err := dec.Decode(&cfg); err != nil {
		return fmt.Errorf("reading the fleet's config: %w", err)
	}
	var mu sync.Mutex
	enc := json.NewEncoder(stdout)
	send := func(m workerMsg) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(m)
	}
	f, err := newFleet(cfg)
	if err != nil {
		send(workerMsg{Err: err.Error()})
		return err
	}
	f.connect()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				p := f.progress()
				send(workerMsg{Progress: &p})
			case <-stop:
				return
			}
		}
	})
	var cmd struct {
		Finish *accepted `json:"finish"`
	}
	err = dec.Decode(&cmd)
	close(stop)
	wg.Wait()
	if err != nil || cmd.Finish == nil {
		f.close()
		return nil // the coordinator went away: nothing to report to
	}
	rep := f.finish(*cmd.Finish)
	send(workerMsg{Report: &rep})
	return nil
}

// prefixWriter writes each line with a prefix.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
}

// channelPublisher publishes at a steady rate, message seq to channel seq mod channels,
// each message's data carrying its send time and seq (see payload).
type channelPublisher struct {
	publish func(ctx context.Context, channel string, data []byte) error
	closeFn func()

	next    atomic.Int64 // the next seq
	stopped atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex // protects failed, kinds
	failed  []int64
	kinds   map[string]int
}

// newChannelPublisher makes the publisher: over HTTP to target, or to the exchange.
func newChannelPublisher(ctx context.Context, kind, target, apiKey, amqpURL, exchange string, conns int) (*channelPublisher, error) {
	p := &channelPublisher{kinds: map[string]int{}}
	switch kind {
	case "http":
		tr := &http.Transport{DialContext: newSourceDialer(1, 1).DialContext, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		u := "http://" + target + "/api/publish"
		p.publish = func(ctx context.Context, channel string, data []byte) error {
			body := append(append([]byte(`{"channel":`+strconv.Quote(channel)+`,"data":`), data...), '}')
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Authorization", "Bearer "+apiKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				return fmt.Errorf("HTTP %d", resp.StatusCode)
			}
			return nil
		}
		p.closeFn = client.CloseIdleConnections
	case "amqp":
		pr, err := producer.New(ctx, producer.Config{URL: amqpURL, Exchange: exchange, Name: "herald-bench"})
		if err != nil {
			return nil, err
		}
		p.publish = func(ctx context.Context, channel string, data []byte) error {
			_, err := pr.Publish(ctx, producer.Message{Channel: channel, Data: json.RawMessage(bytes.Clone(data))})
			return err
		}
		p.closeFn = func() { _ = pr.Close() }
	default:
		return nil, fmt.Errorf("unknown publisher %q", kind)
	}
	return p, nil
}

// start publishes at rate with workers goroutines until stop is called.
func (p *channelPublisher) start(rate float64, workers, size, channels int, prefix string) {
	start := time.Now()
	for range max(workers, 1) {
		p.wg.Go(func() {
			buf := make([]byte, 0, size+64)
			for {
				seq := p.next.Add(1) - 1
				due := start.Add(time.Duration(float64(seq) / rate * float64(time.Second)))
				for time.Until(due) > 0 && !p.stopped.Load() {
					time.Sleep(min(time.Until(due), 50*time.Millisecond))
				}
				if p.stopped.Load() {
					p.fail(seq, "") // taken, never sent: not expected
					return
				}
				buf = payload(buf, seq, time.Now(), size, false)
				// Not the run's context: a publish under way finishes, so that what the
				// broker took is known as accepted.
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				err := p.publish(ctx, prefix+strconv.FormatInt(seq%int64(channels), 10), buf)
				cancel()
				if err != nil {
					p.fail(seq, shortErr(err))
				}
			}
		})
	}
}

func (p *channelPublisher) fail(seq int64, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failed = append(p.failed, seq)
	if why != "" {
		p.kinds[why]++
	}
}

// stop ends publishing and returns what was accepted, how many were sent and why some
// failed.
func (p *channelPublisher) stop() (accepted, int64, map[string]int) {
	p.stopped.Store(true)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	total := p.next.Load()
	slices.Sort(p.failed)
	sendErrs := 0 // failed, as against taken and never sent
	for _, n := range p.kinds {
		sendErrs += n
	}
	notSent := len(p.failed) - sendErrs
	return accepted{Total: total, Failed: slices.Clone(p.failed)}, total - int64(notSent), p.kinds
}

func (p *channelPublisher) close() { p.closeFn() }

// storeAccepted records the publisher's counts in the result.
func (s *scenario) storeAccepted(acc accepted, sent int64, kinds map[string]int) {
	s.res.Published = sent
	s.res.Accepted = acc.Total - int64(len(acc.Failed))
	if len(kinds) > 0 {
		s.res.PublishErrors = kinds
	}
}
