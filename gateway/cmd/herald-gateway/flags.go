package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// setting names a flag and its environment twin, as every configuration error does:
// "--write-queue-bytes (HERALD_WRITE_QUEUE_BYTES)".
func setting(name string) string { return "--" + name + " (" + envName(name) + ")" }

// envName is the environment twin of flag name: HERALD_ and the name in capitals, with
// '_' for '-'. Every flag follows it (TestEveryFlagHasItsTwin).
func envName(name string) string {
	return "HERALD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// settingError is a value a setting cannot take: it names the setting (flag and
// variable), the value and why.
type settingError struct {
	name, value string
	err         error
}

func (e *settingError) Error() string {
	var u unquoted
	if errors.As(e.err, &u) {
		return setting(e.name) + ": " + e.err.Error()
	}
	return fmt.Sprintf("%s: %q: %v", setting(e.name), e.value, e.err)
}

// unquoted is an error that needs the value it is about not quoted before it: it names
// the part of the value that is wrong, or the value does not matter.
type unquoted struct{ error }

func (u unquoted) Unwrap() error { return u.error }

// errNegative is a negative number given to a setting whose "none" or "no limit" is 0.
var errNegative = unquoted{errors.New("must not be negative")}

func (e *settingError) Unwrap() error { return e.err }

// value is a flag's value with its parser: kind names what it takes in -help.
type value struct {
	kind   string // duration, integer, number, size, string; "" for a bool
	parse  func(string) error
	show   func() string
	isBool bool
}

func (v *value) String() string {
	if v == nil || v.show == nil {
		return ""
	}
	return v.show()
}

func (v *value) Set(s string) error { return v.parse(s) }

// IsBoolFlag lets a bool flag be given without a value.
func (v *value) IsBoolFlag() bool { return v != nil && v.isBool }

// envFlags defines flags whose defaults come from environment variables. A value that
// a flag or variable cannot take is recorded in errs, naming the setting.
type envFlags struct {
	fs     *flag.FlagSet
	getenv func(string) string
	errs   []error
}

// define adds flag name, set to its default already, and sets it from its environment
// twin (envName) when that is set, through the flag's own parser so that the variable
// takes exactly what the flag takes. Every flag is defined by it: one rule for every twin.
func (e *envFlags) define(v *value, name, usage string) {
	env := envName(name)
	parse := v.parse
	v.parse = func(s string) error {
		if err := parse(s); err != nil {
			se := &settingError{name: name, value: s, err: err}
			e.errs = append(e.errs, se)
			return se
		}
		return nil
	}
	e.fs.Var(v, name, fmt.Sprintf("%s (env %s)", usage, env))
	if s := e.getenv(env); s != "" {
		_ = v.Set(s) // recorded in e.errs
	}
}

func (e *envFlags) str(p *string, name, def, usage string) {
	*p = def
	e.define(&value{kind: "string", parse: func(s string) error { *p = s; return nil }, show: func() string { return *p }},
		name, usage)
}

func (e *envFlags) dur(p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	e.define(&value{kind: "duration", parse: func(s string) error {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return errors.New("want a duration such as 500ms, 10s, 2m or 1h30m")
		}
		*p = d
		return nil
	}, show: func() string { return p.String() }}, name, usage)
}

func (e *envFlags) int(p *int, name string, def int, usage string) {
	*p = def
	e.define(&value{kind: "integer", parse: func(s string) error {
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, strconv.IntSize)
		if err != nil {
			return numError(err, "want a whole number")
		}
		*p = int(n)
		return nil
	}, show: func() string { return strconv.Itoa(*p) }}, name, usage)
}

func (e *envFlags) float(p *float64, name string, def float64, usage string) {
	*p = def
	e.define(&value{kind: "number", parse: func(s string) error {
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return errors.New("want a number, e.g. 20 or 0.5")
		}
		*p = f
		return nil
	}, show: func() string { return strconv.FormatFloat(*p, 'g', -1, 64) }}, name, usage)
}

func (e *envFlags) bool(p *bool, name, usage string) {
	e.define(&value{isBool: true, parse: func(s string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return errors.New("want true or false")
		}
		*p = b
		return nil
	}, show: func() string { return strconv.FormatBool(*p) }}, name, usage)
}

// limit defines an integer flag whose 0 means "no limit": the library's negative, which
// *p holds then (its own zero means its default). A negative number is refused.
func (e *envFlags) limit(p *int, name string, def int, usage string) {
	*p = off(def)
	e.define(&value{kind: "integer", parse: func(s string) error {
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, strconv.IntSize)
		switch {
		case err != nil:
			return numError(err, "want a whole number")
		case n < 0:
			return errNegative
		}
		*p = off(int(n))
		return nil
	}, show: func() string { return strconv.Itoa(max(*p, 0)) }}, name, usage)
}

// rateLimit is limit for a rate, a number of times a second.
func (e *envFlags) rateLimit(p *float64, name string, def float64, usage string) {
	*p = off(def)
	e.define(&value{kind: "number", parse: func(s string) error {
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		switch {
		case err != nil || math.IsNaN(f) || math.IsInf(f, 0):
			return errors.New("want a number, e.g. 20 or 0.5")
		case f < 0:
			return errNegative
		}
		*p = off(f)
		return nil
	}, show: func() string { return strconv.FormatFloat(max(*p, 0), 'g', -1, 64) }}, name, usage)
}

// durLimit is limit for a duration whose 0 means none: the library's negative.
func (e *envFlags) durLimit(p *time.Duration, name string, def time.Duration, usage string) {
	*p = off(def)
	e.define(&value{kind: "duration", parse: func(s string) error {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		switch {
		case err != nil:
			return errors.New("want a duration such as 500ms, 10s, 2m or 1h30m")
		case d < 0:
			return errNegative
		}
		*p = off(d)
		return nil
	}, show: func() string { return max(*p, 0).String() }}, name, usage)
}

// off turns a flag's 0 ("no limit", "none") into the library's negative (off); the
// library's zero means its default.
func off[T ~int | ~int64 | ~float64](v T) T {
	if v <= 0 {
		return -1
	}
	return v
}

// list defines a comma-separated list flag (empty items dropped).
func (e *envFlags) list(p *[]string, name, usage string) {
	e.define(&value{kind: "string", parse: func(s string) error { *p = splitList(s); return nil },
		show: func() string { return strings.Join(*p, ",") }}, name, usage)
}

// prefixes defines a comma-separated list of CIDRs or addresses.
func (e *envFlags) prefixes(p *[]netip.Prefix, name, usage string) {
	e.define(&value{kind: "string", parse: func(s string) error {
		list, err := parsePrefixes(s)
		if err != nil {
			return unquoted{err}
		}
		*p = list
		return nil
	}, show: func() string {
		out := make([]string, len(*p))
		for i, pf := range *p {
			out[i] = pf.String()
		}
		return strings.Join(out, ",")
	}}, name, usage)
}

// secret defines a flag whose value is a secret's bytes; -help never shows it.
func (e *envFlags) secret(p *[]byte, name, usage string) {
	e.define(&value{kind: "string", parse: func(s string) error { *p = []byte(s); return nil },
		show: func() string { return "" }}, name, usage)
}

// size defines a byte size flag: bytes, or a number with a unit (parseSize), at most max.
func (e *envFlags) size(p *int64, name string, def, max int64, usage string) {
	*p = def
	e.sizeVar(func() int64 { return *p }, func(n int64) { *p = n }, name, max, usage)
}

// sizeInt is size for an int setting.
func (e *envFlags) sizeInt(p *int, name string, def int, max int64, usage string) {
	*p = def
	e.sizeVar(func() int64 { return int64(*p) }, func(n int64) { *p = int(n) }, name, min(max, math.MaxInt), usage)
}

func (e *envFlags) sizeVar(load func() int64, store func(int64), name string, max int64, usage string) {
	e.define(&value{kind: "size", parse: func(s string) error {
		n, err := parseSize(s)
		if err != nil {
			return err
		}
		if n > max {
			return fmt.Errorf("over the most this setting takes, %s", formatSize(max))
		}
		store(n)
		return nil
	}, show: func() string { return formatSize(load()) }}, name, usage)
}

// numError says why strconv refused a number.
func numError(err error, want string) error {
	if errors.Is(err, strconv.ErrRange) {
		return errors.New("out of range")
	}
	return errors.New(want)
}

// sizeUnits are the units a size may carry, case-insensitive: IEC (powers of 1024) and
// SI (powers of 1000).
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
}

// sizeHelp is what a size may be.
const sizeHelp = "want bytes, or a number with a unit: KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000), e.g. 1048576, 64KiB, 1.5GiB"

// parseSize reads a byte size: a bare number is bytes; a number may carry a unit of
// sizeUnits, case-insensitive, with spaces between or not ("64KiB", "2 gib", "500MB"),
// and a fraction where the result is a whole number of bytes ("1.5GiB"). Negative sizes
// and sizes over 2^63-1 bytes are refused.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "-") {
		return 0, errors.New("must not be negative")
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := sizeUnits[unit]
	whole, frac, hasFrac := strings.Cut(num, ".")
	if !ok || whole == "" || hasFrac && (frac == "" || strings.Contains(frac, ".")) {
		return 0, errors.New(sizeHelp)
	}
	w, err := strconv.ParseUint(whole, 10, 63)
	if err != nil {
		return 0, sizeOverflow(err)
	}
	hi, n := bits.Mul64(w, uint64(mult))
	if hi != 0 || n > math.MaxInt64 {
		return 0, errors.New("too large: at most 2^63-1 bytes")
	}
	if hasFrac {
		if len(frac) > 18 {
			return 0, errors.New("too many decimals")
		}
		f, err := strconv.ParseUint(frac, 10, 64)
		if err != nil {
			return 0, errors.New(sizeHelp)
		}
		scale := uint64(math.Pow10(len(frac)))
		fh, fl := bits.Mul64(f, uint64(mult))
		if fh >= scale {
			return 0, errors.New(sizeHelp)
		}
		q, r := bits.Div64(fh, fl, scale)
		if r != 0 {
			return 0, fmt.Errorf("%s is not a whole number of bytes", t)
		}
		if n+q > math.MaxInt64 || n+q < n {
			return 0, errors.New("too large: at most 2^63-1 bytes")
		}
		n += q
	}
	return int64(n), nil
}

func sizeOverflow(err error) error {
	if errors.Is(err, strconv.ErrRange) {
		return errors.New("too large: at most 2^63-1 bytes")
	}
	return errors.New(sizeHelp)
}

// formatSize writes a size the way parseSize reads it, in the largest IEC unit that
// divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		name string
		v    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.v == 0 {
			return strconv.FormatInt(n/u.v, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// printUsage writes -help: every flag with what it takes, its meaning, its variable
// and its default.
func printUsage(out io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(out, "Usage: herald-gateway [flags]\n\nHerald's WebSocket gateway. Every flag has an environment variable twin; a flag wins over its variable.\nSizes take units: 64KiB, 1MiB, 2GiB (powers of 1024) or 500KB, 1GB (powers of 1000); a bare number is bytes.\n\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		kind := ""
		if v, ok := f.Value.(*value); ok && v.kind != "" {
			kind = " " + v.kind
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(out, "  --%s%s\n    \t%s%s\n", f.Name, kind, f.Usage, def)
	})
}
