package gateway_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestProtocolReferenceIsComplete: docs/PROTOCOL.md, the reference for third-party
// client authors, names every op both ways, every error code, every close code and
// handshake refusal, every HTTP endpoint and every AMQP header the code has. The names
// are read from the sources, so that a new one cannot ship undocumented.
func TestProtocolReferenceIsComplete(t *testing.T) {
	read := func(parts ...string) string {
		b, err := os.ReadFile(filepath.Join(append([]string{".."}, parts...)...))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	doc := read("docs", "PROTOCOL.md")
	var src strings.Builder // the gateway's sources: the API package and its internal ones
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && (path == "cmd" || path == "testdata" || path == "web"):
			return filepath.SkipDir
		case !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go"):
			src.WriteString(read("gateway", path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	code := src.String()
	all := func(re string, s string) []string {
		var out []string
		for _, m := range regexp.MustCompile(re).FindAllStringSubmatch(s, -1) {
			if !slices.Contains(out, m[1]) {
				out = append(out, m[1])
			}
		}
		if len(out) == 0 {
			t.Fatalf("no match of %s in the sources: the test has lost its way", re)
		}
		return out
	}
	var headings strings.Builder // the ops' sections
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "### ") {
			headings.WriteString(line + "\n")
		}
	}
	heading := func(n string) string { return "`" + n + "`" }
	inHeading := func(what string, names []string) {
		for _, n := range names {
			if !strings.Contains(headings.String(), heading(n)) {
				t.Errorf("docs/PROTOCOL.md has no section on the %s %s", what, n)
			}
		}
	}
	check := func(what string, names []string, form func(string) string) {
		for _, n := range names {
			if !strings.Contains(doc, form(n)) {
				t.Errorf("docs/PROTOCOL.md does not document the %s %s (looked for %q)", what, n, form(n))
			}
		}
	}
	tick := func(n string) string { return "`" + n + "`" }

	inHeading("gateway op", append(all(`Op:\s+"([a-z]+)"`, code), "join", "leave", "unsubscribed"))
	decode := code[strings.Index(code, "func decodeRequest"):]
	var clientOps []string
	for _, m := range regexp.MustCompile(`case ((?:"[a-z]+"(?:, )?)+):`).FindAllStringSubmatch(decode[:strings.Index(decode, "\n}\n")], -1) {
		clientOps = append(clientOps, strings.Split(strings.ReplaceAll(m[1], `"`, ""), ", ")...)
	}
	inHeading("client op", clientOps)
	check("error code", all(`Code[A-Za-z]+\s+= "([a-z_]+)"`, code), tick)
	check("handshake refusal", all(`refuse\(w, http\.Status[A-Za-z]+, "([a-z_]+)"`, code), tick)
	check("token refusal", all(`[rR]efusedToken[A-Za-z]+\s+= "([a-z_]+)"`, code), tick)
	check("API error", all(`writeError\(w, http\.Status[A-Za-z]+, "([a-z_]+)"`, code), tick)
	check("close code", []string{"1000", "1001", "1002", "1003", "1006", "1007", "1008", "1009", "1011"}, func(n string) string { return "| " + n + " |" })
	check("close code", all(`Close[A-Za-z]+\s+= (40\d\d)`, code), func(n string) string { return "| " + n + " |" })
	check("endpoint", all(`mux\.Handle(?:Func)?\("(?:GET|POST) (/[^"]+)"`, code), func(n string) string { return n })
	check("AMQP header", all(`Header[A-Za-z]+\s+= "([a-z]+)"`, read("producer", "amqp.go")), tick)
	for _, field := range []string{"message_id", "timestamp", "content_type", "`since`", "`until`", "`direct`", "`more`", "`next`", "`exp`", "`presence`", "`limit`", "`after`", "`token`", "`channels`"} {
		if !strings.Contains(doc, field) {
			t.Errorf("docs/PROTOCOL.md does not mention %s", field)
		}
	}

	license := read("LICENSE")
	for _, want := range []string{"Apache License\n                           Version 2.0, January 2004",
		"TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "9. Accepting Warranty or Additional Liability.",
		"END OF TERMS AND CONDITIONS", "Copyright 2026 The Herald Authors"} {
		if !strings.Contains(license, want) {
			t.Errorf("LICENSE lacks %q: want the full Apache License 2.0 text", want)
		}
	}
	readme := read("README.md")
	if !strings.Contains(readme, "[docs/PROTOCOL.md](docs/PROTOCOL.md)") || !strings.Contains(readme, "[LICENSE](LICENSE)") {
		t.Error("README.md does not point at docs/PROTOCOL.md and LICENSE")
	}
}

// TestArchitectureNamesEveryPackage: docs/ARCHITECTURE.md, the map of the gateway, has a
// row for each of its internal packages, and the README's layout points to it.
func TestArchitectureNamesEveryPackage(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "ARCHITECTURE.md"))
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := os.ReadDir("internal")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if d.IsDir() && !strings.Contains(string(doc), "| `internal/"+d.Name()+"` |") {
			t.Errorf("docs/ARCHITECTURE.md has no row for gateway/internal/%s", d.Name())
		}
	}
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "docs/ARCHITECTURE.md") {
		t.Error("README.md does not point at docs/ARCHITECTURE.md")
	}
}
