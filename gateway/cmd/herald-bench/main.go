// Command herald-bench measures a WebSocket broadcast gateway on this machine: Herald, or
// the classic gorilla hub in ./baseline, which speaks enough of Herald's protocol for it.
//
// Subcommands, one per job:
//
//	herald-bench run           N connections, M messages at R msg/s: latency, loss, CPU, RSS
//	herald-bench ramp          raise the rate step by step at N connections: max deliveries/s, SVG plot
//	herald-bench floor         the kernel's floor: CPU of a plain write of a frame to N loopback sockets
//	herald-bench compare       start Herald and the baseline in turn (A B A B), run the regimes, print medians
//	herald-bench drain         the drain storm: SIGTERM to a gateway, every client resumes on another
//	herald-bench rolling       the rolling restart: each gateway in turn restarts, clients move and resume
//	herald-bench slowresume    a full tail; clients resume with since=-1 and read slowly: RSS growth
//	herald-bench amqp-cleanup  delete the exchange and stream of a RabbitMQ run
//
// Every subcommand takes -help. The regimes of issue 8 are presets of run (-preset):
//
//	A      1,000 connections at 100 msg/s (100k deliveries/s)
//	B      1,000 connections at 500 msg/s (500k deliveries/s)
//	C      10,000 connections at 5 msg/s (50k deliveries/s)
//	p99    1,000 connections at 200 msg/s (the p99 case; with -publisher amqp, the RabbitMQ case)
//	idle   -conns connections, nothing published: RSS per idle connection (with -fill-tail,
//	       from a baseline taken once the gateway's tail of the log is full)
//
// Build the binaries with ./build.sh (never measure under go run), then either let compare
// start and stop the servers, each figure the median of the rounds:
//
//	gateway/cmd/herald-bench/build.sh bin
//	bin/herald-bench compare -gateway-bin bin/herald-gateway -baseline-bin bin/baseline -runs 3
//	bin/herald-bench compare -regimes rabbit -runs 3 -amqp-url amqp://guest:guest@127.0.0.1:5672/
//	bin/herald-bench compare -regimes C -runs 1 -pprof-addr 127.0.0.1:6060   # + cpu-C-herald-1.pprof
//	bin/herald-bench compare -gateway-bin bin/herald-gateway -baseline-bin bin/herald-gateway -baseline-herald \
//	    -transport sse -baseline-transport ws -regimes idle10000,C -floor=false   # SSE against WebSocket
//
// or start a server and run against it:
//
//	bin/herald-gateway -addr 127.0.0.101:18080 -api-key k -log-level warn -debug-addr 127.0.0.1:6060 &
//	bin/herald-bench run -preset C -target 127.0.0.101:18080 -api-key k -pprof-url http://127.0.0.1:6060
//	bin/herald-bench run -preset idle -conns 19900 -target 127.0.0.101:18080
//	bin/herald-bench run -preset A -stalled 100 -target 127.0.0.101:18080 -api-key k
//	bin/herald-bench ramp -conns 1000 -target 127.0.0.101:18080 -api-key k -svg ramp.svg
//	bin/baseline -addr 127.0.0.102:18090 -api-key k &
//	bin/herald-bench run -preset C -target 127.0.0.102:18090 -api-key k
//	bin/herald-bench floor
//
// drain and rolling start herald-gateway processes themselves (-gateway-bin) on RabbitMQ,
// with a fresh exchange and stream that they delete after, so that two builds are measured
// with the same command; their clients reconnect with since, as herald.js does, and may be
// spread over worker processes (this program started again) dialling from their own
// 127.0.0.x addresses (-workers, -source-addrs), since one process here may hold about
// 20,000 descriptors:
//
//	bin/herald-bench drain -gateway-bin bin/herald-gateway -clients 2000
//	bin/herald-bench rolling -gateway-bin bin/herald-gateway -clients 20000 -workers 4
//
// RabbitMQ: start the gateway with -amqp-url and a fresh -exchange and -stream, publish with
// the producer package (-publisher amqp -amqp-url ... -exchange ...), then delete both with
// amqp-cleanup (compare's rabbit regime does all of it).
//
// The tool finds the server's process from the address it listens on (or takes -pid), and
// reads its CPU and RSS from /proc: RSS before connecting and with the connections idle, CPU
// over the steady-state window only (publishing, after the warm-up). Latency is from the
// send time each message carries in its data to the moment a receiver reads it (same
// machine, same clock), in an HDR histogram. It reports its own CPU too, and what other
// processes used, and before connecting and before publishing it waits (-quiet-below) for
// the machine to be quiet, since the load shares the cores with the server. Receivers are
// lean: after the handshake a few goroutines read the raw sockets through epoll and parse
// frames in place (-receiver gorilla reads with a goroutine per connection instead). With
// -transport sse they open GET /sse instead, by hand, and the same loops parse the event
// stream (sse.go): a message event is a delivery, accounted for as a frame is.
//
// Where the gateway keeps dispatch traces (herald-gateway --trace-dispatches N, served on
// its admin listener), run -admin-url reads them after the phase and reports the p99
// breakdown: where the messages' time went, from the publish to the last write (see
// Breakdown). compare does it for every build that has the flag:
//
//	bin/herald-gateway -addr 127.0.0.101:18080 -api-key k -debug-addr 127.0.0.1:6060 -trace-dispatches 20000 &
//	bin/herald-bench run -preset C -target 127.0.0.101:18080 -api-key k -admin-url http://127.0.0.1:6060
//
// It refuses targets outside 127.0.0.0/8, raises its descriptor limit to the hard limit,
// and dials from 127.0.0.2 .. 127.0.0.17 in turn so that many connections do not run out
// of ephemeral ports. Every run is bounded: M messages, then at most -drain-wait.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `Usage: herald-bench <command> [flags]

Commands:
  run      open N connections, publish M messages at R msg/s, report latency, loss, CPU, RSS
  ramp     raise the rate step by step at N connections; max deliveries/s with p99 < 1s; SVG plot
  floor    CPU of a plain write of one WebSocket frame to N loopback sockets (the kernel's floor)
  compare  start Herald and the baseline in turn (A B A B), run the regimes, print medians
  drain    the drain storm: clients on gateway A, SIGTERM to A, every client resumes on B
  rolling  the rolling restart: each gateway in turn restarts; clients resume on the others
  slowresume  a full tail, then clients resume with since=-1 and read slowly: the gateway's RSS growth
  amqp-cleanup  delete the exchange and stream of a RabbitMQ run

Run "herald-bench <command> -help" for the flags of each.
`

// run dispatches to a subcommand and returns the exit code: 0 done, 1 failed, 2 usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if err := raiseNoFile(); err != nil {
		fmt.Fprintf(stderr, "herald-bench: raise descriptor limit: %v\n", err)
	}
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runCmd(ctx, args, stdout, stderr)
	case "ramp":
		err = rampCmd(ctx, args, stdout, stderr)
	case "floor":
		err = floorCmd(ctx, args, stdout, stderr)
	case floorReaderCmd:
		err = floorReader(ctx, args)
	case "compare":
		err = compareCmd(ctx, args, stdout, stderr)
	case "drain":
		err = drainCmd(ctx, args, stdout, stderr)
	case "rolling":
		err = rollingCmd(ctx, args, stdout, stderr)
	case "slowresume":
		err = slowResumeCmd(ctx, args, stdout, stderr)
	case fleetWorkerCmd:
		err = fleetWorkerMain(os.Stdin, stdout)
	case "amqp-cleanup":
		err = amqpCleanupCmd(args, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "herald-bench: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case err == errUsage:
		return 2
	default:
		fmt.Fprintf(stderr, "herald-bench %s: %v\n", cmd, err)
		return 1
	}
}
