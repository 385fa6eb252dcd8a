// Package logsample keeps the logs of what clients can repeat at will (refused handshakes,
// refused connections, closed abusers) bounded: a Sampler writes a few lines of each
// reason, then at most one a second, and says in one line per period how many it left
// out; Clip bounds what a line holds of a value a client sent.
package logsample

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"
)

// Config shapes a Sampler. Each zero field has the default its comment gives.
type Config struct {
	// PerSecond is how many lines of one reason may be written a second, on average,
	// once the burst is spent. Default 1.
	PerSecond float64
	// Burst is how many lines of one reason may be written at once. Default 10.
	Burst int
	// Report is how long after the first line it left out a Sampler writes how many
	// lines of that reason it left out. Default 10s.
	Report time.Duration
}

// Sampler writes log lines by reason, each reason with a token bucket of its own. The
// reasons are the caller's constants (a handful): a Sampler keeps one small entry per
// reason for good. Safe for concurrent use.
type Sampler struct {
	log *slog.Logger
	cfg Config

	mu      sync.Mutex // protects reasons, the entries' suppressed and timer, and closed
	reasons map[string]*reason
	closed  bool
}

type reason struct {
	lim        *rate.Limiter
	suppressed int         // lines left out since the last report
	timer      *time.Timer // armed while suppressed > 0: it writes the report
}

// New returns a Sampler that writes to log.
func New(log *slog.Logger, cfg Config) *Sampler {
	if cfg.PerSecond <= 0 {
		cfg.PerSecond = 1
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 10
	}
	if cfg.Report <= 0 {
		cfg.Report = 10 * time.Second
	}
	return &Sampler{log: log, cfg: cfg, reasons: make(map[string]*reason)}
}

// Log writes msg with args at level, unless lines of reason come faster than the
// Sampler's rate: then it counts the line as left out, and a line "log lines
// suppressed" with reason and the count follows within the report period. The line
// written carries reason as an attribute. Values a client sent belong in args wrapped
// by Clip.
func (s *Sampler) Log(level slog.Level, why, msg string, args ...any) {
	ctx := context.Background()
	if !s.log.Enabled(ctx, level) {
		return
	}
	s.mu.Lock()
	r, ok := s.reasons[why]
	if !ok {
		r = &reason{lim: rate.NewLimiter(rate.Limit(s.cfg.PerSecond), s.cfg.Burst)}
		s.reasons[why] = r
	}
	if !r.lim.Allow() {
		r.suppressed++
		if r.timer == nil && !s.closed {
			r.timer = time.AfterFunc(s.cfg.Report, func() { s.report(level, why) })
		}
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.log.Log(ctx, level, msg, append(args[:len(args):len(args)], "reason", why)...)
}

// report writes how many lines of why were left out since the last report.
func (s *Sampler) report(level slog.Level, why string) {
	s.mu.Lock()
	r := s.reasons[why]
	n := r.suppressed
	r.suppressed, r.timer = 0, nil
	s.mu.Unlock()
	if n > 0 {
		s.log.Log(context.Background(), level, "log lines suppressed", "reason", why, "suppressed", n, "within", s.cfg.Report)
	}
}

// Close writes the reports that are due and stops the Sampler's timers; lines logged
// after it are still sampled, but their reports are not written.
func (s *Sampler) Close() {
	s.mu.Lock()
	s.closed = true
	type due struct {
		why string
		n   int
	}
	var reports []due
	for why, r := range s.reasons {
		if r.timer != nil {
			r.timer.Stop()
			r.timer = nil
		}
		if r.suppressed > 0 {
			reports = append(reports, due{why, r.suppressed})
			r.suppressed = 0
		}
	}
	s.mu.Unlock()
	for _, d := range reports {
		s.log.Info("log lines suppressed", "reason", d.why, "suppressed", d.n)
	}
}

// MaxClip is how many bytes of a client's value Clip keeps.
const MaxClip = 64

// Clip wraps a value a client sent (a header, a query parameter, an error that quotes
// one) for a log line: the line holds at most its first MaxClip bytes, cut at a
// character boundary, followed by its length when it was longer. The work is done only
// when the line is written.
func Clip(v string) slog.LogValuer { return clipped(v) }

// ClipErr is Clip for an error's text; a nil error logs as an empty string.
func ClipErr(err error) slog.LogValuer { return clippedErr{err} }

type clipped string

// LogValue implements slog.LogValuer.
func (c clipped) LogValue() slog.Value { return slog.StringValue(clip(string(c))) }

type clippedErr struct{ err error }

// LogValue implements slog.LogValuer.
func (c clippedErr) LogValue() slog.Value {
	if c.err == nil {
		return slog.StringValue("")
	}
	return slog.StringValue(clip(c.err.Error()))
}

func clip(s string) string {
	if len(s) <= MaxClip {
		return s
	}
	cut := MaxClip
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}
