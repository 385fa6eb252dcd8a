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

// authKey completes cfg.Gateway.Auth with the key the flags name that is not a value:
// the public key read from its file, or the JWKS, fetched once (a failed fetch is logged;
// its Run, which the caller starts, retries). It logs loudly when authentication is off.
func authKey(ctx context.Context, cfg *config, log *slog.Logger, metrics *gateway.Metrics) (*gateway.JWKS, error) {
	a := &cfg.Gateway.Auth
	var jwks *gateway.JWKS
	switch {
	case cfg.JWTPublicKey != "":
		pem, err := os.ReadFile(cfg.JWTPublicKey)
		if err != nil {
			return nil, fmt.Errorf("jwt-public-key: %w", err)
		}
		if a.PublicKey, err = gateway.ParsePublicKeyPEM(pem); err != nil {
			return nil, fmt.Errorf("jwt-public-key %s: %w", cfg.JWTPublicKey, err)
		}
	case cfg.JWKS.URL != "":
		if strings.HasPrefix(strings.ToLower(cfg.JWKS.URL), "http://") {
			log.Warn("THE JWKS URL IS PLAIN HTTP (--jwks-allow-http): whoever can alter the traffic to it can replace the keys and sign any token; use https unless the key server is on a network you trust",
				"url", redact.URL(cfg.JWKS.URL))
		}
		jc := cfg.JWKS
		jc.Logger, jc.Metrics = log.With("part", "jwks"), metrics
		jwks = gateway.NewJWKS(jc)
		fetch, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := jwks.Fetch(fetch); err != nil {
			log.Warn("JWKS not fetched at start: tokens are refused until it is", "err", err)
		}
		cancel()
		a.JWKS = jwks
	}
	if !a.Enabled() {
		log.Warn("AUTHENTICATION IS OFF: no --jwt-secret, --jwt-public-key or --jwks-url; every client is anonymous and may subscribe and publish to any channel. Fine for the demo, not for the internet")
	} else {
		log.Info("authentication on", "alg", a.Algorithm, "anonymous", a.AllowAnonymous,
			"audience", a.Audience, "issuer", a.Issuer)
		log.Info(defaultsLine(*a))
	}
	return jwks, nil
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
