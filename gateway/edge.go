package gateway

import (
	"crypto"

	"github.com/heraldgw/herald/gateway/internal/edge"
)

// The edge of the gateway (who may connect, from where, how often) is package
// internal/edge; these are the names of it that a program configuring a gateway needs.

// Signing algorithms a gateway can pin (AuthConfig.Algorithm).
const (
	AlgHS256 = edge.AlgHS256
	AlgRS256 = edge.AlgRS256
	AlgES256 = edge.AlgES256
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
