package edge

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/heraldgw/herald/gateway/internal/metrics"
	"github.com/heraldgw/herald/producer/redact"
)

// DefaultJWKSRefresh is how often a JWKS is fetched again where JWKSConfig.Refresh is
// zero.
const DefaultJWKSRefresh = 10 * time.Minute

// JWKSConfig configures a JWKS.
type JWKSConfig struct {
	// URL serves the JSON Web Key Set (RFC 7517), e.g.
	// https://issuer.example.com/.well-known/jwks.json. It is logged with its secrets
	// (password, secret-looking query parameters) hidden.
	URL string
	// AllowHTTP lets URL be plain http://. Default false: Fetch refuses it, since anyone
	// on the path could swap the keys and so sign any token.
	AllowHTTP bool
	// Refresh is how often Run fetches the set again. Default 10m.
	Refresh time.Duration
	// MissInterval is the least time between two fetches caused by a token whose kid is
	// not in the set (a rotated key), so that made-up kids cannot make the gateway fetch
	// on every handshake. Default 10s.
	MissInterval time.Duration
	// Client fetches the set. Default: a client with a 10s timeout. Whatever the client,
	// a redirect to another scheme or host is refused (the keys must come from the host
	// the URL names); redirects on the same scheme and host are followed, up to 10.
	Client *http.Client
	// Logger receives fetch failures. Default: discard.
	Logger *slog.Logger
	// Metrics counts fetches. Default: counted nowhere.
	Metrics *metrics.Metrics
}

// JWKS is a cached JSON Web Key Set: the RSA and ECDSA P-256 public keys that verify
// tokens, by kid. Run keeps it fresh; a kid it does not know makes it fetch again (at
// most once per MissInterval). Safe for concurrent use.
type JWKS struct {
	cfg     JWKSConfig
	safeURL string // cfg.URL with its secrets hidden, for logs and errors

	// fetchMu is held for a whole fetch, so that one runs at a time; it protects lastMiss.
	fetchMu  sync.Mutex
	lastMiss time.Time

	// mu protects keys and loaded.
	mu     sync.RWMutex
	keys   map[string]jwk
	loaded bool
}

// jwk is one usable key of the set.
type jwk struct {
	alg string // RS256 or ES256
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

// NewJWKS returns a key set that fetches from cfg.URL; it holds no keys until the first
// Fetch (Run fetches at once).
func NewJWKS(cfg JWKSConfig) *JWKS {
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultJWKSRefresh
	}
	if cfg.MissInterval <= 0 {
		cfg.MissInterval = 10 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	client := *cfg.Client // a copy: the caller's client is left as it is
	client.CheckRedirect = sameOrigin(cfg.Client.CheckRedirect)
	cfg.Client = &client
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &JWKS{cfg: cfg, safeURL: redact.URL(cfg.URL), keys: map[string]jwk{}}
}

// maxJWKSRedirects is how many redirects a fetch follows.
const maxJWKSRedirects = 10

// sameOrigin is a CheckRedirect that refuses a redirect to another scheme or host than
// the first request's, and more than maxJWKSRedirects; then it asks next, when not nil.
func sameOrigin(next func(*http.Request, []*http.Request) error) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		first := via[0].URL
		if !strings.EqualFold(req.URL.Scheme, first.Scheme) || !strings.EqualFold(req.URL.Host, first.Host) {
			return fmt.Errorf("refused a redirect from %s to %s: the key set must come from the scheme and host of its URL",
				redact.URL(first.Scheme+"://"+first.Host), redact.URL(req.URL.Scheme+"://"+req.URL.Host))
		}
		if len(via) >= maxJWKSRedirects {
			return fmt.Errorf("stopped after %d redirects", maxJWKSRedirects)
		}
		if next != nil {
			return next(req, via)
		}
		return nil
	}
}

// CheckJWKSURL checks a JWKS URL: absolute, with a host, https (or http where allowHTTP).
func CheckJWKSURL(raw string, allowHTTP bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("JWKS URL %s: %w", redact.URL(raw), redact.Error(err, raw))
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowHTTP:
	case u.Scheme == "http":
		return fmt.Errorf("JWKS URL %s is plain http: anyone on the path could replace the keys and sign any token; use https (or allow http explicitly, for a key server on a trusted network)", redact.URL(raw))
	default:
		return fmt.Errorf("JWKS URL %s: want an https:// URL", redact.URL(raw))
	}
	if u.Host == "" {
		return fmt.Errorf("JWKS URL %s has no host", redact.URL(raw))
	}
	return nil
}

// jwksRetry is how soon Run tries again after a failed fetch.
const jwksRetry = 10 * time.Second

// Run fetches the set now and then every Refresh until ctx ends. A failed fetch is
// logged and counted, the keys fetched before stay in use, and it is tried again after
// 10s (or Refresh, when shorter).
func (j *JWKS) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := j.cfg.Refresh
		if err := j.Fetch(ctx); err != nil && ctx.Err() == nil {
			j.cfg.Logger.Warn("JWKS fetch failed; keeping the keys fetched before", "url", j.safeURL, "err", err)
			next = min(next, jwksRetry)
		}
		t.Reset(next)
	}
}

// maxJWKSBytes bounds a key set's document.
const maxJWKSBytes = 1 << 20

// Fetch gets the set from its URL and replaces the cached keys with it.
func (j *JWKS) Fetch(ctx context.Context) error {
	j.fetchMu.Lock()
	defer j.fetchMu.Unlock()
	keys, err := j.fetch(ctx)
	j.cfg.Metrics.JWKSFetched(err == nil)
	if err != nil {
		return fmt.Errorf("jwks: fetch %s: %w", j.safeURL, redact.Error(err, j.cfg.URL))
	}
	j.mu.Lock()
	j.keys, j.loaded = keys, true
	j.mu.Unlock()
	return nil
}

func (j *JWKS) fetch(ctx context.Context) (map[string]jwk, error) {
	if err := CheckJWKSURL(j.cfg.URL, j.cfg.AllowHTTP); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.cfg.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.cfg.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("document is larger than %d bytes", maxJWKSBytes)
	}
	return parseJWKS(body)
}

// parseJWKS reads the usable keys of a JSON Web Key Set by kid: RSA keys (of at least
// 2048 bits) and EC keys on P-256. Keys for encryption ("use": "enc"), of other types
// or curves, and keys whose alg is set to something else are skipped; a set with no
// usable key is an error.
func parseJWKS(data []byte) (map[string]jwk, error) {
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Kid string `json:"kid"`
			Use string `json:"use"`
			Alg string `json:"alg"`
			N   string `json:"n"`
			E   string `json:"e"`
			Crv string `json:"crv"`
			X   string `json:"x"`
			Y   string `json:"y"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JWKS document: %w", err)
	}
	keys := make(map[string]jwk, len(set.Keys))
	var errs []error
	for _, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		var key jwk
		var err error
		switch k.Kty {
		case "RSA":
			key.alg = AlgRS256
			key.key, err = rsaKey(k.N, k.E)
		case "EC":
			if k.Crv != "P-256" {
				continue
			}
			key.alg = AlgES256
			key.key, err = ecKey(k.X, k.Y)
		default:
			continue
		}
		if k.Alg != "" && k.Alg != key.alg {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("key %q: %w", k.Kid, err))
			continue
		}
		keys[k.Kid] = key
	}
	if len(keys) == 0 {
		return nil, errors.Join(append([]error{errors.New("no usable RS256 or ES256 key")}, errs...)...)
	}
	return keys, nil
}

func b64(field, s string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, fmt.Errorf("%s is not base64url", field)
	}
	return b, nil
}

func rsaKey(n, e string) (*rsa.PublicKey, error) {
	nb, err := b64("n", n)
	if err != nil {
		return nil, err
	}
	eb, err := b64("e", e)
	if err != nil {
		return nil, err
	}
	if len(eb) > 4 {
		return nil, errors.New("e is too large")
	}
	exp := int(new(big.Int).SetBytes(eb).Int64())
	if exp < 3 || exp%2 == 0 {
		return nil, fmt.Errorf("e %d is not an odd exponent of at least 3", exp)
	}
	key := &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: exp}
	if _, err := keyAlgorithm(key); err != nil {
		return nil, err
	}
	return key, nil
}

func ecKey(x, y string) (*ecdsa.PublicKey, error) {
	xb, err := b64("x", x)
	if err != nil {
		return nil, err
	}
	yb, err := b64("y", y)
	if err != nil {
		return nil, err
	}
	if len(xb) != 32 || len(yb) != 32 {
		return nil, errors.New("x and y must be 32 bytes each on P-256")
	}
	point := append(append([]byte{4}, xb...), yb...)
	return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
}

// key returns the key with kid for a token signed with alg, fetching the set again when
// it does not know kid (at most once per MissInterval). A token without a kid is
// verified with the set's only key for alg, where it has exactly one.
func (j *JWKS) key(kid, alg string) (any, error) {
	if k, err := j.lookup(kid, alg); err == nil {
		return k, nil
	}
	j.fetchMu.Lock()
	due := time.Since(j.lastMiss) >= j.cfg.MissInterval
	if due {
		j.lastMiss = time.Now()
	}
	j.fetchMu.Unlock()
	if due {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := j.Fetch(ctx)
		cancel()
		if err != nil {
			j.cfg.Logger.Warn("JWKS fetch for an unknown kid failed", "kid", fmt.Sprintf("%.64q", kid), "err", err)
		}
	}
	return j.lookup(kid, alg)
}

func (j *JWKS) lookup(kid, alg string) (any, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if !j.loaded {
		return nil, errors.New("the JWKS has not been fetched yet")
	}
	if kid == "" {
		var found any
		n := 0
		for _, k := range j.keys {
			if k.alg == alg {
				found, n = k.key, n+1
			}
		}
		if n != 1 {
			return nil, fmt.Errorf("token has no kid and the JWKS has %d %s keys", n, alg)
		}
		return found, nil
	}
	k, ok := j.keys[kid]
	if !ok {
		return nil, fmt.Errorf("no key with kid %q in the JWKS", kid)
	}
	if k.alg != alg {
		return nil, fmt.Errorf("key %q is for %s, not %s", kid, k.alg, alg)
	}
	return k.key, nil
}
