// Package etcdtest starts a real, single-member etcd server inside a test
// process (go.etcd.io/etcd/server/v3/embed), listening on 127.0.0.1 only
// with free ports and its data in a temporary directory, for the tests of
// cnm's global store and of what is built on it.
package etcdtest

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a running embedded etcd. It stops at the end of the test that
// started it.
type Server struct {
	e         *embed.Etcd
	stopOnce  sync.Once
	endpoints []string
	clientTLS *tls.Config
}

// Options tune [Start].
type Options struct {
	// TLS serves clients over TLS with certificates of a CA made for this
	// server, and requires client certificates.
	TLS bool
}

// Start starts a server and registers its stop with t.Cleanup. It fails the
// test when the server does not come up within 10 seconds.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	var lastErr error
	for range 3 { // a free port may be taken between choosing and binding it
		s, err := start(t, opts)
		if err == nil {
			t.Cleanup(s.Stop)
			return s
		}
		lastErr = err
	}
	t.Fatalf("start etcd: %v", lastErr)
	return nil
}

func start(t testing.TB, opts Options) (*Server, error) {
	cfg := embed.NewConfig()
	cfg.Name = "cnm-test"
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop()) // its shutdown is noisy; failures come back as errors
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.UnsafeNoFsync = true
	scheme := "http"
	var clientTLS *tls.Config
	if opts.TLS {
		info, ctls, err := makeCerts(cfg.Dir)
		if err != nil {
			return nil, err
		}
		cfg.ClientTLSInfo = info
		clientTLS = ctls
		scheme = "https"
	}
	cport, err := freePort()
	if err != nil {
		return nil, err
	}
	pport, err := freePort()
	if err != nil {
		return nil, err
	}
	curl := url.URL{Scheme: scheme, Host: fmt.Sprintf("127.0.0.1:%d", cport)}
	purl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", pport)}
	cfg.ListenClientUrls = []url.URL{curl}
	cfg.AdvertiseClientUrls = []url.URL{curl}
	cfg.ListenPeerUrls = []url.URL{purl}
	cfg.AdvertisePeerUrls = []url.URL{purl}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(10 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd not ready within 10s")
	}
	return &Server{e: e, endpoints: []string{curl.String()}, clientTLS: clientTLS}, nil
}

// Stop stops the server now (its data stays until the test ends), to test
// what clients do when etcd is down. It is safe to call more than once.
func (s *Server) Stop() { s.stopOnce.Do(s.e.Close) }

// Endpoints returns the client URLs of the server.
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// ClientTLS returns the TLS configuration a client needs (the CA and a
// client certificate), or nil for a plain-text server.
func (s *Server) ClientTLS() *tls.Config {
	if s.clientTLS == nil {
		return nil
	}
	return s.clientTLS.Clone()
}

// Compact compacts the server's history up to rev, so that watches of
// older revisions fail with ErrCompacted.
func (s *Server) Compact(t testing.TB, rev uint64) {
	t.Helper()
	if _, err := s.e.Server.Compact(t.Context(), &pb.CompactionRequest{Revision: int64(rev), Physical: true}); err != nil {
		t.Fatalf("compact to %d: %v", rev, err)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
