package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// compareConfig is a side-by-side comparison of Herald and the baseline.
type compareConfig struct {
	GatewayBin  string
	GatewayArgs string
	BaselineBin string
	BaselineArg string
	// BaselineHerald says the baseline binary is another build of herald-gateway (say,
	// main before a change): it is started with Herald's flags and runs every regime, so
	// that two builds are measured side by side.
	BaselineHerald bool
	// Transport and BaselineTransport are how the load's clients receive from Herald and
	// from the baseline: ws or sse. With the same binary as both (and -baseline-herald),
	// they measure SSE against WebSocket side by side.
	Transport         string
	BaselineTransport string
	Runs              int
	Regimes           string
	APIKey            string
	GatewayAddr       string
	BaseAddr          string
	PprofAddr         string
	PprofRegime       string
	AMQPURL           string
	Floor             bool
	FloorReader       string
	QuietBelow        float64
	QuietWait         time.Duration
	Out               string
	JSON              bool
}

// systems compared, in the order they run within a round.
const (
	sysHerald   = "herald"
	sysBaseline = "baseline"
)

// allRegimes are what compare can run. idle19900 and idle10000 hold that many idle
// connections; C also gives the RSS per idle connection at 10,000; rabbit runs Herald
// alone on RabbitMQ.
var allRegimes = []string{"idle19900", "idle10000", "A", "B", "C", "p99", "ramp", "rabbit"}

func compareCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := compareConfig{Runs: 3, Regimes: "idle19900,A,B,C,p99,ramp", APIKey: "bench-key",
		GatewayAddr: "127.0.0.1:18080", BaseAddr: "127.0.0.1:18090", PprofRegime: "C", Floor: true, FloorReader: "epoll", Out: "bench-out"}
	fs := flag.NewFlagSet("herald-bench compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.GatewayBin, "gateway-bin", "bin/herald-gateway", "herald-gateway binary (go build, not go run)")
	fs.StringVar(&c.GatewayArgs, "gateway-args", "", "extra flags for herald-gateway, space-separated")
	fs.StringVar(&c.BaselineBin, "baseline-bin", "bin/baseline", "the classic gorilla hub binary (./gateway/cmd/herald-bench/baseline)")
	fs.StringVar(&c.BaselineArg, "baseline-args", "", "extra flags for the baseline, space-separated")
	fs.BoolVar(&c.BaselineHerald, "baseline-herald", false, "the baseline binary is another herald-gateway build (e.g. main before a change): start it with Herald's flags and run every regime on it")
	fs.StringVar(&c.Transport, "transport", "ws", "how the clients receive from Herald: ws or sse")
	fs.StringVar(&c.BaselineTransport, "baseline-transport", "ws", "how the clients receive from the baseline: ws, or sse when it is a herald-gateway build (-baseline-herald)")
	fs.IntVar(&c.Runs, "runs", c.Runs, "rounds; each runs every regime on Herald then on the baseline (A B A B), and the table shows medians")
	fs.StringVar(&c.Regimes, "regimes", c.Regimes, "comma-separated, from "+strings.Join(allRegimes, ",")+" (rabbit needs -amqp-url)")
	fs.StringVar(&c.APIKey, "api-key", c.APIKey, "API key both servers are started with")
	fs.StringVar(&c.GatewayAddr, "gateway-addr", c.GatewayAddr, "address Herald listens on (a build with -trace-dispatches gets its admin listener, for the p99 breakdown, on the next port, unless -pprof-addr)")
	fs.StringVar(&c.BaseAddr, "baseline-addr", c.BaseAddr, "address the baseline listens on (with -baseline-herald, as -gateway-addr)")
	fs.StringVar(&c.PprofAddr, "pprof-addr", "", "when set, Herald is started with -debug-addr this, and profiled (net/http/pprof) over the window of -pprof-regime in the first round")
	fs.StringVar(&c.PprofRegime, "pprof-regime", c.PprofRegime, "regime to profile")
	fs.StringVar(&c.AMQPURL, "amqp-url", "", "RabbitMQ URL for the rabbit regime; it uses a fresh exchange and stream and deletes them")
	fs.Float64Var(&c.QuietBelow, "quiet-below", 20, "before each measurement, wait until the machine is less busy than this percent (0: don't wait)")
	fs.DurationVar(&c.QuietWait, "quiet-wait", 3*time.Minute, "longest wait for a quiet machine; then measure anyway, with a warning")
	fs.BoolVar(&c.Floor, "floor", c.Floor, "measure the floor first (1,000 and 10,000 sockets, 1 frame per write)")
	fs.StringVar(&c.FloorReader, "floor-reader", c.FloorReader, "how the floor's reading process reads (see herald-bench floor -reader): epoll is how the regimes' receivers read")
	fs.StringVar(&c.Out, "out", c.Out, "directory for each run's JSON, the plots and the profile")
	fs.BoolVar(&c.JSON, "json", false, "print the summary as JSON")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	for _, t := range []string{c.Transport, c.BaselineTransport} {
		if t != "ws" && t != "sse" {
			fmt.Fprintf(stderr, "herald-bench compare: unknown transport %q: want ws or sse\n", t)
			return errUsage
		}
	}
	if c.BaselineTransport == "sse" && !c.BaselineHerald {
		fmt.Fprintln(stderr, "herald-bench compare: the classic baseline has no /sse: -baseline-transport sse needs -baseline-herald")
		return errUsage
	}
	regimes := strings.Split(c.Regimes, ",")
	for _, r := range regimes {
		if !slices.Contains(allRegimes, r) {
			fmt.Fprintf(stderr, "herald-bench compare: unknown regime %q\n", r)
			return errUsage
		}
		if r == "rabbit" && c.AMQPURL == "" {
			fmt.Fprintln(stderr, "herald-bench compare: regime rabbit needs -amqp-url")
			return errUsage
		}
	}
	for _, addr := range []string{c.GatewayAddr, c.BaseAddr} {
		if _, _, err := loopbackTarget(addr); err != nil {
			return err
		}
		if dialableTarget(addr) {
			return fmt.Errorf("%s is in use: stop what listens there, or pick another address", addr)
		}
	}
	if err := os.MkdirAll(c.Out, 0o755); err != nil {
		return err
	}

	sum := &compareSummary{Figures: map[string]map[string][]float64{}}
	if c.Floor {
		for _, n := range []int{1000, 10000} {
			rs, err := floorSockets(ctx, n, []int{1}, 160, 50000, 5*time.Second, 16, c.FloorReader, c.QuietBelow, stderr)
			if err != nil {
				return fmt.Errorf("floor: %w", err)
			}
			sum.Floor = append(sum.Floor, rs...)
		}
	}
	for round := 1; round <= c.Runs; round++ {
		for _, regime := range regimes {
			for _, sys := range []string{sysHerald, sysBaseline} {
				if regime == "rabbit" && sys == sysBaseline && !c.BaselineHerald {
					continue
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				fmt.Fprintf(stderr, "\n=== round %d/%d, regime %s, %s ===\n", round, c.Runs, regime, sys)
				if err := c.runOne(ctx, round, regime, sys, sum, stderr); err != nil {
					fmt.Fprintf(stderr, "round %d %s %s: %v\n", round, regime, sys, err)
					sum.Failures = append(sum.Failures, fmt.Sprintf("round %d %s %s: %v", round, regime, sys, err))
				}
			}
		}
	}
	if c.JSON {
		return writeJSON(stdout, sum)
	}
	if c.BaselineHerald {
		fmt.Fprintf(stdout, "baseline: %s, another herald-gateway build\n", c.BaselineBin)
	}
	if c.Transport != "ws" || c.BaselineTransport != "ws" {
		fmt.Fprintf(stdout, "transport: herald %s, baseline %s\n", c.Transport, c.BaselineTransport)
	}
	sum.print(stdout)
	return nil
}

// runOne starts sys, runs one regime against it, stops it, and adds the figures to sum.
func (c *compareConfig) runOne(ctx context.Context, round int, regime, sys string, sum *compareSummary, stderr io.Writer) error {
	addr, bin, extra, transport := c.GatewayAddr, c.GatewayBin, c.GatewayArgs, c.Transport
	if sys == sysBaseline {
		addr, bin, extra, transport = c.BaseAddr, c.BaselineBin, c.BaselineArg, c.BaselineTransport
	}
	args := []string{"-addr", addr, "-api-key", c.APIKey}
	cfg := defaultRunConfig()
	cfg.Transport = transport
	cfg.Target, cfg.Pub.Target, cfg.Pub.APIKey = addr, addr, c.APIKey
	cfg.QuietBelow, cfg.QuietWait = c.QuietBelow, c.QuietWait
	tag := fmt.Sprintf("%s-%s-%d", regime, sys, round)
	isHerald := sys == sysHerald || c.BaselineHerald
	if isHerald {
		args = append(args, "-log-level", "warn")
	}
	if sys == sysHerald {
		if c.PprofAddr != "" && regime == c.PprofRegime && round == 1 {
			args = append(args, "-debug-addr", c.PprofAddr)
			cfg.PprofURL, cfg.PprofOut = "http://"+c.PprofAddr, filepath.Join(c.Out, "cpu-"+tag+".pprof")
		}
	}
	var exchange, stream string
	switch regime {
	case "idle19900":
		cfg.Preset, cfg.Conns, cfg.Rate = "idle19900", 19900, 0
	case "idle10000":
		cfg.Preset, cfg.Conns, cfg.Rate = "idle10000", 10000, 0
	case "rabbit":
		presets["p99"](&cfg)
		cfg.Preset = "rabbit"
		suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
		exchange, stream = "herald-bench-"+suffix, "herald-bench-"+suffix+".stream"
		args = append(args, "-amqp-url", c.AMQPURL, "-exchange", exchange, "-stream", stream)
		cfg.Pub.Kind, cfg.Pub.AMQPURL, cfg.Pub.Exchange, cfg.Pub.Conns = "amqp", c.AMQPURL, exchange, 16
	case "ramp":
		cfg.Conns, cfg.Pub.Conns = 1000, 8 // 4 HTTP publishers fall behind near 700 msg/s here
	default:
		presets[regime](&cfg)
		cfg.Preset = regime
	}
	if isHerald {
		args = append(args, loadLimitsOff(bin)...)
		if traces(bin) && regime != "ramp" && regime != "idle19900" {
			// The dispatch traces for the p99 breakdown, on the admin listener (the
			// deprecated -debug-addr, which leaves /metrics on the public listener too,
			// where the run reads it): the pprof address, else the port after addr's.
			admin := slices.Index(args, "-debug-addr")
			if admin < 0 {
				args = append(args, "-debug-addr", nextPort(addr))
				admin = len(args) - 2
			}
			args = append(args, "-trace-dispatches", strconv.Itoa(breakdownTraces))
			cfg.AdminURL = "http://" + args[admin+1]
		}
	}
	args = append(args, strings.Fields(extra)...)
	logf, err := os.Create(filepath.Join(c.Out, "server-"+tag+".log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	srv, err := startServer(ctx, bin, args, addr, logf)
	if err != nil {
		return err
	}
	cfg.PID = srv.Process.Pid
	defer func() {
		stopServer(srv)
		if exchange != "" {
			if err := amqpCleanup(c.AMQPURL, exchange, stream); err != nil {
				fmt.Fprintf(stderr, "warning: RabbitMQ cleanup: %v\n", err)
			}
		}
	}()

	fig := func(name string, v float64) { sum.add(name, sys, v) }
	var out any
	if regime == "ramp" {
		rc := defaultRampConfig()
		rc.SVG = filepath.Join(c.Out, "ramp-"+tag+".svg")
		rc.Title = "p99 latency against delivery rate, " + sys
		res, err := runRamp(ctx, cfg, rc, stderr)
		if err != nil {
			return err
		}
		printRamp(stderr, res)
		fig("ramp: max deliveries/s at 1k conns (p99 < 1s)", res.MaxDeliveriesPerSec)
		fig("ramp: server CPU per delivery at max (us)", res.ServerCPUPerDelivMax)
		out = res
	} else {
		res, err := runLoad(ctx, cfg, stderr)
		if err != nil {
			return err
		}
		printResult(stderr, res)
		if res.ConnsFailed > 0 {
			sum.Failures = append(sum.Failures, fmt.Sprintf("round %d %s %s: %d of %d connections failed (%s)",
				round, regime, sys, res.ConnsFailed, res.Conns, countsString(res.ConnErrors)))
		}
		switch regime {
		case "idle19900":
			fig("RSS per idle conn at 19,900 (KiB)", res.RSSPerIdleConnKiB)
		case "idle10000":
			fig("idle10000: RSS per idle conn (KiB)", res.RSSPerIdleConnKiB)
		case "C":
			fig("RSS per idle conn at 10,000 (KiB)", res.RSSPerIdleConnKiB)
		}
		if p := res.Phase; p != nil {
			fig(regime+": server CPU per delivery (us)", p.ServerCPUPerDelivUS)
			fig(regime+": deliveries/s", p.DeliveriesPerSec)
			fig(regime+": p50 (ms)", p.Latency.P50Ms)
			fig(regime+": p99 (ms)", p.Latency.P99Ms)
			fig(regime+": lost deliveries", float64(p.Lost))
			if c.Transport == "sse" || c.BaselineTransport == "sse" {
				fig(regime+": duplicated events (SSE only)", float64(p.Dups))
			}
			fig(regime+": tool CPU per delivery (us)", p.ToolCPUPerDelivUS)
			if p.DelivPerWrite > 0 {
				fig(regime+": deliveries per socket write", p.DelivPerWrite)
			}
			if p.Breakdown != nil {
				sum.addBreakdown(regime, sys, *p.Breakdown)
			}
		}
		out = res
	}
	f, err := os.Create(filepath.Join(c.Out, tag+".json"))
	if err != nil {
		return err
	}
	defer f.Close()
	return writeJSON(f, out)
}

// edgeLimits are herald-gateway's per-address limits, which a load from a few loopback
// addresses would hit: they are turned off for a measurement of the data path.
var edgeLimits = []string{"max-connections-per-ip", "handshake-rate"}

// traces reports whether bin can keep dispatch traces (--trace-dispatches, in its -help).
func traces(bin string) bool {
	out, _ := exec.Command(bin, "-help").CombinedOutput()
	return strings.Contains(string(out), "-trace-dispatches ")
}

// nextPort is addr with the port after its own.
func nextPort(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return net.JoinHostPort(host, strconv.Itoa(n+1))
}

// loadLimitsOff returns the flags that turn off those of the edge limits that bin has
// (older builds have none), found in its -help.
func loadLimitsOff(bin string) []string {
	out, _ := exec.Command(bin, "-help").CombinedOutput()
	var args []string
	for _, name := range edgeLimits {
		if strings.Contains(string(out), "-"+name+" ") {
			args = append(args, "-"+name, "0")
		}
	}
	return args
}

// startServer starts bin and waits until it accepts connections at addr and, where it has
// /readyz, is ready.
func startServer(ctx context.Context, bin string, args []string, addr string, log io.Writer) (*exec.Cmd, error) {
	if dialableTarget(addr) {
		return nil, fmt.Errorf("%s is already in use", addr)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if dialableTarget(addr) {
			resp, err := http.Get("http://" + addr + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusNotFound {
					time.Sleep(time.Second) // let it settle before its RSS is read
					return cmd, nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopServer(cmd)
	return nil, fmt.Errorf("%s did not get ready at %s", bin, addr)
}

// stopServer asks cmd to stop (SIGTERM), and kills it when it has not within 40s.
func stopServer(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// amqpCleanupCmd deletes a stream and an exchange left by a RabbitMQ run of herald-gateway.
func amqpCleanupCmd(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("herald-bench amqp-cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("amqp-url", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL")
	exchange := fs.String("exchange", "", "exchange to delete")
	stream := fs.String("stream", "", "stream queue to delete")
	if err := fs.Parse(args); err != nil || *exchange == "" || *stream == "" {
		fmt.Fprintln(stderr, "herald-bench amqp-cleanup: -exchange and -stream are required")
		return errUsage
	}
	if *exchange == "herald" || *stream == "herald.stream" {
		fmt.Fprintln(stderr, "herald-bench amqp-cleanup: refusing to delete the default exchange or stream")
		return errUsage
	}
	return amqpCleanup(*url, *exchange, *stream)
}

// amqpCleanup deletes the stream and the exchange a RabbitMQ run made.
func amqpCleanup(url, exchange, stream string) error {
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	_, err1 := ch.QueueDelete(stream, false, false, false)
	err2 := ch.ExchangeDelete(exchange, false, false)
	return errors.Join(err1, err2)
}

// compareSummary holds every run's figures: figure -> system -> one value per round.
type compareSummary struct {
	Floor    []FloorResult                   `json:"floor,omitempty"`
	Figures  map[string]map[string][]float64 `json:"figures"`
	Order    []string                        `json:"order"`
	Failures []string                        `json:"failures,omitempty"`
	// Breakdowns are the regimes' p99 breakdowns: regime -> system -> one per round.
	Breakdowns map[string]map[string][]Breakdown `json:"breakdowns,omitempty"`
	Regimes    []string                          `json:"regimes,omitempty"` // of Breakdowns, in order
}

func (s *compareSummary) addBreakdown(regime, sys string, b Breakdown) {
	if s.Breakdowns == nil {
		s.Breakdowns = map[string]map[string][]Breakdown{}
	}
	if s.Breakdowns[regime] == nil {
		s.Breakdowns[regime] = map[string][]Breakdown{}
		s.Regimes = append(s.Regimes, regime)
	}
	s.Breakdowns[regime][sys] = append(s.Breakdowns[regime][sys], b)
}

// medianBreakdown is the median of each figure of bs over the rounds.
func medianBreakdown(bs []Breakdown) Breakdown {
	fig := func(f func(Breakdown) float64) float64 {
		vs := make([]float64, len(bs))
		for i, b := range bs {
			vs[i] = f(b)
		}
		return median(vs)
	}
	return Breakdown{
		Messages:      int(fig(func(b Breakdown) float64 { return float64(b.Messages) })),
		PublishP99Ms:  fig(func(b Breakdown) float64 { return b.PublishP99Ms }),
		BusHubP99Ms:   fig(func(b Breakdown) float64 { return b.BusHubP99Ms }),
		EnqueueP99Ms:  fig(func(b Breakdown) float64 { return b.EnqueueP99Ms }),
		WriteP99Ms:    fig(func(b Breakdown) float64 { return b.WriteP99Ms }),
		HubWriteP99Ms: fig(func(b Breakdown) float64 { return b.HubWriteP99Ms }),
	}
}

// printBreakdowns prints one line per regime and system that has them: the median over
// the rounds of each segment's p99.
func (s *compareSummary) printBreakdowns(w io.Writer) {
	if len(s.Regimes) == 0 {
		return
	}
	fmt.Fprintln(w, "\np99 breakdown (median over the rounds of each segment's own p99, see Breakdown in breakdown.go):")
	for _, regime := range s.Regimes {
		for _, sys := range []string{sysHerald, sysBaseline} {
			if bs := s.Breakdowns[regime][sys]; len(bs) > 0 {
				fmt.Fprintf(w, "  %s, %s: %s\n", regime, sys, medianBreakdown(bs))
			}
		}
	}
}

func (s *compareSummary) add(figure, sys string, v float64) {
	if s.Figures[figure] == nil {
		s.Figures[figure] = map[string][]float64{}
		s.Order = append(s.Order, figure)
	}
	s.Figures[figure][sys] = append(s.Figures[figure][sys], v)
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (s *compareSummary) print(w io.Writer) {
	floor := map[int]float64{}
	if len(s.Floor) > 0 {
		fmt.Fprintln(w, "floor (writer CPU per 160-byte frame, one frame per write):")
		for _, f := range s.Floor {
			fmt.Fprintf(w, "  %d sockets, %s reader: %.2f us\n", f.Sockets, f.Reader, f.WriterCPUUS)
			floor[f.Sockets] = f.WriterCPUUS
		}
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\therald (median)\tbaseline (median)\therald/baseline\therald runs\tbaseline runs")
	for _, name := range s.Order {
		h, b := s.Figures[name][sysHerald], s.Figures[name][sysBaseline]
		mh, mb := median(h), median(b)
		ratio := "-"
		if len(h) > 0 && len(b) > 0 && mb != 0 {
			ratio = fmt.Sprintf("%.2f", mh/mb)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", name, num(mh), num(mb), ratio, nums(h), nums(b))
		if strings.HasSuffix(name, "server CPU per delivery (us)") {
			sockets := 1000
			if strings.HasPrefix(name, "C:") {
				sockets = 10000
			}
			if f := floor[sockets]; f > 0 {
				fmt.Fprintf(tw, "%s\t%s\t%s\t\t\t\n", strings.Replace(name, "(us)", fmt.Sprintf("(x floor at %d)", sockets), 1), num(mh/f), num(mb/f))
			}
		}
	}
	tw.Flush()
	s.printBreakdowns(w)
	for _, f := range s.Failures {
		fmt.Fprintf(w, "failed: %s\n", f)
	}
}

func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case math.Abs(v) >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func nums(vs []float64) string {
	var parts []string
	for _, v := range vs {
		parts = append(parts, num(v))
	}
	return strings.Join(parts, " ")
}
