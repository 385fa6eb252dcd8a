package grafana_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/gorilla/websocket"
	"go.yaml.in/yaml/v3"

	"github.com/heraldgw/herald/producer/amqptest"
)

// datasourceUID is the Prometheus datasource every panel names; provisioning fixes it.
const datasourceUID = "herald-prometheus"

// gatewayJob is the scrape job of the gateways: the alert rules select on it, and the
// test's own Prometheus uses it too.
const gatewayJob = "herald-gateway"

// root returns the repository root: this package's parent directory.
func root(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return dir
}

// tool finds an executable the test needs. Under CI=true a missing one fails the test;
// elsewhere it skips it.
func tool(t testing.TB, name, install string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found and CI=true (%s): %v", name, install, err)
		}
		t.Skipf("%s not found (%s; set CI=true to fail instead)", name, install)
	}
	return path
}

// ---------------------------------------------------------------------------------------
// compose.yaml

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	dir := root(t)
	opts, err := cli.NewProjectOptions([]string{filepath.Join(dir, "compose.yaml")},
		cli.WithWorkingDirectory(dir),
		cli.WithEnv(nil), // the file's own defaults, whatever the environment holds
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatalf("compose options: %v", err)
	}
	project, err := opts.LoadProject(t.Context())
	if err != nil {
		t.Fatalf("compose.yaml does not load: %v", err)
	}
	return project
}

func TestComposeFile(t *testing.T) {
	dir := root(t)
	p := loadCompose(t)

	type want struct {
		ports     []string          // "published:target"
		dependsOn map[string]string // service: condition
	}
	gatewayDeps := map[string]string{"rabbitmq-1": types.ServiceConditionHealthy,
		"rabbitmq-2": types.ServiceConditionHealthy, "rabbitmq-3": types.ServiceConditionHealthy}
	services := map[string]want{
		"rabbitmq-1": {ports: []string{"5672:5672", "15672:15672"}},
		"rabbitmq-2": {},
		"rabbitmq-3": {},
		"gateway-1":  {dependsOn: gatewayDeps},
		"gateway-2":  {dependsOn: gatewayDeps},
		"lb": {ports: []string{"8080:8080"}, dependsOn: map[string]string{
			"gateway-1": types.ServiceConditionHealthy, "gateway-2": types.ServiceConditionHealthy}},
		"prometheus": {ports: []string{"9090:9090"}},
		"grafana": {ports: []string{"3000:3000"}, dependsOn: map[string]string{
			"prometheus": types.ServiceConditionHealthy}},
	}
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		if _, ok := services[name]; !ok {
			t.Errorf("service %s: not one this test knows; add what it must satisfy", name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(services)) {
		w := services[name]
		s, ok := p.Services[name]
		if !ok {
			t.Errorf("service %s: missing", name)
			continue
		}
		if s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) < 2 {
			t.Errorf("service %s: no health check", name)
		}
		var ports []string
		for _, pc := range s.Ports {
			ports = append(ports, fmt.Sprintf("%s:%d", pc.Published, pc.Target))
			// A local demo, with ?user= unauthenticated: nothing is published beyond
			// this machine.
			if pc.HostIP != "127.0.0.1" {
				t.Errorf("service %s: port %s:%d published on %q, want 127.0.0.1 only", name, pc.Published, pc.Target, pc.HostIP)
			}
		}
		for _, wp := range w.ports {
			if !slices.Contains(ports, wp) {
				t.Errorf("service %s: ports %v, want %s among them", name, ports, wp)
			}
		}
		for dep, cond := range w.dependsOn {
			if got := s.DependsOn[dep].Condition; got != cond {
				t.Errorf("service %s: depends_on %s condition %q, want %q", name, dep, got, cond)
			}
		}
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if !strings.HasPrefix(v.Source, dir+string(filepath.Separator)) {
				t.Errorf("service %s: bind mount %s is outside the repository", name, v.Source)
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("service %s: bind mount source: %v", name, err)
			}
			if !v.ReadOnly {
				t.Errorf("service %s: bind mount %s is writable; mount config read-only", name, v.Source)
			}
		}
	}

	// The gateways: built from gateway/Dockerfile, on the rabbitmq service, each named.
	nodes := map[string]bool{}
	for _, name := range []string{"gateway-1", "gateway-2"} {
		s := p.Services[name]
		if s.Build == nil {
			t.Errorf("service %s: no build", name)
			continue
		}
		if s.Build.Context != dir {
			t.Errorf("service %s: build context %s, want the repository root %s", name, s.Build.Context, dir)
		}
		dockerfile := s.Build.Dockerfile
		if !filepath.IsAbs(dockerfile) {
			dockerfile = filepath.Join(s.Build.Context, dockerfile)
		}
		if dockerfile != filepath.Join(dir, "gateway", "Dockerfile") {
			t.Errorf("service %s: dockerfile %s, want gateway/Dockerfile", name, dockerfile)
		}
		if _, err := os.Stat(dockerfile); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
		env := func(k string) string {
			if v := s.Environment[k]; v != nil {
				return *v
			}
			return ""
		}
		for _, node := range []string{"rabbitmq-1", "rabbitmq-2", "rabbitmq-3"} {
			if u := env("HERALD_AMQP_URL"); !strings.Contains(u, "@"+node+":5672/") {
				t.Errorf("service %s: HERALD_AMQP_URL %q does not list the %s service", name, u, node)
			}
		}
		if env("HERALD_API_KEY") == "" {
			t.Errorf("service %s: HERALD_API_KEY empty: the HTTP publish API would be off", name)
		}
		// Behind the load balancer: its address, and only its, is trusted for
		// X-Forwarded-For, or every client would share its address and its limits.
		if got, want := env("HERALD_TRUSTED_PROXIES"), lbAddress(t, p); got != want {
			t.Errorf("service %s: HERALD_TRUSTED_PROXIES %q, want the load balancer's address %q", name, got, want)
		}
		// The demo's presence shows named users: ?user= names them (a local demo).
		if env("HERALD_INSECURE_USER_PARAM") != "true" {
			t.Errorf("service %s: HERALD_INSECURE_USER_PARAM %q, want true: the demo page's users would all be anonymous", name, env("HERALD_INSECURE_USER_PARAM"))
		}
		node := env("HERALD_NODE_ID")
		if node == "" || nodes[node] {
			t.Errorf("service %s: HERALD_NODE_ID %q empty or shared", name, node)
		}
		nodes[node] = true
		// Every variable it sets is one the gateway reads, with a value it takes.
		for k, v := range s.Environment {
			if !strings.HasPrefix(k, "HERALD_") || v == nil {
				continue
			}
			if !strings.Contains(gatewayUsage(t), "(env "+k+")") {
				t.Errorf("service %s: %s is not a variable herald-gateway reads", name, k)
			}
		}
	}
	// The gateway takes the services' whole environment, values included.
	for _, name := range []string{"gateway-1", "gateway-2"} {
		bin, err := buildGateway()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--check-config")
		for k, v := range p.Services[name].Environment {
			if v != nil {
				cmd.Env = append(cmd.Env, k+"="+*v)
			}
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("herald-gateway --check-config with %s's environment: %v\n%s", name, err, out)
		}
	}
	// The files the services mount agree with compose.yaml and with each other.
	mountOf := func(service, source string) string {
		for _, v := range p.Services[service].Volumes {
			if v.Source == filepath.Join(dir, source) {
				return v.Target
			}
		}
		t.Errorf("service %s does not mount %s", service, source)
		return ""
	}
	plugins, err := os.ReadFile(filepath.Join(dir, "grafana/rabbitmq/enabled_plugins"))
	if err != nil {
		t.Fatal(err)
	}
	for _, plugin := range []string{"rabbitmq_management", "rabbitmq_prometheus"} {
		if !strings.Contains(string(plugins), plugin) {
			t.Errorf("enabled_plugins: %s missing", plugin)
		}
	}
	// The RabbitMQ nodes: one cluster, formed at start from the node list of
	// cluster.conf, with one cookie.
	clusterConf, err := os.ReadFile(filepath.Join(dir, "grafana/rabbitmq/cluster.conf"))
	if err != nil {
		t.Fatal(err)
	}
	cookies := map[string]bool{}
	for i, name := range []string{"rabbitmq-1", "rabbitmq-2", "rabbitmq-3"} {
		s := p.Services[name]
		if !strings.Contains(s.Image, "management") {
			t.Errorf("%s image %s: want a -management image", name, s.Image)
		}
		if s.Hostname != name {
			t.Errorf("%s: hostname %q, want %s (the node is rabbit@<hostname>)", name, s.Hostname, name)
		}
		if want := fmt.Sprintf("cluster_formation.classic_config.nodes.%d = rabbit@%s\n", i+1, name); !strings.Contains(string(clusterConf), want) {
			t.Errorf("cluster.conf: %q missing", want)
		}
		for _, k := range []string{"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "RABBITMQ_CTL_ERL_ARGS"} {
			v := s.Environment[k]
			if v == nil || !strings.HasPrefix(*v, "-setcookie ") {
				t.Errorf("%s: %s %v, want -setcookie <the cluster's cookie>", name, k, v)
				continue
			}
			cookies[*v] = true
		}
		if got := mountOf(name, "grafana/rabbitmq/enabled_plugins"); got != "/etc/rabbitmq/enabled_plugins" {
			t.Errorf("%s: enabled_plugins mounted at %s, want /etc/rabbitmq/enabled_plugins", name, got)
		}
		if got := mountOf(name, "grafana/rabbitmq/cluster.conf"); !strings.HasPrefix(got, "/etc/rabbitmq/conf.d/") {
			t.Errorf("%s: cluster.conf mounted at %s, want under /etc/rabbitmq/conf.d/", name, got)
		}
	}
	if len(cookies) != 1 {
		t.Errorf("the RabbitMQ nodes' cookies: %v, want one for all", cookies)
	}
	for _, line := range []string{"cluster_formation.peer_discovery_backend = classic_config", "cluster_partition_handling = pause_minority", "net_ticktime = "} {
		if !strings.Contains(string(clusterConf), line) {
			t.Errorf("cluster.conf: %q missing", line)
		}
	}

	promCfg := readPrometheusConfig(t)
	for job, want := range map[string][]string{gatewayJob: {"gateway-1:8080", "gateway-2:8080"},
		"rabbitmq": {"rabbitmq-1:15692", "rabbitmq-2:15692", "rabbitmq-3:15692"}} {
		var targets []string
		for _, sc := range promCfg.ScrapeConfigs {
			if sc.JobName == job {
				for _, st := range sc.StaticConfigs {
					targets = append(targets, st.Targets...)
				}
			}
		}
		slices.Sort(targets)
		if !slices.Equal(targets, want) {
			t.Errorf("prometheus.yml job %s targets %v, want %v", job, targets, want)
		}
	}
	promDir := path(mountOf("prometheus", "grafana/prometheus/prometheus.yml"))
	for _, rf := range promCfg.RuleFiles {
		if filepath.IsAbs(rf) {
			t.Errorf("prometheus.yml rule file %s: make it relative, so it works mounted and in place", rf)
			continue
		}
		if got := mountOf("prometheus", filepath.Join("grafana/prometheus", rf)); got != promDir+"/"+rf {
			t.Errorf("rule file %s mounted at %s, want %s beside prometheus.yml", rf, got, promDir+"/"+rf)
		}
	}
	if got := p.Services["prometheus"].Command; !slices.Contains(got, "--config.file="+promDir+"/prometheus.yml") {
		t.Errorf("prometheus command %v does not load the mounted prometheus.yml", got)
	}

	nginx, err := os.ReadFile(filepath.Join(dir, "grafana/compose/nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"server gateway-1:8080", "server gateway-2:8080", "listen 8080;", "proxy_http_version 1.1;",
		"proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Connection $connection_upgrade;",
		"proxy_set_header Host $http_host;",
	} {
		if !strings.Contains(string(nginx), line) {
			t.Errorf("nginx.conf: %q missing", line)
		}
	}
	if got := mountOf("lb", "grafana/compose/nginx.conf"); !strings.HasPrefix(got, "/etc/nginx/conf.d/") {
		t.Errorf("nginx.conf mounted at %s, want under /etc/nginx/conf.d/ (inside the http block)", got)
	}

	ds := readDatasources(t)
	if len(ds.Datasources) != 1 || ds.Datasources[0].UID != datasourceUID || ds.Datasources[0].Type != "prometheus" {
		t.Errorf("datasources %+v, want one prometheus datasource with uid %s", ds.Datasources, datasourceUID)
	} else if u, err := url.Parse(ds.Datasources[0].URL); err != nil || u.Port() != "9090" || p.Services[u.Hostname()].Name == "" {
		t.Errorf("datasource url %s: want the prometheus service on :9090", ds.Datasources[0].URL)
	}
	if got := mountOf("grafana", "grafana/provisioning/datasources"); got != "/etc/grafana/provisioning/datasources" {
		t.Errorf("datasources mounted at %s", got)
	}
	if got := mountOf("grafana", "grafana/provisioning/dashboards"); got != "/etc/grafana/provisioning/dashboards" {
		t.Errorf("dashboard providers mounted at %s", got)
	}
	prov := readProviders(t)
	dashMount := mountOf("grafana", "grafana/dashboards")
	if len(prov.Providers) != 1 || prov.Providers[0].Type != "file" || prov.Providers[0].Options.Path != dashMount {
		t.Errorf("dashboard providers %+v, want one file provider with path %s (where compose mounts grafana/dashboards)",
			prov.Providers, dashMount)
	}
	home := p.Services["grafana"].Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
	if home == nil || path(*home) != dashMount {
		t.Errorf("grafana home dashboard %v, want a file in %s", home, dashMount)
	} else if _, err := os.Stat(filepath.Join(dir, "grafana/dashboards", filepath.Base(*home))); err != nil {
		t.Errorf("grafana home dashboard: %v", err)
	}
}

// lbAddress returns the load balancer's fixed address on the compose network, checking
// that it lies in the network's subnet.
func lbAddress(t *testing.T, p *types.Project) string {
	t.Helper()
	lb := p.Services["lb"]
	nc := lb.Networks["default"]
	if nc == nil || nc.Ipv4Address == "" {
		t.Errorf("service lb: no fixed ipv4_address on the default network, so the gateways cannot trust it")
		return ""
	}
	addr, err := netip.ParseAddr(nc.Ipv4Address)
	if err != nil {
		t.Errorf("service lb: ipv4_address %q: %v", nc.Ipv4Address, err)
		return ""
	}
	ipam := p.Networks["default"].Ipam
	if len(ipam.Config) != 1 {
		t.Errorf("network default: %d ipam pools, want one fixed subnet", len(ipam.Config))
		return nc.Ipv4Address
	}
	if subnet, err := netip.ParsePrefix(ipam.Config[0].Subnet); err != nil || !subnet.Contains(addr) {
		t.Errorf("service lb: address %s outside the network's subnet %q (%v)", addr, ipam.Config[0].Subnet, err)
	}
	return nc.Ipv4Address
}

// path returns the directory of a slash-separated container path.
func path(p string) string { return p[:max(strings.LastIndex(p, "/"), 0)] }

type prometheusConfig struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

func readPrometheusConfig(t *testing.T) prometheusConfig {
	var c prometheusConfig
	readYAML(t, "grafana/prometheus/prometheus.yml", &c)
	return c
}

type datasources struct {
	Datasources []struct {
		Name, Type, UID, URL string
	} `yaml:"datasources"`
}

func readDatasources(t *testing.T) datasources {
	var d datasources
	readYAML(t, "grafana/provisioning/datasources/prometheus.yaml", &d)
	return d
}

type providers struct {
	Providers []struct {
		Name, Type string
		Options    struct {
			Path string `yaml:"path"`
		} `yaml:"options"`
	} `yaml:"providers"`
}

func readProviders(t *testing.T) providers {
	var p providers
	readYAML(t, "grafana/provisioning/dashboards/herald.yaml", &p)
	return p
}

type ruleGroups struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert string `yaml:"alert"`
			Expr  string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readYAML(t *testing.T, rel string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

// TestDockerfile checks that gateway/Dockerfile copies every folder of the module that
// the gateway is built from, builds with the Go of go.mod, and runs as a non-root user
// with a way to probe /readyz.
func TestDockerfile(t *testing.T) {
	dir := root(t)
	b, err := os.ReadFile(filepath.Join(dir, "gateway", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	copied := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^COPY\s+([^-\s][^\s]*)\s`).FindAllStringSubmatch(df, -1) {
		copied[strings.TrimSuffix(m[1], "/")] = true
	}

	gobin := tool(t, "go", "the Go toolchain")
	cmd := exec.Command(gobin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./gateway/cmd/herald-gateway")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const module = "github.com/heraldgw/herald/"
	for _, pkg := range strings.Fields(string(out)) {
		rel, ok := strings.CutPrefix(pkg, module)
		if !ok {
			continue
		}
		top, _, _ := strings.Cut(rel, "/")
		if !copied[top] {
			t.Errorf("gateway/Dockerfile does not COPY %s/, which %s is built from", top, pkg)
		}
	}

	mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
	if goLine == nil {
		t.Fatal("go.mod has no go line")
	}
	if want := "FROM golang:" + string(goLine[1]); !strings.Contains(df, want) {
		t.Errorf("gateway/Dockerfile: no %q (go.mod says go %s)", want, goLine[1])
	}
	if m := regexp.MustCompile(`(?m)^USER\s+(\S+)`).FindStringSubmatch(df); m == nil || strings.HasPrefix(m[1], "root") || strings.HasPrefix(m[1], "0") {
		t.Errorf("gateway/Dockerfile: want a non-root USER, got %v", m)
	}
	if !strings.Contains(df, "FROM alpine") {
		t.Errorf("gateway/Dockerfile: the runtime image needs wget for the /readyz health check (alpine)")
	}
}

// ---------------------------------------------------------------------------------------
// Dashboards

type dashboard struct {
	file          string
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type variable struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Datasource *datasourceRef `json:"datasource"`
	Definition string         `json:"definition"`
	Query      struct {
		Query string `json:"query"`
	} `json:"query"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []target `json:"targets"`
	Panels     []panel  `json:"panels"` // a row's panels
}

type target struct {
	Datasource   *datasourceRef `json:"datasource"`
	Expr         string         `json:"expr"`
	RefID        string         `json:"refId"`
	LegendFormat string         `json:"legendFormat"`
}

func loadDashboards(t *testing.T) []dashboard {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root(t), "grafana", "dashboards", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var out []dashboard
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		d.file = filepath.Base(f)
		out = append(out, d)
	}
	return out
}

// queryPanels returns a dashboard's panels that query, rows flattened.
func (d dashboard) queryPanels() []panel {
	var out []panel
	for _, p := range d.Panels {
		if p.Type == "row" {
			out = append(out, p.Panels...)
		} else {
			out = append(out, p)
		}
	}
	return out
}

var (
	// selectorRe finds label matchers, metricRe the metric names in an expression (the
	// Prometheus ones Herald exports, and up).
	selectorRe = regexp.MustCompile(`\{[^{}]*\}`)
	metricRe   = regexp.MustCompile(`\b(herald_[a-z_]+|go_[a-z_]+|process_[a-z_]+|up)\b(.?)`)
)

func TestDashboards(t *testing.T) {
	boards := loadDashboards(t)
	wantTitles := []string{"Herald connections", "Herald overview"}
	var titles []string
	uids := map[string]bool{}
	for _, d := range boards {
		titles = append(titles, d.Title)
		if d.UID == "" || uids[d.UID] {
			t.Errorf("%s: uid %q empty or not unique", d.file, d.UID)
		}
		uids[d.UID] = true
		if d.SchemaVersion < 36 {
			t.Errorf("%s: schemaVersion %d, want 36 or later (datasource references by uid)", d.file, d.SchemaVersion)
		}
		vars := map[string]variable{}
		for _, v := range d.Templating.List {
			vars[v.Name] = v
		}
		for _, name := range []string{"job", "instance"} {
			v, ok := vars[name]
			if !ok {
				t.Errorf("%s: template variable %s missing", d.file, name)
				continue
			}
			if v.Type != "query" || v.Datasource == nil || v.Datasource.UID != datasourceUID ||
				!strings.HasPrefix(v.Query.Query, "label_values(herald_connections") || !strings.HasSuffix(v.Query.Query, ", "+name+")") {
				t.Errorf("%s: variable %s = %+v, want a label_values(herald_connections…, %s) query on %s", d.file, name, v, name, datasourceUID)
			}
		}

		ids := map[int]bool{}
		for _, p := range d.Panels {
			if ids[p.ID] {
				t.Errorf("%s: panel id %d used twice", d.file, p.ID)
			}
			ids[p.ID] = true
			for _, c := range p.Panels {
				if ids[c.ID] {
					t.Errorf("%s: panel id %d used twice", d.file, c.ID)
				}
				ids[c.ID] = true
			}
		}
		panels := d.queryPanels()
		if len(panels) < 8 {
			t.Errorf("%s: %d panels, want a dashboard", d.file, len(panels))
		}
		for _, p := range panels {
			where := fmt.Sprintf("%s: panel %q", d.file, p.Title)
			if p.Title == "" {
				t.Errorf("%s: panel %d has no title", d.file, p.ID)
			}
			if p.Type != "timeseries" && p.Type != "stat" {
				t.Errorf("%s: type %q, want timeseries or stat", where, p.Type)
			}
			if p.Datasource == nil || p.Datasource.UID != datasourceUID || p.Datasource.Type != "prometheus" {
				t.Errorf("%s: datasource %+v, want prometheus %s", where, p.Datasource, datasourceUID)
			}
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("%s: gridPos %+v", where, p.GridPos)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no targets", where)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: refId %q empty or repeated", where, tg.RefID)
				}
				refs[tg.RefID] = true
				if tg.Datasource == nil || tg.Datasource.UID != datasourceUID || tg.Datasource.Type != "prometheus" {
					t.Errorf("%s %s: datasource %+v, want prometheus %s", where, tg.RefID, tg.Datasource, datasourceUID)
				}
				checkExpr(t, where+" "+tg.RefID, tg.Expr)
			}
		}
	}
	slices.Sort(titles)
	if !slices.Equal(titles, wantTitles) {
		t.Errorf("dashboards %v, want %v", titles, wantTitles)
	}
}

// checkExpr checks that every metric in expr is selected by both template variables.
func checkExpr(t *testing.T, where, expr string) {
	t.Helper()
	if strings.TrimSpace(expr) == "" {
		t.Errorf("%s: empty expr", where)
		return
	}
	for _, m := range metricRe.FindAllStringSubmatch(expr, -1) {
		if m[2] != "{" {
			t.Errorf("%s: metric %s without label matchers in %s", where, m[1], expr)
		}
	}
	for _, sel := range selectorRe.FindAllString(expr, -1) {
		if strings.Contains(sel, `job=~"$broker_job"`) {
			continue // the broker's own metrics, checked on a real cluster (cluster_test.go)
		}
		if !strings.Contains(sel, `job=~"$job"`) || !strings.Contains(sel, `instance=~"$instance"`) {
			t.Errorf("%s: selector %s does not use $job and $instance", where, sel)
		}
	}
}

// ---------------------------------------------------------------------------------------
// promtool

func TestPromtool(t *testing.T) {
	promtool := tool(t, "promtool", "Debian package prometheus")
	dir := filepath.Join(root(t), "grafana", "prometheus")
	for _, args := range [][]string{
		{"check", "config", "prometheus.yml"},
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// ---------------------------------------------------------------------------------------
// A real gateway on RabbitMQ, scraped by a real Prometheus, under traffic.

// process is a child process whose output goes to a log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when it has exited
}

// start runs a program until the test ends; it then gets SIGTERM, and SIGKILL 5s later.
// When the test has failed, the end of its log is logged.
func start(t *testing.T, name, logPath string, bin string, args ...string) *process {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		f.Close()
		if t.Failed() {
			p.logTail(t)
		}
	})
	return p
}

func (p *process) logTail(t *testing.T) {
	b, _ := os.ReadFile(p.log)
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	t.Logf("%s log (end):\n%s", p.name, b)
}

// stop sends the process SIGTERM and waits up to 10s for it to exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still running 10s after SIGTERM", p.name)
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitFor polls cond every 100ms until it returns nil, and fails the test with its last
// error when ctx ends or timeout passes.
func waitFor(t *testing.T, ctx context.Context, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// metrics is one scrape of a gateway's /metrics: values by series as exposed
// (`name{label="value"}`), and the names of the metric families.
type metrics struct {
	values   map[string]float64
	families map[string]bool
}

func scrape(ctx context.Context, base string) (metrics, error) {
	m := metrics{values: map[string]float64{}, families: map[string]bool{}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return m, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("scrape: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			m.families[strings.Fields(name)[0]] = true
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return m, fmt.Errorf("scrape: %q: %w", line, err)
		}
		m.values[line[:i]] = v
	}
	return m, sc.Err()
}

// get returns the value of series, given as the exposition writes it (name, or
// name{label="value",...}); where the metric has labels the series does not name (the
// transport label, say), it adds up every series that has the ones named.
func (m metrics) get(series string) float64 {
	if v, ok := m.values[series]; ok {
		return v
	}
	name, want := splitSeries(series)
	var total float64
	for s, v := range m.values {
		n, labels := splitSeries(s)
		if n != name {
			continue
		}
		match := true
		for k, lv := range want {
			if labels[k] != lv {
				match = false
				break
			}
		}
		if match {
			total += v
		}
	}
	return total
}

// splitSeries splits name{a="x",b="y"} into its name and labels (no label value here
// holds a comma or a quote).
func splitSeries(series string) (string, map[string]string) {
	name, rest, ok := strings.Cut(series, "{")
	labels := map[string]string{}
	if !ok {
		return name, labels
	}
	for _, pair := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if ok {
			labels[k] = strings.Trim(v, `"`)
		}
	}
	return name, labels
}

// sum adds up every series of the metric name, whatever its labels.
func (m metrics) sum(name string) float64 {
	var total float64
	for series, v := range m.values {
		if n, _, _ := strings.Cut(series, "{"); n == name {
			total += v
		}
	}
	return total
}

// promSample is one element of a Prometheus query result.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) value() float64 {
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

func (s promSample) String() string {
	var labels []string
	for _, k := range slices.Sorted(maps.Keys(s.Metric)) {
		labels = append(labels, fmt.Sprintf("%s=%q", k, s.Metric[k]))
	}
	return fmt.Sprintf("{%s} %s", strings.Join(labels, ", "), s.Value[1])
}

// promGet calls a Prometheus HTTP API endpoint and decodes its data.
func promGet(ctx context.Context, base, path string, q url.Values, data any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("prometheus %s: %w", path, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("prometheus %s: %s: %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("prometheus %s: %s: %s", path, body.ErrorType, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}

// promQuery evaluates an instant query now.
func promQuery(ctx context.Context, base, expr string) ([]promSample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := promGet(ctx, base, "/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	switch data.ResultType {
	case "vector":
		var v []promSample
		err := json.Unmarshal(data.Result, &v)
		return v, err
	case "scalar":
		var s promSample
		err := json.Unmarshal(data.Result, &s.Value)
		return []promSample{s}, err
	}
	return nil, fmt.Errorf("query %s: result type %s, want vector or scalar", expr, data.ResultType)
}

// wsFrame is the part of a gateway frame the test looks at.
type wsFrame struct {
	Op      string          `json:"op"`
	Channel string          `json:"channel"`
	Code    string          `json:"code"`
	Ref     string          `json:"ref"`
	Node    string          `json:"node"`
	Data    json.RawMessage `json:"data"`
}

// wireSize is the size of a server-to-client text frame with a payload of n bytes.
func wireSize(n int) int {
	switch {
	case n <= 125:
		return n + 2
	case n <= 65535:
		return n + 4
	}
	return n + 10
}

type gatewayClient struct {
	t    *testing.T
	ws   *websocket.Conn
	name string
}

// dial opens a WebSocket client and reads its welcome frame.
func dial(t *testing.T, ctx context.Context, wsBase, name, query string) *gatewayClient {
	t.Helper()
	return dialBuffered(t, ctx, wsBase, name, query, 0)
}

// dialBuffered is dial with the client's TCP receive buffer set to rcvbuf bytes (0: the
// system's), so that a client that does not read backs the gateway's queue up soon,
// rather than once the kernel's loopback buffers (megabytes) are full.
func dialBuffered(t *testing.T, ctx context.Context, wsBase, name, query string, rcvbuf int) *gatewayClient {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: []string{"herald.v1"}}
	if rcvbuf > 0 {
		nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			}); err != nil {
				return err
			}
			return serr
		}}
		d.NetDialContext = nd.DialContext
	}
	ws, resp, err := d.DialContext(ctx, wsBase+"/ws?"+query, nil)
	if err != nil {
		t.Fatalf("client %s: dial ?%s: %v (response %v)", name, query, err, resp)
	}
	c := &gatewayClient{t: t, ws: ws, name: name}
	t.Cleanup(func() { _ = ws.Close() })
	if f := c.read(); f.Op != "welcome" {
		t.Fatalf("client %s: first frame %+v, want welcome", name, f)
	}
	return c
}

func (c *gatewayClient) readRaw() []byte {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	mt, p, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("client %s: read: %v", c.name, err)
	}
	if mt != websocket.TextMessage {
		c.t.Fatalf("client %s: frame type %d, want text", c.name, mt)
	}
	return p
}

func (c *gatewayClient) read() wsFrame {
	c.t.Helper()
	var f wsFrame
	if err := json.Unmarshal(c.readRaw(), &f); err != nil {
		c.t.Fatalf("client %s: %v", c.name, err)
	}
	return f
}

func (c *gatewayClient) send(mt int, p []byte) {
	c.t.Helper()
	_ = c.ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := c.ws.WriteMessage(mt, p); err != nil {
		c.t.Fatalf("client %s: write: %v", c.name, err)
	}
}

// closedWith reads until the gateway closes the connection and returns its close code.
func (c *gatewayClient) closedWith() int {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(15 * time.Second))
	for {
		_, _, err := c.ws.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if err != nil {
			c.t.Fatalf("client %s: read: %v, want a close frame", c.name, err)
		}
	}
}

// publisher posts to a gateway's /api/publish.
type publisher struct {
	t    *testing.T
	ctx  context.Context
	base string
	key  string
}

func (p publisher) publish(channel string, data any) {
	p.t.Helper()
	body, err := json.Marshal(map[string]any{"channel": channel, "data": data})
	if err != nil {
		p.t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(p.ctx, http.MethodPost, p.base+"/api/publish", strings.NewReader(string(body)))
	if err != nil {
		p.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+p.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatalf("publish: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(resp.Body)
		p.t.Fatalf("publish to %s: %s %s, want 202", channel, resp.Status, b)
	}
}

// gatewayBuild is the gateway binary that the tests build once, from this tree.
var gatewayBuild struct {
	once sync.Once
	dir  string // removed by TestMain
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if gatewayBuild.dir != "" {
		_ = os.RemoveAll(gatewayBuild.dir)
	}
	os.Exit(code)
}

// buildGateway builds ./gateway/cmd/herald-gateway once and returns the binary's path.
// Safe to call from any goroutine.
func buildGateway() (string, error) {
	gatewayBuild.once.Do(func() {
		gobin, err := exec.LookPath("go")
		if err != nil {
			gatewayBuild.err = err
			return
		}
		repo, err := filepath.Abs("..")
		if err != nil {
			gatewayBuild.err = err
			return
		}
		if gatewayBuild.dir, err = os.MkdirTemp("", "herald-grafana-test-"); err != nil {
			gatewayBuild.err = err
			return
		}
		bin := filepath.Join(gatewayBuild.dir, "herald-gateway")
		cmd := exec.Command(gobin, "build", "-o", bin, "./gateway/cmd/herald-gateway")
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			gatewayBuild.err = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		gatewayBuild.path = bin
	})
	return gatewayBuild.path, gatewayBuild.err
}

// testAPIKey is the bearer key of the test gateways' publish API.
const testAPIKey = "grafana-test-key"

// gatewayUsage returns herald-gateway's -help text, which names each flag's variable.
func gatewayUsage(t *testing.T) string {
	t.Helper()
	bin, err := buildGateway()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-help").CombinedOutput()
	if err != nil {
		t.Fatalf("herald-gateway -help: %v\n%s", err, out)
	}
	return string(out)
}

// startGateway starts a gateway on RabbitMQ listening on addr, with extra flags, and waits
// until it is ready.
func startGateway(t *testing.T, ctx context.Context, addr, node, amqpURL, exchange, stream string, extra ...string) *process {
	t.Helper()
	bin, err := buildGateway()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--addr", addr, "--node-id", node, "--amqp-url", amqpURL,
		"--exchange", exchange, "--stream", stream, "--api-key", testAPIKey,
		// A small kernel send buffer: a client that does not read backs its write queue up
		// soon (the backpressure check below), not after megabytes of loopback buffers.
		"--socket-send-buffer", "16384",
		// Presence on the channels under presence: (users named with ?user=), carried on
		// an exchange of this test's; compression for the clients that offer it.
		"--presence-channels", "presence:*", "--presence-interval", "200ms",
		"--presence-exchange", exchange + ".presence", "--insecure-user-param", "--compression",
		"--shutdown-timeout", "2s", "--log-level", "debug"}
	gw := start(t, node, filepath.Join(t.TempDir(), node+".log"), bin, append(args, extra...)...)
	t.Cleanup(func() { amqptest.Delete(t, amqpURL, exchange+".presence", exchange+".presence") })
	waitFor(t, ctx, 20*time.Second, node+" ready", func() error {
		if gw.exited() {
			t.Fatalf("%s exited", node)
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
	return gw
}

// trafficRun is TestPrometheusScrapesGatewayUnderTraffic's scenario: a gateway on
// RabbitMQ scraped by a real Prometheus, the traffic driven through it, and what each step
// leaves for the next. Its steps run in order, on the test's goroutine.
type trafficRun struct {
	t        *testing.T
	ctx      context.Context
	began    time.Time
	prom     *process
	promBase string
	gw       *process
	gwAddr   string
	base     string // http://gwAddr
	wsBase   string // ws://gwAddr
	pub      publisher
	open     int // connections the test holds open

	chat     *gatewayClient   // publishes on chat (fan-out)
	news     []*gatewayClient // subscribers of news (fan-out)
	resumer  *gatewayClient   // resumed on resume (handshakes and closes)
	resetter *gatewayClient   // reset on resume (handshakes and closes)
	m5       metrics          // the gateway's counters after the slow consumer
	final    metrics          // the gateway's counters when Prometheus has seen them all
}

// The first round's fan-out: N HTTP publishes to K subscribers of "news".
const trafficN, trafficK = 20, 3

// trafficQueueCap is the gateway's write queue cap, other than the default and written
// with a unit: the alert on queues near their cap must compare against it.
const trafficQueueCap = 256 << 10

// TestPrometheusScrapesGatewayUnderTraffic builds and starts a gateway on RabbitMQ,
// scrapes it with a real Prometheus that loads alerts.yml, drives traffic through it
// (subscribers, HTTP and WebSocket publishes, refused handshakes, bad frames, a client
// that backs up its write queue and drains it, one closed as a slow consumer), checks the
// counters against what happened, and then runs every dashboard expression and every
// alert rule through Prometheus's HTTP API. Its steps share the gateway and run in order.
func TestPrometheusScrapesGatewayUnderTraffic(t *testing.T) {
	r := startTraffic(t)
	for _, step := range []struct {
		name string
		run  func(*trafficRun)
	}{
		{"fan-out is counted", (*trafficRun).fanOut},
		{"handshakes and closes are counted", (*trafficRun).handshakesAndCloses},
		{"a backed-up write queue is seen, and drains", (*trafficRun).backpressure},
		{"a slow consumer is closed with 4008", (*trafficRun).slowConsumer},
		{"a second round moves the rates", (*trafficRun).secondRound},
		{"presence and compression are counted", (*trafficRun).presenceAndCompression},
		{"Prometheus sees the gateway's state", (*trafficRun).prometheusSeesState},
		{"the dashboards' variables find the gateway", (*trafficRun).templateVariables},
		{"every dashboard query has data", (*trafficRun).dashboardQueries},
		{"every herald_ metric is on a dashboard", (*trafficRun).everyMetricShown},
		{"every alert rule loads and answers", (*trafficRun).alertRules},
		{"HeraldBrokerDropsArrayHeaders follows the header probe", (*trafficRun).brokerHeadersAlert},
		{"a stopped gateway is down", (*trafficRun).gatewayDown},
	} {
		t.Logf("step: %s (%v)", step.name, time.Since(r.began).Round(time.Millisecond))
		step.run(r)
	}
	t.Logf("done after %v", time.Since(r.began).Round(time.Millisecond))
}

// startTraffic starts Prometheus, then the gateway (with a write queue cap of
// trafficQueueCap), and waits until Prometheus scrapes it.
func startTraffic(t *testing.T) *trafficRun {
	promBin := tool(t, "prometheus", "Debian package prometheus")
	amqpURL := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, amqpURL)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	began := time.Now()
	dir := t.TempDir()
	repo := root(t)
	go buildGateway() // while Prometheus starts

	gwAddr := freeAddr(t)
	// Prometheus, started first (it takes its targets in a few seconds): scrapes the
	// gateway every second and evaluates alerts.yml every second.
	promAddr := freeAddr(t)
	promCfg := filepath.Join(dir, "prometheus.yml")
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: %q
    static_configs:
      - targets: [%q]
`, filepath.Join(repo, "grafana", "prometheus", "alerts.yml"), gatewayJob, gwAddr)
	if err := os.WriteFile(promCfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := start(t, "prometheus", filepath.Join(dir, "prometheus.log"), promBin,
		"--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr)
	promBase := "http://" + promAddr

	gw := startGateway(t, ctx, gwAddr, "grafana-test", amqpURL, exchange, stream, "--write-queue-bytes", "256KiB")
	base, wsBase := "http://"+gwAddr, "ws://"+gwAddr
	t.Logf("gateway ready at %s after %v", gwAddr, time.Since(began).Round(time.Millisecond))

	upExpr := fmt.Sprintf(`up{job=%q, instance=%q}`, gatewayJob, gwAddr)
	waitFor(t, ctx, 20*time.Second, "Prometheus scraping the gateway", func() error {
		if prom.exited() {
			t.Fatal("prometheus exited")
		}
		r, err := promQuery(ctx, promBase, upExpr)
		if err != nil {
			return err
		}
		if len(r) != 1 || r[0].value() != 1 {
			return fmt.Errorf("%s = %v", upExpr, r)
		}
		return nil
	})
	t.Logf("Prometheus scraping after %v", time.Since(began).Round(time.Millisecond))
	return &trafficRun{t: t, ctx: ctx, began: began, prom: prom, promBase: promBase, gw: gw, gwAddr: gwAddr,
		base: base, wsBase: wsBase, pub: publisher{t: t, ctx: ctx, base: base, key: testAPIKey}}
}

// mustScrape reads the gateway's /metrics.
func (r *trafficRun) mustScrape() metrics {
	r.t.Helper()
	m, err := scrape(r.ctx, r.base)
	if err != nil {
		r.t.Fatal(err)
	}
	return m
}

// settle waits until a gateway series reaches want (counting happens just after a socket
// write, so a client may read a frame before it is counted).
func (r *trafficRun) settle(series string, want float64) {
	r.t.Helper()
	waitFor(r.t, r.ctx, 5*time.Second, series, func() error {
		if got := r.mustScrape().get(series); got != want {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	})
}

// dialOpen connects a client that the test holds open.
func (r *trafficRun) dialOpen(name, query string) *gatewayClient {
	r.t.Helper()
	r.open++
	return dial(r.t, r.ctx, r.wsBase, name, query)
}

// resumeDial connects with since in query and reads up to the resume's answer (the
// connection counts as open once it has joined live delivery). It returns the client,
// the answer, and how many messages were replayed before it.
func (r *trafficRun) resumeDial(name, query string) (*gatewayClient, string, int) {
	t := r.t
	t.Helper()
	c := r.dialOpen(name, query)
	replayed := 0
	for {
		switch f := c.read(); f.Op {
		case "message":
			replayed++
		case "resumed", "reset":
			t.Logf("client %s (?%s): %d messages replayed, then %s", name, query, replayed, f.Op)
			return c, f.Op, replayed
		default:
			t.Fatalf("client %s: %+v while resuming", name, f)
		}
	}
}

// refuse dials with query and wants the handshake refused with 400.
func (r *trafficRun) refuse(query string) {
	t, ctx, wsBase := r.t, r.ctx, r.wsBase
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.DialContext(ctx, wsBase+"/ws?"+query, nil)
	if err == nil {
		ws.Close()
		t.Fatalf("dial ?%s: accepted, want refused", query)
	}
	if resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("dial ?%s: %v (response %v), want 400", query, err, resp)
	}
}

// badFrames sends what is not a request, binary, invalid UTF-8 and a normal close, each on a connection of its own.
func (r *trafficRun) badFrames() {
	t, ctx, wsBase := r.t, r.ctx, r.wsBase
	t.Helper()
	c := dial(t, ctx, wsBase, "bad-frames", "")
	c.send(websocket.TextMessage, []byte("not json"))
	if f := c.read(); f.Op != "error" || f.Code != "bad_request" {
		t.Errorf("after a frame that is not JSON: %+v, want error bad_request", f)
	}
	c.send(websocket.TextMessage, []byte(`{"op":"shout","ref":"r9"}`))
	if f := c.read(); f.Op != "error" || f.Code != "unknown_op" || f.Ref != "r9" {
		t.Errorf("after an unknown op: %+v, want error unknown_op ref r9", f)
	}
	c.send(websocket.BinaryMessage, []byte{1, 2, 3})
	if code := c.closedWith(); code != websocket.CloseUnsupportedData {
		t.Errorf("after a binary frame: closed with %d, want 1003", code)
	}
	c = dial(t, ctx, wsBase, "bad-utf8", "")
	c.send(websocket.TextMessage, []byte{'"', 0xff, 0xfe, '"'})
	if code := c.closedWith(); code != websocket.CloseInvalidFramePayloadData {
		t.Errorf("after invalid UTF-8: closed with %d, want 1007", code)
	}
	c = dial(t, ctx, wsBase, "leaver", "channels=leaver")
	if err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"),
		time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if code := c.closedWith(); code != websocket.CloseNormalClosure {
		t.Errorf("after a normal close: gateway answered %d, want 1000", code)
	}
}

// plainGet asks for /ws without an upgrade: 400.
func (r *trafficRun) plainGet() {
	t, base := r.t, r.base
	t.Helper()
	resp, err := http.Get(base + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("GET /ws without an upgrade: %s, want 400", resp.Status)
	}
}

// waitScraped waits until Prometheus has the gateway's counters and gauges as they are now.
func (r *trafficRun) waitScraped() {
	t, ctx, gwAddr, promBase := r.t, r.ctx, r.gwAddr, r.promBase
	t.Helper()
	m := r.mustScrape()
	sel := fmt.Sprintf(`job=%q, instance=%q`, gatewayJob, gwAddr)
	waitFor(t, ctx, 10*time.Second, "Prometheus has scraped the gateway's state", func() error {
		for _, c := range []struct {
			expr string
			want float64
		}{
			{"sum(" + "herald_messages_delivered_total{" + sel + "}" + ")", m.get("herald_messages_delivered_total")},
			{"sum(" + "herald_connections_accepted_total{" + sel + "}" + ")", m.get("herald_connections_accepted_total")},
			{"sum(" + "herald_connections{" + sel + "}" + ")", m.get("herald_connections")},
			{"sum(" + `herald_connections_closed_total{code="4008", ` + sel + "}" + ")", m.get(`herald_connections_closed_total{code="4008"}`)},
		} {
			r, err := promQuery(ctx, promBase, c.expr)
			if err != nil {
				return err
			}
			if len(r) != 1 || r[0].value() != c.want {
				return fmt.Errorf("%s = %v, the gateway says %v", c.expr, r, c.want)
			}
		}
		return nil
	})
}

// fanOut: a WebSocket client publishes, then trafficN HTTP publishes reach trafficK
// subscribers of "news"; the counters move by as much.
func (r *trafficRun) fanOut() {
	t, pub := r.t, r.pub
	chat := r.dialOpen("chat", "channels=chat")
	r.chat = chat
	chat.send(websocket.TextMessage, []byte(`{"op":"publish","channel":"chat","data":{"hello":"world"},"ref":"p1"}`))
	for got := map[string]bool{}; !got["ack"] || !got["message"]; {
		f := chat.read()
		got[f.Op] = true
	}
	var news []*gatewayClient
	defer func() { r.news = news }()
	for i := range trafficK {
		news = append(news, r.dialOpen(fmt.Sprintf("news-%d", i), "channels=news"))
	}
	// The chat's frames are counted a moment after the client reads them: let the byte
	// counter settle before taking the baseline.
	m0 := r.mustScrape()
	for settled := time.Now().Add(5 * time.Second); time.Now().Before(settled); {
		time.Sleep(50 * time.Millisecond)
		m := r.mustScrape()
		if m.get("herald_bytes_written_total") == m0.get("herald_bytes_written_total") {
			break
		}
		m0 = m
	}
	for i := range trafficN {
		pub.publish("news", map[string]any{"n": i, "text": strings.Repeat("x", 10*i)})
	}
	wire := 0
	for _, c := range news {
		for i := range trafficN {
			p := c.readRaw()
			var f wsFrame
			if err := json.Unmarshal(p, &f); err != nil || f.Op != "message" || f.Channel != "news" {
				t.Fatalf("client %s: frame %d %s, want a news message", c.name, i, p)
			}
			wire += wireSize(len(p))
		}
	}
	r.settle("herald_messages_delivered_total", m0.get("herald_messages_delivered_total")+trafficN*trafficK)
	m1 := r.mustScrape()
	for _, c := range []struct {
		series string
		want   float64
	}{
		{`herald_messages_received_total{source="http"}`, trafficN},
		{`herald_messages_published_total{source="http"}`, trafficN},
		{"herald_messages_delivered_total", trafficN * trafficK},
		{"herald_delivery_latency_seconds_count", trafficN * trafficK},
		{"herald_bytes_written_total", float64(wire)},
	} {
		if got := m1.get(c.series) - m0.get(c.series); got != c.want {
			t.Errorf("after %d publishes to %d subscribers: %s moved by %v, want %v", trafficN, trafficK, c.series, got, c.want)
		}
	}
	for _, c := range []struct {
		series string
		want   float64
	}{
		{`herald_messages_published_total{source="ws"}`, 1},
		{`herald_messages_received_total{source="ws"}`, 1},
		{"herald_connections", float64(r.open)},
		{"herald_subscriptions", trafficK + 1},
		{"herald_channels", 2},
		{"herald_connections_accepted_total", float64(r.open)},
		{"herald_write_queue_bytes", 0},
		{"herald_write_queue_messages", 0},
	} {
		if got := m1.get(c.series); got != c.want {
			t.Errorf("%s = %v, want %v", c.series, got, c.want)
		}
	}
}

// handshakesAndCloses: refusals, bad frames, close codes and resume requests are counted.
func (r *trafficRun) handshakesAndCloses() {
	t := r.t
	m2 := r.mustScrape()
	r.refuse("channels=bad%20channel")
	r.refuse("since=yesterday")
	r.plainGet()
	r.badFrames()
	// Resume requests: one from within the log, one from beyond its end (a reset).
	var answer string
	r.resumer, answer, _ = r.resumeDial("resume", "channels=resume&since=0")
	if answer != "resumed" {
		t.Errorf("client resume: %s, want resumed", answer)
	}
	r.resetter, answer, _ = r.resumeDial("reset", "channels=resume&since=1000000000000")
	if answer != "reset" {
		t.Errorf("client reset: %s, want reset", answer)
	}
	r.settle(`herald_connections_closed_total{code="1000"}`, m2.get(`herald_connections_closed_total{code="1000"}`)+1)
	r.settle(`herald_connections_closed_total{code="1007"}`, m2.get(`herald_connections_closed_total{code="1007"}`)+1)
	m3 := r.mustScrape()
	for _, c := range []struct {
		series string
		want   float64
	}{
		{`herald_handshakes_refused_total{reason="bad_query"}`, 2},
		{`herald_handshakes_refused_total{reason="bad_handshake"}`, 1},
		{`herald_client_errors_total{code="bad_request"}`, 1},
		{`herald_client_errors_total{code="unknown_op"}`, 1},
		{`herald_connections_closed_total{code="1003"}`, 1},
		{`herald_connections_closed_total{code="1007"}`, 1},
		{`herald_connections_closed_total{code="1000"}`, 1},
		{"herald_connections_accepted_total", 5},
		{`herald_resume_requests_total{result="resumed"}`, 1},
		{`herald_resume_requests_total{result="reset"}`, 1},
	} {
		if got := m3.get(c.series) - m2.get(c.series); got != c.want {
			t.Errorf("%s moved by %v, want %v", c.series, got, c.want)
		}
	}
	if got := m3.get("herald_connections"); got != float64(r.open) {
		t.Errorf("herald_connections = %v, want %v", got, r.open)
	}
}

// backpressure: a client that does not read backs its write queue up past 80% of its
// cap: Prometheus sees it, and HeraldWriteQueueNearCap is pending for the gateway (it
// fires after its "for"). Then the client reads everything and the queue empties.
func (r *trafficRun) backpressure() {
	t, ctx, pub, promBase, gwAddr, wsBase := r.t, r.ctx, r.pub, r.promBase, r.gwAddr, r.wsBase
	mid := strings.Repeat("b", 16<<10)
	r.open++
	backlog := dialBuffered(t, ctx, wsBase, "backlog", "channels=backlog", 4096)
	sent := 0
	var queued metrics
	for queued.get("herald_write_queue_bytes") <= 0.8*trafficQueueCap {
		if sent == 200 {
			t.Fatalf("%d messages of %d bytes to a client that does not read, and its write queue holds %v bytes",
				sent, len(mid), queued.get("herald_write_queue_bytes"))
		}
		pub.publish("backlog", mid)
		sent++
		queued = r.mustScrape()
	}
	if q, mx := queued.get("herald_write_queue_bytes"), queued.get("herald_write_queue_max_bytes"); q != mx || q >= trafficQueueCap {
		t.Errorf("one backed-up client: queue bytes %v, fullest %v: want equal, and under the %d-byte cap", q, mx, trafficQueueCap)
	}
	if q, mx := queued.get("herald_write_queue_messages"), queued.get("herald_write_queue_max_messages"); q != mx || q < 2 {
		t.Errorf("one backed-up client: queue messages %v, fullest %v: want equal, 2 or more", q, mx)
	}
	if c := queued.get("herald_write_queue_cap_bytes"); c != trafficQueueCap {
		t.Errorf("herald_write_queue_cap_bytes = %v, want the configured %d", c, trafficQueueCap)
	}
	t.Logf("write queue after %d messages of %d bytes to a client that does not read: %v bytes, %v messages",
		sent, len(mid), queued.get("herald_write_queue_bytes"), queued.get("herald_write_queue_messages"))
	waitFor(t, ctx, 10*time.Second, "HeraldWriteQueueNearCap pending for the backed-up queue", func() error {
		r, err := promQuery(ctx, promBase, fmt.Sprintf(`ALERTS{alertname="HeraldWriteQueueNearCap", instance=%q}`, gwAddr))
		if err == nil && len(r) == 0 {
			err = errors.New("no such alert")
		}
		return err
	})
	for i := range sent {
		if f := backlog.read(); f.Op != "message" || f.Channel != "backlog" {
			t.Fatalf("backlog client: frame %d %+v, want a backlog message", i, f)
		}
	}
	waitFor(t, ctx, 5*time.Second, "write queues drained", func() error {
		m := r.mustScrape()
		for _, s := range []string{"herald_write_queue_bytes", "herald_write_queue_messages",
			"herald_write_queue_max_bytes", "herald_write_queue_max_messages"} {
			if v := m.get(s); v != 0 {
				return fmt.Errorf("%s = %v, want 0", s, v)
			}
		}
		return nil
	})
}

// slowConsumer: a client that never reads overflows its queue (trafficQueueCap) and is
// closed with 4008.
func (r *trafficRun) slowConsumer() {
	t, ctx, pub, wsBase := r.t, r.ctx, r.pub, r.wsBase
	big := strings.Repeat("b", 60<<10)
	m4 := r.mustScrape()
	firehose := dial(t, ctx, wsBase, "firehose", "channels=firehose")
	sent := 0
	for ; r.mustScrape().get("herald_slow_consumers_total") == m4.get("herald_slow_consumers_total"); sent++ {
		if sent == 250 {
			t.Fatalf("%d messages of %d bytes to a client that does not read, and it is not closed as slow", sent, len(big))
		}
		pub.publish("firehose", big)
	}
	t.Logf("slow consumer closed after %d messages of %d bytes", sent, len(big))
	// Read what the socket held; the gateway's close frame follows.
	if code := firehose.closedWith(); code != 4008 {
		t.Errorf("slow consumer closed with %d, want 4008", code)
	}
	r.settle(`herald_connections_closed_total{code="4008"}`, m4.get(`herald_connections_closed_total{code="4008"}`)+1)
	m5 := r.mustScrape()
	r.m5 = m5
	if got := m5.get(`herald_messages_dropped_total{reason="slow_consumer"}`) - m4.get(`herald_messages_dropped_total{reason="slow_consumer"}`); got < 1 {
		t.Errorf(`herald_messages_dropped_total{reason="slow_consumer"} moved by %v, want 1 or more`, got)
	}
}

// secondRound: after Prometheus has scraped the first round, more of the same, so that
// rates over series the first round created are not zero; and a replay of two messages.
func (r *trafficRun) secondRound() {
	t, pub := r.t, r.pub
	r.waitScraped()
	r.refuse("channels=bad%20channel")
	r.plainGet()
	r.badFrames()
	// Two messages on "resume", which its two live subscribers get; then a client that
	// resumes from offset 0 gets them replayed.
	for i := range 2 {
		pub.publish("resume", map[string]int{"resume": i})
	}
	for _, c := range []*gatewayClient{r.resumer, r.resetter} {
		for range 2 {
			if f := c.read(); f.Op != "message" || f.Channel != "resume" {
				t.Fatalf("client %s: %+v, want a resume message", c.name, f)
			}
		}
	}
	if _, answer, replayed := r.resumeDial("resume-2", "channels=resume&since=0"); answer != "resumed" || replayed != 2 {
		t.Errorf("client resume-2: %d messages replayed, then %s; want 2, then resumed", replayed, answer)
	}
	for i := range 5 {
		pub.publish("news", map[string]int{"again": i})
	}
	r.chat.send(websocket.TextMessage, []byte(`{"op":"publish","channel":"chat","data":{"hello":"again"},"ref":"p2"}`))
	for _, c := range r.news {
		for range 5 {
			c.read()
		}
	}
	r.chat.read() // ack and message, in either order
	r.chat.read()
	// Prometheus sees the gateway as it is now, counters and gauges alike.
	r.settle("herald_messages_delivered_total", r.m5.get("herald_messages_delivered_total")+5*trafficK+1+2*2+2)
	if got := r.mustScrape().get("herald_replayed_messages_total") - r.m5.get("herald_replayed_messages_total"); got != 2 {
		t.Errorf("herald_replayed_messages_total moved by %v, want 2", got)
	}
}

// presenceAndCompression: a user on a presence channel who watches its events, over a
// connection that negotiated permessage-deflate, gets a compressed message.
func (r *trafficRun) presenceAndCompression() {
	t, ctx, pub, wsBase := r.t, r.ctx, r.pub, r.wsBase
	r.open++
	zd := websocket.Dialer{HandshakeTimeout: 5 * time.Second, EnableCompression: true}
	zws, _, err := zd.DialContext(ctx, wsBase+"/ws?user=pat", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = zws.Close() })
	present := &gatewayClient{t: t, ws: zws, name: "present"}
	if f := present.read(); f.Op != "welcome" {
		t.Fatalf("present: %+v, want welcome", f)
	}
	present.send(websocket.TextMessage, []byte(`{"op":"subscribe","channel":"presence:room","presence":true,"ref":"s"}`))
	if f := present.read(); f.Op != "subscribed" {
		t.Fatalf("present: %+v, want subscribed", f)
	}
	if f := present.read(); f.Op != "join" {
		t.Fatalf("present: %+v, want its own join", f)
	}
	mz := r.mustScrape()
	pub.publish("presence:room", strings.Repeat("compressible ", 100))
	if f := present.read(); f.Op != "message" {
		t.Fatalf("present: %+v, want the message", f)
	}
	r.settle("herald_compressed_frames_total", mz.get("herald_compressed_frames_total")+1)
	waitFor(t, ctx, 5*time.Second, "presence sent a snapshot", func() error {
		m := r.mustScrape()
		if m.get(`herald_presence_entries{kind="channel"}`) != 1 || m.get("herald_presence_snapshot_bytes") == 0 {
			return fmt.Errorf("entries %v, snapshot %v bytes", m.get(`herald_presence_entries{kind="channel"}`), m.get("herald_presence_snapshot_bytes"))
		}
		return nil
	})
}

// prometheusSeesState: Prometheus has the gateway as it is now, counters and gauges alike.
func (r *trafficRun) prometheusSeesState() {
	t, ctx, promBase, began := r.t, r.ctx, r.promBase, r.began
	r.waitScraped()
	final := r.mustScrape()
	r.final = final
	if got := final.get("herald_connections"); got != float64(r.open) {
		t.Errorf("herald_connections = %v, want %v", got, r.open)
	}
	for _, c := range []struct {
		expr string
		want float64
	}{
		{fmt.Sprintf(`sum(herald_connections{job=%q})`, gatewayJob), float64(r.open)},
		{fmt.Sprintf(`sum(herald_handshakes_refused_total{job=%q, reason="bad_query"})`, gatewayJob), 3},
		{fmt.Sprintf(`sum(herald_messages_published_total{job=%q, source="ws"})`, gatewayJob), 2},
		{fmt.Sprintf(`sum(herald_slow_consumers_total{job=%q})`, gatewayJob), final.get("herald_slow_consumers_total")},
		{fmt.Sprintf(`sum(herald_messages_received_total{job=%q})`, gatewayJob), final.sum("herald_messages_received_total")},
		{fmt.Sprintf(`sum(herald_resume_requests_total{job=%q, result="resumed"})`, gatewayJob), 2},
	} {
		r, err := promQuery(ctx, promBase, c.expr)
		if err != nil || len(r) != 1 || r[0].value() != c.want {
			t.Errorf("Prometheus: %s = %v (%v), want %v", c.expr, r, err, c.want)
		}
	}
	t.Logf("traffic done after %v", time.Since(began).Round(time.Millisecond))
}

// templateVariables: the template variables' queries find the gateway.
func (r *trafficRun) templateVariables() {
	t, ctx, promBase, gwAddr := r.t, r.ctx, r.promBase, r.gwAddr
	for name, match := range map[string]string{
		"job":      "herald_connections",
		"instance": fmt.Sprintf(`herald_connections{job=~%q}`, gatewayJob),
	} {
		var values []string
		if err := promGet(ctx, promBase, "/api/v1/label/"+name+"/values", url.Values{"match[]": {match}}, &values); err != nil {
			t.Errorf("variable %s: %v", name, err)
		}
		want := map[string]string{"job": gatewayJob, "instance": gwAddr}[name]
		if !slices.Contains(values, want) {
			t.Errorf("variable %s: label_values(%s, %s) = %v, want %s among them", name, match, name, values, want)
		}
	}
}

// dashboardQueries: every dashboard expression, with the variables set to this gateway,
// has data.
func (r *trafficRun) dashboardQueries() {
	t, ctx, promBase, gwAddr := r.t, r.ctx, r.promBase, r.gwAddr
	subst := strings.NewReplacer("$job", gatewayJob, "$instance", gwAddr,
		"$__rate_interval", "1m", "$__interval", "1m", "$__range", "5m")
	var empty []string
	for _, d := range loadDashboards(t) {
		for _, p := range d.queryPanels() {
			for _, tg := range p.Targets {
				if brokerExpr(tg.Expr) {
					continue // no broker is scraped here: cluster_test.go checks these
				}
				expr := subst.Replace(tg.Expr)
				where := fmt.Sprintf("%s / %s / %s", d.Title, p.Title, tg.RefID)
				r, err := promQuery(ctx, promBase, expr)
				if err != nil {
					t.Errorf("%s: %s: %v", where, expr, err)
					continue
				}
				var vals []string
				allNaN := true
				for _, s := range r {
					vals = append(vals, s.String())
					allNaN = allNaN && math.IsNaN(s.value())
				}
				t.Logf("PANEL %s\n    %s\n    => %s", where, expr, strings.Join(vals, "; "))
				if len(r) == 0 || allNaN {
					empty = append(empty, where+": "+expr)
				}
			}
		}
	}
	if len(empty) > 0 {
		t.Errorf("%d panel queries return no data:\n  %s", len(empty), strings.Join(empty, "\n  "))
	}
}

// everyMetricShown: every herald_ metric the gateway exports is on a dashboard.
func (r *trafficRun) everyMetricShown() {
	t := r.t
	var shown strings.Builder
	for _, d := range loadDashboards(t) {
		for _, p := range d.queryPanels() {
			for _, tg := range p.Targets {
				shown.WriteString(tg.Expr + "\n")
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(r.final.families)) {
		if strings.HasPrefix(name, "herald_") && !regexp.MustCompile(`\b`+name+`(_bucket|_count|_sum)?\{`).MatchString(shown.String()) {
			t.Errorf("the gateway exports %s, and no dashboard panel shows it", name)
		}
	}
}

// alertRules: every alert rule is loaded by Prometheus, evaluated without error, and its
// expression answers a query without error (a condition: it may well be empty).
func (r *trafficRun) alertRules() {
	t, ctx, promBase := r.t, r.ctx, r.promBase
	var groups ruleGroups
	readYAML(t, "grafana/prometheus/alerts.yml", &groups)
	var wantRules []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			wantRules = append(wantRules, r.Alert)
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Query     string `json:"query"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
				State     string `json:"state"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := promGet(ctx, promBase, "/api/v1/rules", url.Values{"type": {"alert"}}, &rules); err != nil {
		t.Fatal(err)
	}
	var loaded []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			loaded = append(loaded, r.Name)
			if r.Health != "ok" || r.LastError != "" {
				t.Errorf("rule %s: health %q, last error %q", r.Name, r.Health, r.LastError)
			}
			res, err := promQuery(ctx, promBase, r.Query)
			if err != nil {
				t.Errorf("rule %s: %s: %v", r.Name, r.Query, err)
				continue
			}
			var vals []string
			for _, s := range res {
				vals = append(vals, s.String())
			}
			t.Logf("RULE %s (%s)\n    %s\n    => %s", r.Name, r.State, strings.Join(strings.Fields(r.Query), " "), strings.Join(vals, "; "))
		}
	}
	slices.Sort(loaded)
	slices.Sort(wantRules)
	if !slices.Equal(loaded, wantRules) {
		t.Errorf("Prometheus loaded rules %v, want %v", loaded, wantRules)
	}
}

// brokerHeadersAlert: HeraldBrokerDropsArrayHeaders fires for this gateway exactly where
// its probe found that the broker drops array headers in streams (the test's RabbitMQ
// 3.10 does; a broker that keeps them must not alert), as the gateway itself reports it.
func (r *trafficRun) brokerHeadersAlert() {
	t, ctx, promBase, gwAddr := r.t, r.ctx, r.promBase, r.gwAddr
	kept := r.final.get(`herald_bus_headers_kept{kind="array"}`)
	if _, ok := r.final.values[`herald_bus_headers_kept{kind="array"}`]; !ok {
		t.Errorf(`the gateway exports no herald_bus_headers_kept{kind="array"}: its header probe has not answered`)
	}
	waitFor(t, ctx, 10*time.Second, "HeraldBrokerDropsArrayHeaders as the gateway's probe says", func() error {
		var alerts struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		if err := promGet(ctx, promBase, "/api/v1/alerts", nil, &alerts); err != nil {
			return err
		}
		firing := false
		for _, a := range alerts.Alerts {
			if a.Labels["alertname"] == "HeraldBrokerDropsArrayHeaders" && a.Labels["instance"] == gwAddr {
				firing = a.State == "firing"
			}
		}
		if firing != (kept == 0) {
			return fmt.Errorf("alert firing %v, with herald_bus_headers_kept{kind=\"array\"} = %v", firing, kept)
		}
		t.Logf("herald_bus_headers_kept{kind=\"array\"} = %v; HeraldBrokerDropsArrayHeaders firing: %v", kept, firing)
		return nil
	})
}

// gatewayDown: the gateway stops; Prometheus finds it down, and HeraldGatewayDown is
// pending for it (it fires after its "for").
func (r *trafficRun) gatewayDown() {
	t, ctx, promBase, gwAddr := r.t, r.ctx, r.promBase, r.gwAddr
	r.gw.stop(t)
	waitFor(t, ctx, 15*time.Second, "HeraldGatewayDown pending for the stopped gateway", func() error {
		var alerts struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		if err := promGet(ctx, promBase, "/api/v1/alerts", nil, &alerts); err != nil {
			return err
		}
		for _, a := range alerts.Alerts {
			if a.Labels["alertname"] == "HeraldGatewayDown" && a.Labels["instance"] == gwAddr {
				t.Logf("alert %v: %s", a.Labels, a.State)
				return nil
			}
		}
		return fmt.Errorf("alerts: %+v", alerts.Alerts)
	})
}

// TestLoadBalancer runs grafana/compose/nginx.conf in a real nginx in front of two real
// gateways on RabbitMQ, as compose.yaml does, with the service names swapped for local
// addresses: WebSocket clients through it reach both gateways (a browser's Origin
// included), and a publish through it reaches the clients of both. The gateways trust the
// load balancer as compose.yaml has them do, so their per-address limits count each
// client by its own address (clients here connect from addresses of their own in
// 127.0.0.0/8), and a client's own X-Forwarded-For cannot pass for another.
func TestLoadBalancer(t *testing.T) {
	nginx := tool(t, "nginx", "Debian package nginx")
	amqpURL := amqptest.URL(t)
	exchange, stream := amqptest.Names(t, amqpURL)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	addrs := []string{freeAddr(t), freeAddr(t)}
	lbAddr := freeAddr(t)
	conf, err := os.ReadFile(filepath.Join(root(t), "grafana", "compose", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	site := strings.NewReplacer("server gateway-1:8080", "server "+addrs[0], "server gateway-2:8080", "server "+addrs[1],
		"listen 8080;", "listen "+lbAddr+";").Replace(string(conf))
	if strings.Contains(site, "gateway-") || !strings.Contains(site, lbAddr) {
		t.Fatalf("nginx.conf: could not point it at the test gateways:\n%s", site)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "herald.conf"), []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	// The parts of nginx's own main config that the image provides, in dir.
	main := fmt.Sprintf(`daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 256; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    include %[1]s/herald.conf;
}
`, dir)
	mainConf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(mainConf, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(nginx, "-t", "-p", dir, "-c", mainConf).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}

	// compose.yaml trusts the load balancer's address; here nginx connects to the
	// gateways from 127.0.0.1. One connection per client address per gateway.
	if env := loadCompose(t).Services["gateway-1"].Environment["HERALD_TRUSTED_PROXIES"]; env == nil || *env == "" {
		t.Fatal("compose.yaml: the gateways trust no proxy (HERALD_TRUSTED_PROXIES)")
	}
	nodes := []string{"lb-test-1", "lb-test-2"}
	for i, addr := range addrs {
		startGateway(t, ctx, addr, nodes[i], amqpURL, exchange, stream,
			"--trusted-proxies", "127.0.0.1", "--max-connections-per-ip", "1")
	}
	wsBase := "ws://" + lbAddr
	// dialFrom opens a WebSocket through the load balancer from the local address src.
	dialFrom := func(src string, h http.Header) (*websocket.Conn, *http.Response, error) {
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: []string{"herald.v1"},
			NetDialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext}
		ws, resp, err := d.DialContext(ctx, wsBase+"/ws?channels=lb", h)
		if err == nil {
			t.Cleanup(func() { _ = ws.Close() })
		}
		return ws, resp, err
	}
	lb := start(t, "nginx", filepath.Join(dir, "nginx.out"), nginx, "-p", dir, "-c", mainConf)
	base := "http://" + lbAddr
	waitFor(t, ctx, 10*time.Second, "nginx answering", func() error {
		if lb.exited() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited:\n%s", b)
		}
		resp, err := http.Get(base + "/lb-health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error.log:\n%s", b)
		}
	})

	// Clients as a browser on the load balancer's page connects: with its Origin. Each
	// reads its welcome frame, which names its gateway; least_conn spreads them.
	// Each from an address of its own: with one connection per address per gateway, all
	// six get in only where the gateways see the clients' addresses, not nginx's.
	const clients = 6
	seen := map[string]int{}
	var conns []*websocket.Conn
	for i := range clients {
		h := http.Header{"Origin": {base}}
		ws, resp, err := dialFrom(fmt.Sprintf("127.0.0.%d", 10+i), h)
		if err != nil {
			t.Fatalf("client %d through the load balancer: %v (HTTP %d): do the gateways see the clients' own addresses?", i, err, statusOf(resp))
		}
		if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "herald.v1" {
			t.Errorf("client %d: subprotocol %q, want herald.v1", i, got)
		}
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		var f wsFrame
		if err := ws.ReadJSON(&f); err != nil || f.Op != "welcome" {
			t.Fatalf("client %d: first frame %+v (%v), want welcome", i, f, err)
		}
		seen[f.Node]++
		conns = append(conns, ws)
	}
	for _, node := range nodes {
		if seen[node] == 0 {
			t.Errorf("no client reached %s through the load balancer: %v", node, seen)
		}
	}

	// The HTTP API through the load balancer; every client, on either gateway, gets it.
	for i := range 3 {
		publisher{t: t, ctx: ctx, base: base, key: testAPIKey}.publish("lb", map[string]int{"n": i})
	}
	for i, ws := range conns {
		for n := range 3 {
			_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			var f wsFrame
			if err := ws.ReadJSON(&f); err != nil || f.Op != "message" || f.Channel != "lb" {
				t.Fatalf("client %d: message %d: %+v (%v), want an lb message", i, n, f, err)
			}
			if want := fmt.Sprintf(`{"n":%d}`, n); string(f.Data) != want {
				t.Errorf("client %d: message %d data %s, want %s", i, n, f.Data, want)
			}
		}
	}
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /readyz through the load balancer: %s", resp.Status)
	}
	t.Logf("clients per gateway through the load balancer: %v", seen)

	// The limits still apply, per client: one address gets one connection per gateway,
	// then 429.
	h := http.Header{"Origin": {base}}
	got, refused := 0, 0
	for attempt := 0; got < 2; attempt++ {
		if attempt == 8 {
			t.Fatalf("8 attempts from 127.0.0.2 gave %d connections and %d refusals, want one on each gateway", got, refused)
		}
		_, resp, err := dialFrom("127.0.0.2", h)
		switch {
		case err == nil:
			got++
		case statusOf(resp) == http.StatusTooManyRequests:
			refused++
		default:
			t.Fatalf("from 127.0.0.2: %v (HTTP %d), want upgraded or 429", err, statusOf(resp))
		}
	}
	for range 2 { // 127.0.0.2 holds its connection on each gateway now
		if _, resp, err := dialFrom("127.0.0.2", h); err == nil || statusOf(resp) != http.StatusTooManyRequests {
			t.Errorf("a third connection from 127.0.0.2: %v (HTTP %d), want 429", err, statusOf(resp))
		}
	}
	// A client that names 127.0.0.2 in its own X-Forwarded-For is counted as itself
	// (nginx appends the address it sees, and only nginx is trusted).
	spoof := http.Header{"Origin": {base}, "X-Forwarded-For": {"127.0.0.2"}}
	if _, resp, err := dialFrom("127.0.0.3", spoof); err != nil {
		t.Errorf("from 127.0.0.3 claiming 127.0.0.2: %v (HTTP %d), want upgraded: counted as 127.0.0.3", err, statusOf(resp))
	}
}

func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}

// brokerExpr reports whether a dashboard expression reads the broker's own metrics
// ($broker_job): a gateway alone does not give them.
func brokerExpr(expr string) bool { return strings.Contains(expr, `$broker_job`) }
