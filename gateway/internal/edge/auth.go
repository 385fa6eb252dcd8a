package edge

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/heraldgw/herald/gateway/internal/pattern"
	"github.com/heraldgw/herald/producer/message"
)

// Signing algorithms a gateway can pin (AuthConfig.Algorithm).
const (
	AlgHS256 = "HS256"
	AlgRS256 = "RS256"
	AlgES256 = "ES256"
)

// DefaultLeeway is the clock skew allowed on exp and nbf where AuthConfig.Leeway is zero.
const DefaultLeeway = 30 * time.Second

// AuthConfig configures how WebSocket clients authenticate: a JWT at the handshake, from
// the token query parameter or an Authorization: Bearer header, verified with exactly one
// of Secret (HS256), PublicKey (RS256 or ES256) or JWKS (RS256 or ES256, keys by kid).
// With none of them, authentication is off: every client is anonymous and may do
// everything (the embedded-bus demo default).
//
// The token's claims:
//   - sub (required): the user; messages that name users reach only their connections.
//   - exp (required), nbf (optional): checked with Leeway; an open connection is closed
//     with 1008 when its token expires, unless the client sent a fresh one with the
//     refresh op.
//   - aud, iss: checked when Audience, Issuer are set.
//   - channels (optional, array of strings): the channel patterns the token may
//     subscribe to. Absent: DefaultChannels.
//   - publish (optional, array of strings): the channel patterns the token may publish
//     to. Absent: DefaultPublish. Publishing without a channel (to every connection)
//     needs the pattern "*".
//
// A pattern is a channel name, matched exactly, or a prefix ending in "*", which matches
// every channel that starts with the prefix ("user:alice:*", or "*" for all). "{sub}" in a
// pattern stands for the token's sub, e.g. "user:{sub}:*". So that "{sub}" only ever names
// the user's own channels:
//   - a token whose permissions use "{sub}" is refused (401 at the handshake, error
//     forbidden on refresh) unless its sub is 1 to 128 characters of A-Z a-z 0-9 _ -
//     (no separator ':' '/' '.', no pattern character: "alice:inbox" cannot stand in
//     "user:{sub}:*" for a prefix of alice's channels);
//   - in a pattern ending in "*", "{sub}" must be followed by a separator (not
//     "user:{sub}*", which would let alice reach alice2's channels);
//   - a pattern with "{sub}" gives an anonymous client (no sub) nothing.
//
// A pattern that breaks these rules refuses its token; in DefaultChannels or
// DefaultPublish it makes NewServer fail (package pattern).
type AuthConfig struct {
	// Secret is the HS256 shared secret.
	Secret []byte
	// PublicKey verifies RS256 (*rsa.PublicKey) or ES256 (*ecdsa.PublicKey, P-256)
	// tokens; see ParsePublicKeyPEM.
	PublicKey crypto.PublicKey
	// JWKS gives the keys of a JSON Web Key Set by kid; see NewJWKS.
	JWKS *JWKS
	// Algorithm is the only signing algorithm accepted: HS256, RS256 or ES256. Default:
	// HS256 with Secret, the key's algorithm with PublicKey, RS256 with JWKS.
	Algorithm string
	// Audience, when set, must be one of the token's aud values.
	Audience string
	// Issuer, when set, must be the token's iss.
	Issuer string
	// Leeway is the clock skew allowed when checking exp and nbf. Default 30s; negative
	// allows none.
	Leeway time.Duration
	// AllowAnonymous admits clients without a token when a key is configured; they have
	// no user, and DefaultChannels and DefaultPublish as permissions. (With no key
	// configured every client is anonymous, with every permission.)
	AllowAnonymous bool
	// DefaultChannels are the subscribe patterns of a token without a channels claim,
	// and of anonymous clients when AllowAnonymous. Default: none (such a client may
	// subscribe to nothing). Presence follows: a client may ask who is on a channel it
	// may subscribe to.
	DefaultChannels []string
	// DefaultPublish are the publish patterns of a token without a publish claim, and of
	// anonymous clients when AllowAnonymous. Default: none.
	DefaultPublish []string
	// Cookie is the name of a cookie that holds the client's token, for a request that
	// gives none in the query or an Authorization header. It is read only from a request
	// that comes from a trusted origin (Origins.TrustsCookies): a browser sends cookies
	// cross-site too. Default "": no cookie is read.
	Cookie string
}

// Enabled reports whether a key is configured, so that clients must authenticate.
func (a *AuthConfig) Enabled() bool {
	return len(a.Secret) > 0 || a.PublicKey != nil || a.JWKS != nil
}

// ParsePublicKeyPEM reads an RSA or ECDSA P-256 public key from PEM: a PUBLIC KEY
// (PKIX) block, an RSA PUBLIC KEY (PKCS #1) block or a CERTIFICATE.
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("parse public key: no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			key = cert.PublicKey
		}
	default:
		return nil, fmt.Errorf("parse public key: PEM block %q: want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	if _, err := keyAlgorithm(key); err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	return key, nil
}

// PublicKeyAlgorithm is the signing algorithm a public key verifies: RS256 for an RSA
// key of at least 2048 bits, ES256 for an ECDSA P-256 key; an error for any other.
func PublicKeyAlgorithm(key crypto.PublicKey) (string, error) { return keyAlgorithm(key) }

// minRSABits is the smallest RSA key the gateway accepts.
const minRSABits = 2048

// keyAlgorithm is the signing algorithm a public key verifies.
func keyAlgorithm(key any) (string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return "", fmt.Errorf("RSA key of %d bits: want at least %d", k.N.BitLen(), minRSABits)
		}
		return AlgRS256, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", fmt.Errorf("ECDSA key on %s: want P-256 (ES256)", k.Curve.Params().Name)
		}
		return AlgES256, nil
	}
	return "", fmt.Errorf("key of type %T: want RSA or ECDSA P-256", key)
}

// Authenticator verifies the tokens of WebSocket clients. It is immutable after
// NewAuthenticator, so safe for concurrent use.
type Authenticator struct {
	enabled   bool
	anonymous bool // clients without a token are admitted
	alg       string
	leeway    time.Duration
	parser    *jwt.Parser
	keyfunc   jwt.Keyfunc
	defSub    []string
	defPub    []string
	cookie    string // AuthConfig.Cookie
}

// NewAuthenticator returns the Authenticator that cfg describes, or an error that says
// what cfg gets wrong.
func NewAuthenticator(cfg AuthConfig) (*Authenticator, error) {
	a := &Authenticator{enabled: cfg.Enabled(), leeway: cfg.Leeway, cookie: cfg.Cookie}
	if !a.enabled {
		a.anonymous = true
		return a, nil
	}
	n := 0
	for _, set := range []bool{len(cfg.Secret) > 0, cfg.PublicKey != nil, cfg.JWKS != nil} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, errors.New("auth: configure one of a secret, a public key or a JWKS, not several")
	}
	a.anonymous = cfg.AllowAnonymous
	switch {
	case a.leeway == 0:
		a.leeway = DefaultLeeway
	case a.leeway < 0:
		a.leeway = 0
	}
	a.defSub, a.defPub = cfg.DefaultChannels, cfg.DefaultPublish
	for _, list := range [][]string{a.defSub, a.defPub} {
		if err := pattern.Check(list); err != nil {
			return nil, fmt.Errorf("auth: default permissions: %w", err)
		}
	}

	alg := cfg.Algorithm
	switch {
	case len(cfg.Secret) > 0:
		if alg == "" {
			alg = AlgHS256
		}
		if alg != AlgHS256 {
			return nil, fmt.Errorf("auth: a shared secret verifies HS256 only, not %s", alg)
		}
		secret := cfg.Secret
		a.keyfunc = func(*jwt.Token) (any, error) { return secret, nil }
	case cfg.PublicKey != nil:
		keyAlg, err := keyAlgorithm(cfg.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		if alg == "" {
			alg = keyAlg
		}
		if alg != keyAlg {
			return nil, fmt.Errorf("auth: the public key verifies %s, not %s", keyAlg, alg)
		}
		key := cfg.PublicKey
		a.keyfunc = func(*jwt.Token) (any, error) { return key, nil }
	default:
		if alg == "" {
			alg = AlgRS256
		}
		if alg != AlgRS256 && alg != AlgES256 {
			return nil, fmt.Errorf("auth: a JWKS verifies RS256 or ES256, not %s", alg)
		}
		jwks := cfg.JWKS
		a.keyfunc = func(t *jwt.Token) (any, error) {
			kid, _ := t.Header["kid"].(string)
			return jwks.key(kid, alg)
		}
	}
	a.alg = alg
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{alg}),
		jwt.WithLeeway(a.leeway),
		jwt.WithExpirationRequired(),
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	a.parser = jwt.NewParser(opts...)
	return a, nil
}

// claims are the JWT claims the gateway reads.
type claims struct {
	jwt.RegisteredClaims
	Channels *[]string `json:"channels"`
	Publish  *[]string `json:"publish"`
}

// Enabled reports whether clients must authenticate (a key is configured).
func (a *Authenticator) Enabled() bool { return a.enabled }

// Anonymous reports whether clients without a token are admitted.
func (a *Authenticator) Anonymous() bool { return a.anonymous }

// Leeway is the clock skew allowed on a token's exp and nbf: a connection is closed that
// long after its token expires.
func (a *Authenticator) Leeway() time.Duration { return a.leeway }

// Identity is who a connection is and what it may do. It is immutable once made.
type Identity struct {
	User      string
	Expires   time.Time // zero: never (no authentication)
	Subscribe pattern.Set
	Publish   pattern.Set
}

// anonymousIdentity is the identity of a client without a token.
func (a *Authenticator) anonymousIdentity() *Identity {
	if !a.enabled {
		return &Identity{Subscribe: pattern.All(), Publish: pattern.All()}
	}
	return &Identity{Subscribe: pattern.Compile(a.defSub, ""), Publish: pattern.Compile(a.defPub, "")}
}

// TokenError is a refused token: Reason is a short label for metrics (a refusedToken
// constant), Err says why.
type TokenError struct {
	Reason string
	Err    error
}

// Error says why the token was refused.
func (e *TokenError) Error() string { return e.Err.Error() }

// Unwrap is the error that says why.
func (e *TokenError) Unwrap() error { return e.Err }

// Reasons a token is refused (labels of herald_handshakes_refused_total).
const (
	RefusedTokenMissing = "token_missing"
	RefusedTokenExpired = "token_expired"
	RefusedTokenEarly   = "token_not_yet_valid"
	RefusedTokenInvalid = "token_invalid"
)

// Verify checks a token and returns the identity it gives.
func (a *Authenticator) Verify(token string) (*Identity, *TokenError) {
	var c claims
	_, err := a.parser.ParseWithClaims(token, &c, a.keyfunc)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, &TokenError{RefusedTokenExpired, err}
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return nil, &TokenError{RefusedTokenEarly, err}
	case err != nil:
		return nil, &TokenError{RefusedTokenInvalid, err}
	case c.Subject == "":
		return nil, &TokenError{RefusedTokenInvalid, errors.New("token has no sub")}
	case len(c.Subject) > 256:
		return nil, &TokenError{RefusedTokenInvalid, errors.New("token sub is longer than 256 bytes")}
	}
	id := &Identity{User: c.Subject, Expires: c.ExpiresAt.Time}
	sub, pub := a.defSub, a.defPub
	if c.Channels != nil {
		sub = *c.Channels
		if err := pattern.Check(sub); err != nil {
			return nil, &TokenError{RefusedTokenInvalid, fmt.Errorf("channels claim: %w", err)}
		}
	}
	if c.Publish != nil {
		pub = *c.Publish
		if err := pattern.Check(pub); err != nil {
			return nil, &TokenError{RefusedTokenInvalid, fmt.Errorf("publish claim: %w", err)}
		}
	}
	if (pattern.UsesSub(sub) || pattern.UsesSub(pub)) && !pattern.SafeSub(c.Subject) {
		return nil, &TokenError{RefusedTokenInvalid, fmt.Errorf(
			"token sub %q cannot stand for {sub} in a channel pattern: it must be 1 to %d characters of A-Z a-z 0-9 _ - (no separator or pattern character)",
			c.Subject, message.MaxChannelLen)}
	}
	id.Subscribe, id.Publish = pattern.Compile(sub, c.Subject), pattern.Compile(pub, c.Subject)
	return id, nil
}

// Authenticate finds the identity of a connecting client: its token from the token query
// parameter or the Authorization header, else from the cookie (AuthConfig.Cookie) where
// cookies is true (the caller has checked that the request comes from a trusted origin),
// else anonymous where that is allowed.
func (a *Authenticator) Authenticate(r *http.Request, cookies bool) (*Identity, *TokenError) {
	if !a.enabled {
		return a.anonymousIdentity(), nil
	}
	token := r.URL.Query().Get("token")
	if token == "" {
		if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			token = strings.TrimSpace(v)
		}
	}
	if token == "" && cookies && a.cookie != "" {
		if ck, err := r.Cookie(a.cookie); err == nil {
			token = ck.Value
		}
	}
	if token == "" {
		if a.anonymous {
			return a.anonymousIdentity(), nil
		}
		return nil, &TokenError{RefusedTokenMissing, errors.New("no token: pass one in the token query parameter or an Authorization: Bearer header")}
	}
	return a.Verify(token)
}

// CheckPatterns checks a list of permission patterns (AuthConfig): braces only as
// "{sub}", and in a pattern ending in "*", every "{sub}" followed by a separator, so that
// one user's prefix never covers another's ("user:{sub}*" would give alice user:alice2).
func CheckPatterns(list []string) error { return pattern.Check(list) }
