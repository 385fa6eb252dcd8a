// Command herald-publish publishes Herald messages to RabbitMQ with publisher confirms,
// for operators and scripts. It prints the id of each message the broker confirmed, one
// per line, and exits 1 when any publish was not confirmed, 2 on a usage error.
//
//	herald-publish -channel news '{"title":"hello"}'
//	echo '{"n":1}' | herald-publish -users alice,bob -count 3
//
// Every flag has an environment twin, used when the flag is not given; run with -help
// for the list.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/heraldgw/herald/producer"
	"github.com/heraldgw/herald/producer/amqplink"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK          = 0
	exitUnconfirmed = 1 // a publish was not confirmed, or the broker was unreachable
	exitUsage       = 2
)

// options are the command line, after flags and their environment twins.
type options struct {
	url, exchange, channel, users, id string
	caFile, certFile, keyFile         string
	count                             int
	timeout                           time.Duration
}

// run is the whole command; main only adds the process around it.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("herald-publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// Each flag's environment twin is named in its usage; the default shown is the
	// built-in one.
	envs := map[string]string{}
	str := func(p *string, name, env, def, usage string) {
		fs.StringVar(p, name, def, usage+" (env "+env+")")
		envs[name] = env
	}
	str(&o.url, "url", "HERALD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/", "AMQP URI of the broker, or the comma-separated URIs of a cluster's nodes (the first that answers is used)")
	str(&o.caFile, "ca-file", "HERALD_AMQP_CA_FILE", "", "PEM file of the CAs that sign the brokers' certificates, for amqps:// URIs; empty: the system's")
	str(&o.certFile, "cert-file", "HERALD_AMQP_CERT_FILE", "", "PEM file of a client certificate for amqps:// (with -key-file)")
	str(&o.keyFile, "key-file", "HERALD_AMQP_KEY_FILE", "", "PEM file of the client certificate's key")
	str(&o.exchange, "exchange", "HERALD_EXCHANGE", producer.DefaultExchange, "fanout exchange to publish to")
	str(&o.channel, "channel", "HERALD_PUBLISH_CHANNEL", "", "channel to publish to; empty means every connection")
	str(&o.users, "users", "HERALD_PUBLISH_USERS", "", "comma-separated users to deliver to; empty means no user targeting")
	str(&o.id, "id", "HERALD_PUBLISH_ID", "", "message id; generated when empty; with -count > 1 the ids are <id>-1 ... <id>-N")
	fs.IntVar(&o.count, "count", 1, "how many copies to publish (env HERALD_PUBLISH_COUNT)")
	envs["count"] = "HERALD_PUBLISH_COUNT"
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long to wait for each publish's confirm (env HERALD_PUBLISH_TIMEOUT)")
	envs["timeout"] = "HERALD_PUBLISH_TIMEOUT"
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: herald-publish [flags] [data | -]

Publishes a Herald message (data: any JSON value) to RabbitMQ and waits for the broker
to confirm it. The data is the first argument, or standard input when there is none or
it is "-". Prints each confirmed message id on its own line. Exits 1 when a publish was
not confirmed, 2 on a usage error.

Flags (a flag overrides its environment variable):
`)
		fs.PrintDefaults()
	}

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage // flag has printed the error and the usage
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for name, env := range envs {
		if v, ok := os.LookupEnv(env); ok && !given[name] {
			if err := fs.Set(name, v); err != nil {
				return usageError(stderr, "%s: %v", env, err)
			}
		}
	}
	if o.count < 1 {
		return usageError(stderr, "-count: got %d, want at least 1", o.count)
	}
	if o.timeout <= 0 {
		return usageError(stderr, "-timeout: got %v, want a positive duration", o.timeout)
	}
	tlsCfg, err := amqplink.LoadTLS(o.caFile, o.certFile, o.keyFile)
	if err != nil {
		return usageError(stderr, "TLS: %v", err)
	}

	var data []byte
	switch arg := fs.Arg(0); {
	case fs.NArg() > 1:
		return usageError(stderr, "got %d arguments, want at most one (the data)", fs.NArg())
	case fs.NArg() == 0 || arg == "-":
		b, err := io.ReadAll(stdin)
		if err != nil {
			fmt.Fprintf(stderr, "herald-publish: read data from stdin: %v\n", err)
			return exitUsage
		}
		data = b
	default:
		data = []byte(arg)
	}
	data = bytes.TrimSpace(data)
	if !json.Valid(data) {
		return usageError(stderr, "data is not valid JSON: %.80q", data)
	}

	m := producer.Message{Channel: o.channel, Data: data}
	if o.users != "" {
		for u := range strings.SplitSeq(o.users, ",") {
			m.Users = append(m.Users, strings.TrimSpace(u))
		}
	}
	if err := m.Validate(); err != nil {
		return usageError(stderr, "%v", err)
	}
	return publish(ctx, o, tlsCfg, m, stdout, stderr)
}

// publish connects and publishes o.count copies of m, printing each confirmed id.
func publish(ctx context.Context, o options, tlsCfg *tls.Config, m producer.Message, stdout, stderr io.Writer) int {
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dialCtx, cancel := context.WithTimeout(ctx, o.timeout)
	p, err := producer.New(dialCtx, producer.Config{
		URL:      o.url,
		Exchange: o.exchange,
		TLS:      tlsCfg,
		Name:     "herald-publish",
		Logger:   logger,
	})
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "herald-publish: %v\n", err)
		return exitUnconfirmed
	}
	defer func() {
		if err := p.Close(); err != nil {
			fmt.Fprintf(stderr, "herald-publish: %v\n", err)
		}
	}()

	code := exitOK
	i := 1
	for ; i <= o.count && ctx.Err() == nil; i++ {
		m.ID = o.id
		if o.id != "" && o.count > 1 {
			m.ID = o.id + "-" + strconv.Itoa(i)
		}
		pubCtx, cancel := context.WithTimeout(ctx, o.timeout)
		id, err := p.Publish(pubCtx, m)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "herald-publish: %v\n", err)
			code = exitUnconfirmed
			continue
		}
		fmt.Fprintln(stdout, id)
	}
	if i <= o.count {
		fmt.Fprintf(stderr, "herald-publish: stopped before publishing %d of %d: %v\n", o.count-i+1, o.count, ctx.Err())
		code = exitUnconfirmed
	}
	return code
}

// usageError reports a usage error on stderr and returns the usage exit code.
func usageError(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "herald-publish: "+format+"\n", args...)
	fmt.Fprintln(stderr, "Run herald-publish -help for usage.")
	return exitUsage
}
