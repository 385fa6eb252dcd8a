package grafana_test

import (
	"context"
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/producer/amqptest"
)

// TestBrokerRowOnARealCluster: the dashboards' broker and cluster row and the rabbitmq
// alert rules, on a real Prometheus that scrapes the three nodes of the private test
// cluster (their rabbitmq_prometheus plugin) and a gateway on that cluster. Every query of
// the row answers with data, and the figures are the cluster's: three nodes up, each
// connected to the two others, no alarm, the gateway's stream retained, its links on
// nodes of the list, canaries going round.
func TestBrokerRowOnARealCluster(t *testing.T) {
	promBin := tool(t, "prometheus", "Debian package prometheus")
	c := amqptest.Cluster(t)
	if len(c.MetricsURLs) != 3 {
		t.Fatalf("the test cluster lists %d metrics endpoints, want 3", len(c.MetricsURLs))
	}
	exchange, stream := c.Names(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	repo := root(t)
	go buildGateway()

	const brokerJob = "rabbitmq"
	var nodes []string
	for _, m := range c.MetricsURLs {
		u, err := url.Parse(m)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, u.Host)
	}
	gwAddr, promAddr := freeAddr(t), freeAddr(t)
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
  - job_name: %q
    static_configs:
      - targets: [%q, %q, %q]
`, filepath.Join(repo, "grafana", "prometheus", "alerts.yml"), gatewayJob, gwAddr, brokerJob, nodes[0], nodes[1], nodes[2])
	if err := os.WriteFile(promCfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := start(t, "prometheus", filepath.Join(dir, "prometheus.log"), promBin,
		"--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+promAddr)
	promBase := "http://" + promAddr

	startGateway(t, ctx, gwAddr, "grafana-cluster", c.URLList(), exchange, stream, "--canary-interval", "1s", "--canary-timeout", "10s")
	pub := publisher{t: t, ctx: ctx, base: "http://" + gwAddr, key: testAPIKey}
	for i := range 20 {
		pub.publish("cluster", i)
	}

	// The row's queries, with the variables set to this gateway, this cluster and this
	// stream.
	subst := strings.NewReplacer("$broker_job", brokerJob, "$job", gatewayJob, "$instance", gwAddr,
		"$__rate_interval", "1m", "$__interval", "1m", "$__range", "5m")
	var row []string // "panel / refId: expr"
	for _, d := range loadDashboards(t) {
		in := false
		for _, p := range d.Panels {
			if p.Type == "row" {
				in = p.Title == "Broker and cluster"
				continue
			}
			if !in {
				continue
			}
			for _, tg := range p.Targets {
				row = append(row, p.Title+" / "+tg.RefID+"\x00"+subst.Replace(tg.Expr))
			}
		}
	}
	if len(row) < 10 {
		t.Fatalf("the broker and cluster row has %d queries, want its panels", len(row))
	}
	// Every query answers with data once Prometheus has scraped a while (the round trip
	// and the stream's look need their first samples).
	waitFor(t, ctx, 60*time.Second, "every query of the broker row answering", func() error {
		if prom.exited() {
			t.Fatal("prometheus exited")
		}
		var empty []string
		for _, q := range row {
			where, expr, _ := strings.Cut(q, "\x00")
			r, err := promQuery(ctx, promBase, expr)
			if err != nil {
				t.Fatalf("%s: %s: %v", where, expr, err)
			}
			allNaN := true
			for _, s := range r {
				allNaN = allNaN && math.IsNaN(s.value())
			}
			if len(r) == 0 || allNaN {
				empty = append(empty, where)
			}
		}
		if len(empty) > 0 {
			return fmt.Errorf("no data yet: %s", strings.Join(empty, ", "))
		}
		return nil
	})
	for _, q := range row {
		where, expr, _ := strings.Cut(q, "\x00")
		r, _ := promQuery(ctx, promBase, expr)
		var vals []string
		for _, s := range r {
			vals = append(vals, s.String())
		}
		t.Logf("PANEL %s\n    %s\n    => %s", where, expr, strings.Join(vals, "; "))
	}

	// What they say is the cluster's.
	for _, c := range []struct {
		expr      string
		want      func(float64) bool
		wantWords string
	}{
		{fmt.Sprintf(`count(up{job=%q} == 1)`, brokerJob), func(v float64) bool { return v == 3 }, "3 nodes up"},
		{fmt.Sprintf(`min(count by (instance) (erlang_vm_dist_node_state{job=%q} == 3))`, brokerJob), func(v float64) bool { return v == 2 }, "each node connected to the 2 others"},
		{fmt.Sprintf(`sum(rabbitmq_alarms_memory_used_watermark{job=%q}) + sum(rabbitmq_alarms_free_disk_space_watermark{job=%q})`, brokerJob, brokerJob), func(v float64) bool { return v == 0 }, "no alarm"},
		{fmt.Sprintf(`max(herald_bus_stream_head_offset{job=%q}) - max(herald_bus_stream_oldest_offset{job=%q})`, gatewayJob, gatewayJob), func(v float64) bool { return v >= 0 }, "the stream's retained offsets"},
		{fmt.Sprintf(`min(herald_bus_link_node{job=%q, link=~"publisher|consumer"})`, gatewayJob), func(v float64) bool { return v == 1 }, "the publisher and consumer on node 1, the first listed"},
		{fmt.Sprintf(`sum(herald_bus_roundtrip_seconds_count{job=%q})`, gatewayJob), func(v float64) bool { return v >= 1 }, "canaries back"},
		{fmt.Sprintf(`time() - max(herald_bus_stream_oldest_timestamp_seconds{job=%q} > 0)`, gatewayJob), func(v float64) bool { return v > 0 && v < 600 }, "the stream reaching back to its first message, minutes at most"},
	} {
		r, err := promQuery(ctx, promBase, c.expr)
		if err != nil || len(r) != 1 || !c.want(r[0].value()) {
			t.Errorf("%s = %v (%v), want %s", c.expr, r, err, c.wantWords)
		}
	}

	// The broker's alert rules are loaded and evaluate without error on real series; none
	// fires on a whole cluster.
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
				State     string `json:"state"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := promGet(ctx, promBase, "/api/v1/rules", url.Values{"type": {"alert"}}, &rules); err != nil {
		t.Fatal(err)
	}
	broker := 0
	for _, g := range rules.Groups {
		if g.Name != "rabbitmq-cluster" {
			continue
		}
		for _, r := range g.Rules {
			broker++
			if r.Health != "ok" || r.LastError != "" || r.State != "inactive" {
				t.Errorf("rule %s: health %q, error %q, state %q; want ok and inactive on a whole cluster", r.Name, r.Health, r.LastError, r.State)
			}
		}
	}
	if broker < 5 {
		t.Errorf("%d rules in the rabbitmq-cluster group, want the broker's alerts", broker)
	}
}
