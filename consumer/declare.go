package consumer

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldgw/herald/producer/amqplink"
)

// maxArgChecks bounds the declares that compare an existing stream's arguments with the
// configured ones: RabbitMQ names one differing argument per refusal.
const maxArgChecks = 8

// declare makes sure the topology the consumer needs is there, on the session's node: the
// durable fanout exchange, the stream (declared with the configured arguments only when
// it does not exist), and the binding between them. When compare is set and the stream
// exists, it finds which of its arguments differ from the configured ones and logs them
// once, with the commands that change them: the stream is used as it is.
//
// RabbitMQ closes a channel on a refused declare (404 for a passive one of a missing
// queue, 406 for arguments that differ), so the look-ups run on channels of their own,
// and the session's channel only does what succeeds.
func (s *Stream) declare(as *amqplink.Session, compare bool) error {
	c := s.cfg
	if err := as.Ch.ExchangeDeclare(c.Exchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return fmt.Errorf("consumer: declare exchange %q: %w", c.Exchange, err)
	}
	exists, err := streamExists(as, c.Stream)
	if err != nil {
		return err
	}
	switch {
	case !exists:
		if _, err := as.Ch.QueueDeclare(c.Stream, true, false, false, false, c.queueArgs()); err != nil {
			return fmt.Errorf("consumer: declare stream %q: %w", c.Stream, err)
		}
		s.log.Info("consumer declared the stream", "replicas", c.Replicas, "leader_locator", c.LeaderLocator,
			"max_age", c.MaxAge, "max_bytes", c.MaxBytes)
	case compare:
		diffs, err := streamArgDiffs(as, c.Stream, c.queueArgs())
		if err != nil {
			s.log.Warn("consumer could not compare the stream's arguments with the configured ones; using it as it is", "err", err)
			break
		}
		s.logArgDiffs(diffs)
	}
	if err := as.Ch.QueueBind(c.Stream, "", c.Exchange, false, nil); err != nil {
		return fmt.Errorf("consumer: bind stream %q to exchange %q: %w", c.Stream, c.Exchange, err)
	}
	return nil
}

// streamExists reports whether a queue named name exists, with a passive declare on a
// channel of its own.
func streamExists(as *amqplink.Session, name string) (bool, error) {
	ch, err := as.Channel()
	if err != nil {
		return false, fmt.Errorf("consumer: open a channel to look up stream %q: %w", name, err)
	}
	_, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
	var aerr *amqp.Error
	switch {
	case err == nil:
		_ = ch.Close()
		return true, nil
	case errors.As(err, &aerr) && aerr.Code == amqp.NotFound:
		return false, nil // the broker closed the channel
	default:
		return false, fmt.Errorf("consumer: look up stream %q: %w", name, err)
	}
}

// argDiff is one argument of an existing stream that differs from the configured one;
// "" stands for an argument that is not set.
type argDiff struct {
	name, configured, current string
}

// inequivalent parses RabbitMQ's refusal of a declare whose arguments differ from the
// queue's: "inequivalent arg 'x-max-age' for queue 'q' in vhost '/': received '20s' but
// current is '10s'" (or "received none", "current is the value '1' of type 'signedint'").
var inequivalent = regexp.MustCompile(`inequivalent arg '([^']+)' for queue .*: received (.*) but current is (.*)$`)

// argValue parses the value part of such a refusal: none, 'V', or the value 'V' of type
// 'T'. It returns the value's text and type ("" when not given), and false for none.
var argValue = regexp.MustCompile(`^(?:the value )?'(.*?)'(?: of type '([a-z]+)')?$`)

// streamArgDiffs finds which arguments of the existing stream name differ from want: it
// declares the stream with want, on channels of its own, and each time RabbitMQ refuses
// it names one differing argument and its current value, which the next declare takes,
// until one is accepted. At most maxArgChecks declares.
func streamArgDiffs(as *amqplink.Session, name string, want amqp.Table) ([]argDiff, error) {
	args := amqp.Table{}
	for k, v := range want {
		args[k] = v
	}
	var diffs []argDiff
	for range maxArgChecks {
		ch, err := as.Channel()
		if err != nil {
			return diffs, fmt.Errorf("open a channel: %w", err)
		}
		_, err = ch.QueueDeclare(name, true, false, false, false, args)
		if err == nil {
			_ = ch.Close()
			return diffs, nil
		}
		var aerr *amqp.Error
		if !errors.As(err, &aerr) || aerr.Code != amqp.PreconditionFailed {
			return diffs, err
		}
		m := inequivalent.FindStringSubmatch(aerr.Reason)
		if m == nil {
			return diffs, err
		}
		arg, current := m[1], m[3]
		d := argDiff{name: arg, configured: argText(want[arg])}
		cv := argValue.FindStringSubmatch(current)
		switch {
		case current == "none":
			delete(args, arg)
		case cv == nil:
			return diffs, err
		default:
			d.current = cv[1]
			v, ok := argTyped(cv[1], cv[2], want[arg])
			if !ok {
				return append(diffs, d), err
			}
			args[arg] = v
		}
		if d.configured == d.current { // the same text, another AMQP type
			d.current += " (" + cv[2] + ")"
		}
		diffs = append(diffs, d)
	}
	return diffs, fmt.Errorf("more than %d arguments differ", maxArgChecks)
}

// argText is an argument's value as RabbitMQ quotes it; "" for none.
func argText(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// argTyped turns the text of a current value into the AMQP value that declares it again:
// of the type RabbitMQ named, else of the configured value's type.
func argTyped(text, typ string, configured any) (any, bool) {
	switch typ {
	case "longstr":
		return text, true
	case "long", "signedint", "short", "byte", "":
		if typ == "" {
			if _, isStr := configured.(string); isStr {
				return text, true
			}
		}
		n, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return nil, false
		}
		switch typ {
		case "signedint":
			return int32(n), true
		case "short":
			return int16(n), true
		case "byte":
			return int8(n), true
		}
		return n, true
	case "bool":
		return text == "true", true
	}
	return nil, false
}

// logArgDiffs logs the arguments of the existing stream that differ from the configured
// ones, and the commands that change what can be changed, unless these were the
// differences logged last.
func (s *Stream) logArgDiffs(diffs []argDiff) {
	sort.Slice(diffs, func(i, j int) bool { return diffs[i].name < diffs[j].name })
	var parts []string
	for _, d := range diffs {
		parts = append(parts, fmt.Sprintf("%s: configured %s, the stream has %s", d.name, orNone(d.configured), orNone(d.current)))
	}
	text := strings.Join(parts, "; ")
	if text == s.argsLogged {
		return
	}
	s.argsLogged = text
	if len(diffs) == 0 {
		return
	}
	s.log.Warn("the stream exists with other arguments than configured; it is used as it is",
		"differ", text, "to_change", argFixes(s.cfg.Stream, diffs))
}

func orNone(v string) string {
	if v == "" {
		return "none"
	}
	return v
}

// argFixes says how to bring an existing stream to the configured arguments, for those
// that differ: replicas are added by node, retention is set by a policy, and the rest
// applies to a new stream only.
func argFixes(stream string, diffs []argDiff) string {
	var fixes []string
	var policy []string
	for _, d := range diffs {
		switch d.name {
		case "x-initial-cluster-size":
			fixes = append(fixes, fmt.Sprintf("add replicas with `rabbitmq-streams add_replica %s <node>` for each node that lacks one (the initial size applies at declare only; `rabbitmq-streams stream_status %s` lists them)", stream, stream))
		case "x-max-age":
			policy = append(policy, fmt.Sprintf(`"max-age":%q`, d.configured))
		case "x-max-length-bytes":
			policy = append(policy, fmt.Sprintf(`"max-length-bytes":%s`, orZero(d.configured)))
		case "x-stream-max-segment-size-bytes":
			policy = append(policy, fmt.Sprintf(`"stream-max-segment-size-bytes":%s`, orZero(d.configured)))
		default:
			fixes = append(fixes, fmt.Sprintf("%s applies to a new stream only: delete and recreate the stream to change it (its messages go with it)", d.name))
		}
	}
	if len(policy) > 0 {
		fixes = append(fixes, fmt.Sprintf("set retention with a policy: `rabbitmqctl set_policy --apply-to queues herald-retention '^%s$' '{%s}'`",
			regexp.QuoteMeta(stream), strings.Join(policy, ",")))
	}
	return strings.Join(fixes, "; ")
}

func orZero(v string) string {
	if v == "" {
		return "0"
	}
	return v
}
