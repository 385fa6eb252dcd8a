package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/heraldgw/herald/gateway"
	"github.com/heraldgw/herald/producer/redact"
)

// edge is the gateway's authentication and limits, from the flags.
type edge struct {
	auth    gateway.AuthConfig
	limits  gateway.Limits
	origins []string
	jwks    *gateway.JWKS // nil unless --jwks-url; Run keeps it fresh
}

// off turns a flag's 0 ("no limit") into the gateway's negative (off); the gateway's
// zero means its default.
func off[T ~int | ~int64 | ~float64](v T) T {
	if v <= 0 {
		return -1
	}
	return v
}

// edgeConfig builds the gateway's authentication and limits from cfg, reading the
// public key file and fetching the JWKS once (a failed fetch is logged; Run retries).
// It logs loudly when authentication is off.
func edgeConfig(ctx context.Context, cfg config, log *slog.Logger, metrics *gateway.Metrics) (edge, error) {
	proxies, err := parsePrefixes(cfg.TrustedProxies)
	if err != nil {
		return edge{}, err
	}
	e := edge{
		origins: splitList(cfg.AllowedOrigins),
		limits: gateway.Limits{
			MaxConnections:      off(cfg.MaxConnections),
			MaxConnectionsPerIP: off(cfg.MaxConnectionsPerIP),
			HandshakeRate:       off(cfg.HandshakeRate),
			HandshakeBurst:      cfg.HandshakeBurst,
			MessageRate:         off(cfg.MessageRate),
			MessageBurst:        cfg.MessageBurst,
			MaxViolations:       off(cfg.MaxViolations),
			FrameRate:           cfg.FrameRate, // 0: derived from the message rate, as the flag says
			FrameBurst:          cfg.FrameBurst,
			MaxFragments:        off(cfg.MaxFragments),
			MaxSubscriptions:    off(cfg.MaxSubscriptions),
			TrustedProxies:      proxies,
		},
		auth: gateway.AuthConfig{
			Algorithm:       cfg.JWTAlg,
			Audience:        cfg.JWTAudience,
			Issuer:          cfg.JWTIssuer,
			Leeway:          off(cfg.JWTLeeway),
			AllowAnonymous:  cfg.AllowAnonymous,
			DefaultChannels: splitList(cfg.DefaultChannels),
			DefaultPublish:  splitList(cfg.DefaultPublish),
		},
	}
	switch {
	case cfg.JWTSecret != "":
		e.auth.Secret = []byte(cfg.JWTSecret)
	case cfg.JWTPublicKey != "":
		pem, err := os.ReadFile(cfg.JWTPublicKey)
		if err != nil {
			return edge{}, fmt.Errorf("jwt-public-key: %w", err)
		}
		if e.auth.PublicKey, err = gateway.ParsePublicKeyPEM(pem); err != nil {
			return edge{}, fmt.Errorf("jwt-public-key %s: %w", cfg.JWTPublicKey, err)
		}
	case cfg.JWKSURL != "":
		if strings.HasPrefix(strings.ToLower(cfg.JWKSURL), "http://") {
			log.Warn("THE JWKS URL IS PLAIN HTTP (--jwks-allow-http): whoever can alter the traffic to it can replace the keys and sign any token; use https unless the key server is on a network you trust",
				"url", redact.URL(cfg.JWKSURL))
		}
		e.jwks = gateway.NewJWKS(gateway.JWKSConfig{URL: cfg.JWKSURL, AllowHTTP: cfg.JWKSAllowHTTP, Refresh: cfg.JWKSRefresh,
			Logger: log.With("part", "jwks"), Metrics: metrics})
		fetch, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := e.jwks.Fetch(fetch); err != nil {
			log.Warn("JWKS not fetched at start: tokens are refused until it is", "err", err)
		}
		cancel()
		e.auth.JWKS = e.jwks
	}
	if !e.auth.Enabled() {
		log.Warn("AUTHENTICATION IS OFF: no --jwt-secret, --jwt-public-key or --jwks-url; every client is anonymous and may subscribe and publish to any channel. Fine for the demo, not for the internet")
	} else {
		log.Info("authentication on", "alg", cfg.JWTAlg, "anonymous", cfg.AllowAnonymous,
			"audience", cfg.JWTAudience, "issuer", cfg.JWTIssuer)
		log.Info(defaultsLine(e.auth))
	}
	return e, nil
}

// defaultsLine says, in one line, what a token without a channels or publish claim may
// do, and what a client without a token gets.
func defaultsLine(a gateway.AuthConfig) string {
	list := func(patterns []string, flag string) string {
		if len(patterns) == 0 {
			return "no channel (" + flag + " is empty)"
		}
		return strings.Join(patterns, ", ") + " (" + flag + ")"
	}
	anon := "clients without a token are refused (--allow-anonymous is off)"
	if a.AllowAnonymous {
		anon = "clients without a token are admitted anonymously with these same permissions (--allow-anonymous)"
	}
	return fmt.Sprintf("tokens without a channels claim may subscribe to %s; tokens without a publish claim may publish to %s; %s",
		list(a.DefaultChannels, "--default-channels"), list(a.DefaultPublish, "--default-publish"), anon)
}
