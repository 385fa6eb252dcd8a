package gateway

import (
	"crypto"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/gateway/internal/edge"
	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/gateway/internal/pending"
	"github.com/heraldgw/herald/gateway/internal/presence"
	"github.com/heraldgw/herald/gateway/internal/wsframe"
)

// The gateway's mechanisms live in its internal packages; these are the names of theirs
// that a program configuring and running a gateway needs, so that package gateway is its
// whole API.

// Metrics is the gateway's Prometheus instrumentation (counters and histograms). Its
// methods may be called on a nil *Metrics, which counts nothing.
type Metrics = metrics.Metrics

// NewMetrics creates the gateway's counters and registers them with reg. The gauges that
// read live state (connections, write queues, subscriptions, bus, presence) are
// registered by NewServer, which knows that state.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	return metrics.New(reg, metrics.Series{
		CloseCodes: []int{1000, 1001, 1003, 1005, 1006, 1007, 1008, 1009, 1011, CloseSlowConsumer, CloseRateLimited},
		Refusals: []string{"draining", "starting", "bad_query", "bad_handshake", "origin", "rate_limited",
			"too_many_connections", "too_many_connections_per_ip", CodeForbidden},
		ClientErrors:    []string{CodeBadRequest, CodeUnknownOp, CodeForbidden, CodeRateLimited, CodeTooLarge, CodeUnavailable},
		Limits:          []string{pending.LimitPending, pending.LimitPendingPerAddr, pending.LimitIdle, wsframe.LimitFrameRate, wsframe.LimitFragments},
		PresenceUpdates: presence.UpdateTypes(),
	})
}

// Presence knows who is online on the channels that have presence, across every
// gateway, and sends join and leave events; a nil *Presence is presence off. See
// NewPresence.
type Presence = presence.Presence

// PresenceConfig configures presence. Each zero field has the default its comment gives.
type PresenceConfig = presence.Config

// PresenceSender carries this gateway's presence updates to every gateway of the
// cluster; the consumer package's PresenceLink is one, on RabbitMQ.
type PresenceSender = presence.Sender

// NewPresence returns presence with the given configuration; it sends nothing until Run.
func NewPresence(cfg PresenceConfig) *Presence { return presence.New(cfg) }

// ChannelPresence is who is online on a channel, over every gateway: a page of its users.
type ChannelPresence = presence.ChannelPresence

// PresenceUser is one user in a presence answer.
type PresenceUser = presence.PresenceUser

// UserPresence is whether a user is online, over every gateway.
type UserPresence = presence.UserPresence

// Signing algorithms a gateway can pin (AuthConfig.Algorithm).
const (
	AlgHS256 = edge.AlgHS256
	AlgRS256 = edge.AlgRS256
	AlgES256 = edge.AlgES256
)

// The defaults of the zero fields of Limits, AuthConfig, JWKSConfig and PresenceConfig.
const (
	DefaultMaxConnections      = edge.DefaultMaxConnections
	DefaultMaxConnectionsPerIP = edge.DefaultMaxConnectionsPerIP
	DefaultHandshakeRate       = edge.DefaultHandshakeRate
	DefaultHandshakeBurst      = edge.DefaultHandshakeBurst
	DefaultMessageRate         = edge.DefaultMessageRate
	DefaultMessageBurst        = edge.DefaultMessageBurst
	DefaultMaxViolations       = edge.DefaultMaxViolations
	DefaultMaxSubscriptions    = edge.DefaultMaxSubscriptions
	DefaultMaxFragments        = edge.DefaultMaxFragments
	DefaultLeeway              = edge.DefaultLeeway
	DefaultJWKSRefresh         = edge.DefaultJWKSRefresh

	DefaultPresenceInterval         = presence.DefaultInterval
	DefaultPresenceSnapshotInterval = presence.DefaultSnapshotInterval
	DefaultPresenceMaxList          = presence.DefaultMaxList
)

// AuthConfig configures how WebSocket clients authenticate and what their tokens permit;
// see edge.AuthConfig for the tokens' claims and the rules of channel patterns.
type AuthConfig = edge.AuthConfig

// Limits bounds what clients may take of a gateway. Each zero field has the default its
// comment gives; a negative one turns that limit off.
type Limits = edge.Limits

// JWKS is a cached JSON Web Key Set that verifies tokens by kid; see NewJWKS.
type JWKS = edge.JWKS

// JWKSConfig configures a JWKS.
type JWKSConfig = edge.JWKSConfig

// NewJWKS returns a key set that fetches from cfg.URL; it holds no keys until the first
// Fetch (Run fetches at once).
func NewJWKS(cfg JWKSConfig) *JWKS { return edge.NewJWKS(cfg) }

// CheckJWKSURL checks a JWKS URL: absolute, with a host, https (or http where allowHTTP).
func CheckJWKSURL(raw string, allowHTTP bool) error { return edge.CheckJWKSURL(raw, allowHTTP) }

// ParsePublicKeyPEM reads an RSA or ECDSA P-256 public key from PEM: a PUBLIC KEY
// (PKIX) block, an RSA PUBLIC KEY (PKCS #1) block or a CERTIFICATE.
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) { return edge.ParsePublicKeyPEM(data) }

// PublicKeyAlgorithm is the signing algorithm a public key verifies: RS256 for an RSA
// key of at least 2048 bits, ES256 for an ECDSA P-256 key; an error for any other.
func PublicKeyAlgorithm(key crypto.PublicKey) (string, error) { return edge.PublicKeyAlgorithm(key) }

// CheckPatterns checks a list of permission patterns (AuthConfig) as NewServer does.
func CheckPatterns(list []string) error { return edge.CheckPatterns(list) }

// CheckAllowedOrigins checks a list of allowed origins (Config.AllowedOrigins) as
// NewServer does.
func CheckAllowedOrigins(allowed []string) error { return edge.CheckAllowedOrigins(allowed) }
