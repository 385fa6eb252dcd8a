package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// rampConfig is how ramp raises the rate.
type rampConfig struct {
	From     float64
	Factor   float64
	MaxRate  float64
	Step     time.Duration
	Warmup   time.Duration
	P99Limit time.Duration
	SVG      string
	Title    string
}

// RampStep is one rate of a ramp.
type RampStep struct {
	PhaseResult
	Sustained bool   `json:"sustained"`
	Why       string `json:"why,omitempty"` // why not sustained
}

// RampResult is a whole ramp.
type RampResult struct {
	Result
	Steps                []RampStep `json:"steps"`
	MaxDeliveriesPerSec  float64    `json:"max_sustained_deliveries_per_sec"`
	MaxRate              float64    `json:"max_sustained_rate"`
	P99AtMaxMs           float64    `json:"p99_at_max_ms"`
	ServerCPUPerDelivMax float64    `json:"server_cpu_per_delivery_us_at_max"`
	SVG                  string     `json:"svg,omitempty"`
}

func bindRampFlags(fs *flag.FlagSet, r *rampConfig) {
	fs.Float64Var(&r.From, "from", r.From, "first rate, msg/s")
	fs.Float64Var(&r.Factor, "factor", r.Factor, "each step's rate is the last one's times this")
	fs.Float64Var(&r.MaxRate, "max-rate", r.MaxRate, "stop after this rate")
	fs.DurationVar(&r.Step, "step", r.Step, "publishing time of each step")
	fs.DurationVar(&r.Warmup, "step-warmup", r.Warmup, "warm-up of each step, outside its window")
	fs.DurationVar(&r.P99Limit, "p99-limit", r.P99Limit, "a step is sustained while p99 stays under this (and nothing is lost, and the publisher keeps pace)")
	fs.StringVar(&r.SVG, "svg", r.SVG, "file for the plot of p99 latency against deliveries/s (empty: none)")
	fs.StringVar(&r.Title, "title", r.Title, "title of the plot")
}

func defaultRampConfig() rampConfig {
	return rampConfig{From: 50, Factor: 1.25, MaxRate: 5000, Step: 8 * time.Second, Warmup: 2 * time.Second,
		P99Limit: time.Second, SVG: "ramp.svg", Title: "p99 latency against delivery rate"}
}

func rampCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	rc := defaultRampConfig()
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "publish-conns") }) {
		args = append([]string{"-publish-conns", "8"}, args...) // 4 fall behind near 700 msg/s here
	}
	cfg, err := parseRunFlags("ramp", args, stderr, func(fs *flag.FlagSet) { bindRampFlags(fs, &rc) })
	if err != nil {
		return err
	}
	res, err := runRamp(ctx, cfg, rc, stderr)
	if err != nil && len(res.Steps) == 0 {
		return err
	}
	if cfg.JSON {
		return writeJSON(stdout, res)
	}
	printRamp(stdout, res)
	return err
}

// runRamp holds cfg.Conns connections and publishes at rising rates, one step after the
// other, until a step is not sustained or the maximum rate is passed.
func runRamp(ctx context.Context, cfg runConfig, rc rampConfig, stderr io.Writer) (RampResult, error) {
	if cfg.Rate <= 0 {
		cfg.Rate = rc.From // a publisher is needed
	}
	cfg.Preset = "ramp"
	s, err := openSession(ctx, cfg, stderr)
	if err != nil {
		return RampResult{}, err
	}
	defer s.close()
	var res RampResult
	for rate := rc.From; rate <= rc.MaxRate; rate *= rc.Factor {
		rate = math.Round(rate)
		fmt.Fprintf(stderr, "ramp: %.0f msg/s to %d connections\n", rate, s.cs.live.Load())
		ph, err := s.phase(ctx, rate, rc.Step, rc.Warmup, 0, "")
		if err != nil {
			res.Result = s.res
			return res, err
		}
		st := RampStep{PhaseResult: ph, Sustained: true}
		var why []string
		if ph.Latency.P99Ms >= float64(rc.P99Limit.Milliseconds()) {
			why = append(why, fmt.Sprintf("p99 %.0fms", ph.Latency.P99Ms))
		}
		if ph.Lost > ph.Expected/1000 {
			why = append(why, fmt.Sprintf("lost %d", ph.Lost))
		}
		if ph.PublishRate < 0.95*rate {
			why = append(why, fmt.Sprintf("publisher at %.0f msg/s", ph.PublishRate))
		}
		if len(ph.ReceiversEnded) > 0 {
			why = append(why, "receivers closed: "+countsString(ph.ReceiversEnded))
		}
		if len(why) > 0 {
			st.Sustained, st.Why = false, strings.Join(why, "; ")
		}
		res.Steps = append(res.Steps, st)
		if st.Sustained && ph.DeliveriesPerSec > res.MaxDeliveriesPerSec {
			res.MaxDeliveriesPerSec, res.MaxRate = ph.DeliveriesPerSec, rate
			res.P99AtMaxMs, res.ServerCPUPerDelivMax = ph.Latency.P99Ms, ph.ServerCPUPerDelivUS
		}
		if !st.Sustained {
			break
		}
	}
	res.Result = s.res
	if rc.SVG != "" {
		title := fmt.Sprintf("%s: %s, %d connections", rc.Title, cfg.Target, s.res.ConnsMade)
		if err := os.WriteFile(rc.SVG, []byte(rampSVG(title, res.Steps)), 0o644); err != nil {
			return res, fmt.Errorf("write plot: %w", err)
		}
		res.SVG = rc.SVG
	}
	return res, nil
}

func printRamp(w io.Writer, r RampResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "rate msg/s\tdeliveries/s\tp50 ms\tp99 ms\tmax ms\tlost\tserver us/deliv\tserver cpu %\ttool cpu %\tsustained\t")
	for _, s := range r.Steps {
		ok := "yes"
		if !s.Sustained {
			ok = "no: " + s.Why
		}
		fmt.Fprintf(tw, "%.0f\t%.0f\t%.2f\t%.2f\t%.2f\t%d\t%.2f\t%.0f\t%.0f\t%s\t\n", s.Rate, s.DeliveriesPerSec,
			s.Latency.P50Ms, s.Latency.P99Ms, s.Latency.MaxMs, s.Lost, s.ServerCPUPerDelivUS, s.ServerCPUPercent, s.ToolCPUPercent, ok)
	}
	tw.Flush()
	fmt.Fprintf(w, "max sustained: %.0f deliveries/s (%.0f msg/s to %d connections), p99 %.2f ms, server %.2f us/delivery\n",
		r.MaxDeliveriesPerSec, r.MaxRate, r.ConnsMade, r.P99AtMaxMs, r.ServerCPUPerDelivMax)
	if r.SVG != "" {
		fmt.Fprintf(w, "plot: %s\n", r.SVG)
	}
}

// rampSVG draws p99 (and p50) latency, on a log scale, against deliveries per second.
func rampSVG(title string, steps []RampStep) string {
	const (
		width, height          = 800, 500
		left, right, top, bott = 80, 30, 50, 60
	)
	pw, ph := float64(width-left-right), float64(height-top-bott)
	xmax := 1.0
	ymin, ymax := 1.0, 1000.0 // ms: at least 1ms to 1s, widened to fit
	for _, s := range steps {
		xmax = max(xmax, s.DeliveriesPerSec)
		for _, v := range []float64{s.Latency.P50Ms, s.Latency.P99Ms} {
			if v > 0 {
				ymin, ymax = min(ymin, v), max(ymax, v)
			}
		}
	}
	xmax = niceCeil(xmax * 1.05)
	lo, hi := math.Floor(math.Log10(ymin)), math.Ceil(math.Log10(ymax))
	if hi <= lo {
		hi = lo + 1
	}
	x := func(v float64) float64 { return float64(left) + pw*v/xmax }
	y := func(ms float64) float64 {
		ms = max(ms, math.Pow(10, lo))
		return float64(top) + ph*(1-(math.Log10(ms)-lo)/(hi-lo))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="25" font-size="15">%s</text>`+"\n", left, xmlEscape(title))
	// Grid and axes.
	for e := lo; e <= hi; e++ {
		v := math.Pow(10, e)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, width-right, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, msLabel(v))
	}
	for i := 0; i <= 5; i++ {
		v := xmax * float64(i) / 5
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#ddd"/>`+"\n", x(v), x(v), top, height-bott)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x(v), height-bott+18, rateLabel(v))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", left, top, pw, ph)
	fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle">deliveries per second</text>`+"\n", float64(left)+pw/2, height-15)
	fmt.Fprintf(&b, `<text transform="translate(20 %.0f) rotate(-90)" text-anchor="middle">latency (log scale)</text>`+"\n", float64(top)+ph/2)
	// The 1s line.
	fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#c00" stroke-dasharray="6 4"/>`+"\n", left, width-right, y(1000), y(1000))
	fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#c00">p99 limit 1 s</text>`+"\n", width-right-4, y(1000)-4)
	series := func(name, color string, val func(RampStep) float64, ly int) {
		var pts []string
		for _, s := range steps {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.DeliveriesPerSec), y(val(s))))
		}
		fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), color)
		for _, s := range steps {
			fill := color
			if !s.Sustained {
				fill = "white"
			}
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s" stroke="%s"><title>%.0f msg/s: %.0f deliveries/s, %s %.2f ms</title></circle>`+"\n",
				x(s.DeliveriesPerSec), y(val(s)), fill, color, s.Rate, s.DeliveriesPerSec, name, val(s))
		}
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"/><text x="%d" y="%d">%s</text>`+"\n",
			left+12, left+36, ly, ly, color, left+42, ly+4, name)
	}
	series("p99", "#1f5fbf", func(s RampStep) float64 { return s.Latency.P99Ms }, top+16)
	series("p50", "#7a9a3a", func(s RampStep) float64 { return s.Latency.P50Ms }, top+34)
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">hollow: not sustained</text>`+"\n", left+12, top+52)
	b.WriteString("</svg>\n")
	return b.String()
}

func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func msLabel(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%gs", ms/1000)
	}
	return fmt.Sprintf("%gms", ms)
}

func rateLabel(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", math.Round(v/1e4)/100)
	case v >= 1e3:
		return fmt.Sprintf("%gk", math.Round(v/10)/100)
	}
	return fmt.Sprintf("%g", v)
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
