package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"
)

// drainCmd runs the drain storm: gateways A and B on RabbitMQ, every client on A, a
// publisher through B; SIGTERM to A, and every client reconnects to B with since.
func drainCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := defaultScenarioConfig("drain")
	cfg.Gateways = 2
	fs := flag.NewFlagSet("herald-bench drain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bindScenarioFlags(fs, &cfg)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: herald-bench drain [flags]

The drain storm: herald-gateway A and B on RabbitMQ (a fresh exchange and stream), every
client on A, a publisher at -rate through B (or to the exchange with -publisher amqp);
after -warmup, SIGTERM to A. Every client, closed by A, reconnects to B at once with since
set to the last offset it saw. Reported: close -> resumed (p50, p99, max), from SIGTERM to
the last client resumed, delivery latency in the storm (SIGTERM to the last resume) and
over the run, and per client whether it got every message of its channel once, in order.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return errUsage
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintf(stderr, "herald-bench drain: %v\n", err)
		return errUsage
	}
	s, err := newScenario(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer s.close()
	const a, b = 0, 1
	if err := s.startFleets(ctx, a, b); err != nil {
		return err
	}
	if s.pub, err = newChannelPublisher(ctx, cfg.Publisher, s.addrs[b], cfg.APIKey, cfg.AMQPURL, s.exchange, cfg.PublishConns); err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	t0 := time.Now()
	s.pub.start(cfg.Rate, cfg.PublishConns, cfg.DataBytes, cfg.Channels, cfg.Name+"-")
	for time.Since(t0) < cfg.Warmup && ctx.Err() == nil {
		time.Sleep(time.Second)
		s.logProgress(t0, "warm-up")
	}
	before := s.progress()
	fmt.Fprintf(stderr, "SIGTERM to gateway A (%s) with %d clients\n", s.addrs[a], before.Live)
	sigterm := time.Now()
	exited := make(chan StepResult, 1)
	go func() { exited <- s.stopGateway(a, cfg.StormWait) }()
	p := s.waitResumed(ctx, t0, before.Resumed+before.Welcomed)
	last := sigterm
	if p.LastResumedNS > 0 {
		last = time.Unix(0, p.LastResumedNS)
	}
	s.res.LastResumedSecs = last.Sub(sigterm).Seconds()
	s.res.Steps = append(s.res.Steps, <-exited)
	fmt.Fprintf(stderr, "every client resumed %.1fs after SIGTERM; publishing %v more\n", s.res.LastResumedSecs, cfg.After)
	for end := time.Now().Add(cfg.After); time.Now().Before(end) && ctx.Err() == nil; {
		time.Sleep(time.Second)
		s.logProgress(t0, "after")
	}
	acc, sent, kinds := s.pub.stop()
	s.storeAccepted(acc, sent, kinds)
	s.settle(acc)
	if err := s.finish(acc, sigterm, last); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return errors.Join(err, s.report(stdout))
	}
	return s.report(stdout)
}
