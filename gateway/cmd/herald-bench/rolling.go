package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"
)

// rollingCmd runs the rolling restart: gateways on RabbitMQ, clients spread over them and
// over channels, a publisher to the exchange; each gateway in turn gets SIGTERM and is
// started again, the next once it is ready; clients reconnect to any other gateway.
func rollingCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := defaultScenarioConfig("rolling")
	cfg.Gateways, cfg.Clients, cfg.Channels, cfg.Publisher, cfg.PublishConns = 4, 20000, 100, "amqp", 16
	fs := flag.NewFlagSet("herald-bench rolling", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.Gateways, "gateways", cfg.Gateways, "herald-gateway processes")
	bindScenarioFlags(fs, &cfg)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: herald-bench rolling [flags]

The rolling restart: -gateways herald-gateway processes on RabbitMQ (a fresh exchange and
stream), the clients spread over them (client i on gateway i mod gateways, channel i mod
channels), a publisher at -rate across the channels (to the exchange by default, since
every gateway restarts). After -warmup, each gateway in turn gets SIGTERM, is started
again, and the next gets SIGTERM once the restarted one answers /readyz. A client closed
by its gateway reconnects at once to another gateway with since. Reported: per client,
whether it got every message of its channel once, in order; close -> resumed (p50, p99,
max); delivery latency during the restarts (first SIGTERM to the last resume).

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return errUsage
	}
	if cfg.Gateways < 2 {
		fmt.Fprintln(stderr, "herald-bench rolling: -gateways must be at least 2")
		return errUsage
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintf(stderr, "herald-bench rolling: %v\n", err)
		return errUsage
	}
	s, err := newScenario(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.startFleets(ctx, -1, -1); err != nil {
		return err
	}
	// The HTTP publisher goes through the last gateway, which restarts last.
	if s.pub, err = newChannelPublisher(ctx, cfg.Publisher, s.addrs[cfg.Gateways-1], cfg.APIKey, cfg.AMQPURL, s.exchange, cfg.PublishConns); err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	t0 := time.Now()
	s.pub.start(cfg.Rate, cfg.PublishConns, cfg.DataBytes, cfg.Channels, cfg.Name+"-")
	for time.Since(t0) < cfg.Warmup && ctx.Err() == nil {
		time.Sleep(time.Second)
		s.logProgress(t0, "warm-up")
	}
	first := time.Now()
	for i := range cfg.Gateways {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(stderr, "SIGTERM to gateway %d (%s)\n", i, s.addrs[i])
		st := s.stopGateway(i, cfg.StormWait)
		started := time.Now()
		if err := s.startGateway(ctx, i); err != nil {
			return fmt.Errorf("restart: %w", err)
		}
		st.ReadySecs = time.Since(started).Seconds()
		s.res.Steps = append(s.res.Steps, st)
		s.logProgress(t0, "restarted")
	}
	// Every client was closed once or more: wait until none awaits its resumed.
	p := s.waitResumed(ctx, t0, 0)
	last := first
	if p.LastResumedNS > 0 {
		last = time.Unix(0, p.LastResumedNS)
	}
	s.res.LastResumedSecs = last.Sub(first).Seconds()
	fmt.Fprintf(stderr, "every client resumed %.1fs after the first SIGTERM; publishing %v more\n", s.res.LastResumedSecs, cfg.After)
	for end := time.Now().Add(cfg.After); time.Now().Before(end) && ctx.Err() == nil; {
		time.Sleep(time.Second)
		s.logProgress(t0, "after")
	}
	acc, sent, kinds := s.pub.stop()
	s.storeAccepted(acc, sent, kinds)
	s.settle(acc)
	if err := s.finish(acc, first, last); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return errors.Join(err, s.report(stdout))
	}
	return s.report(stdout)
}
