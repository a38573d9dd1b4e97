package etcdstore

import (
	"crypto/tls"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/seed53641549/cnm/errdefs"
)

// Defaults of [Config].
const (
	// DefaultDialTimeout bounds the first connection to the cluster.
	DefaultDialTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds each request that is not a watch.
	DefaultRequestTimeout = 5 * time.Second
)

// Config configures [Open].
type Config struct {
	// Endpoints are the cluster's client URLs ("http://127.0.0.1:2379",
	// "https://10.0.0.1:2379"). At least one is needed. A URL with the
	// https scheme needs TLS.
	Endpoints []string

	// TLS, when set, is used for every connection (server verification and,
	// with a client certificate, client authentication). Nil dials in
	// plain text.
	TLS *tls.Config

	// DialTimeout bounds the first connection: Open fails when no endpoint
	// answers within it. Zero means [DefaultDialTimeout]; negative is an
	// error.
	DialTimeout time.Duration

	// RequestTimeout bounds every request except watches (which live as long
	// as their context) on top of the caller's context. Zero means
	// [DefaultRequestTimeout]; negative is an error.
	RequestTimeout time.Duration

	// Prefix, when set, is put in front of every key, so that several users
	// (or tests) share one cluster without seeing each other's keys. Keys
	// returned and watched are given without it. It must not be "/" alone.
	Prefix string
}

// validate checks cfg and fills in the defaults of a copy.
func (cfg Config) validate() (Config, error) {
	if len(cfg.Endpoints) == 0 {
		return cfg, fmt.Errorf("%w: endpoints is empty: at least one etcd client URL is needed", errdefs.ErrInvalid)
	}
	for i, ep := range cfg.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" && u.Scheme != "unixs") {
			return cfg, fmt.Errorf("%w: endpoints[%d] %q is not an http(s) or unix URL with a host", errdefs.ErrInvalid, i, ep)
		}
		if u.Scheme == "https" && cfg.TLS == nil {
			return cfg, fmt.Errorf("%w: endpoints[%d] %q uses https but tls is not set", errdefs.ErrInvalid, i, ep)
		}
	}
	switch {
	case cfg.DialTimeout < 0:
		return cfg, fmt.Errorf("%w: dial timeout %s is negative", errdefs.ErrInvalid, cfg.DialTimeout)
	case cfg.DialTimeout == 0:
		cfg.DialTimeout = DefaultDialTimeout
	}
	switch {
	case cfg.RequestTimeout < 0:
		return cfg, fmt.Errorf("%w: request timeout %s is negative", errdefs.ErrInvalid, cfg.RequestTimeout)
	case cfg.RequestTimeout == 0:
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if strings.Trim(cfg.Prefix, "/") == "" && cfg.Prefix != "" {
		return cfg, fmt.Errorf("%w: prefix %q has no name in it", errdefs.ErrInvalid, cfg.Prefix)
	}
	cfg.Endpoints = append([]string(nil), cfg.Endpoints...)
	return cfg, nil
}
