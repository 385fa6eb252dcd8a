// Package grafana holds no Go code. Its folder is Herald's operations kit: Grafana
// provisioning and dashboards, the Prometheus config and alert rules that compose.yaml
// mounts, the RabbitMQ plugin list and the load balancer's config. Its tests check all of
// them, against a real gateway and a real Prometheus.
package grafana
