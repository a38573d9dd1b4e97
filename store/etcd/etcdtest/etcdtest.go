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
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is an embedded etcd. It stops at the end of the test that started
// it; [Server.Stop] and [Server.Restart] stop and start it again in
// between, on the same URLs and data.
//
// Clients reach it through a forwarder on the client URL that the server
// owns, so that Stop cuts every client connection at once, as a crash of
// etcd would, instead of waiting for open watches and lease keep-alives to
// end.
type Server struct {
	dir       string  // data dir: kept across Stop and Restart
	curl      url.URL // the client URL: the forwarder's
	inner     url.URL // where etcd itself serves clients
	purl      url.URL
	tlsInfo   transport.TLSInfo
	clientTLS *tls.Config

	mu    sync.Mutex
	e     *embed.Etcd // nil while stopped
	front *Proxy      // forwards curl to inner; nil while stopped
}

// Options tune [Start].
type Options struct {
	// TLS serves clients over TLS with certificates of a CA made for this
	// server, and requires client certificates.
	TLS bool
}

// readyTimeout bounds a start or restart.
const readyTimeout = 10 * time.Second

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
	s := &Server{dir: t.TempDir()}
	scheme := "http"
	if opts.TLS {
		info, ctls, err := makeCerts(s.dir)
		if err != nil {
			return nil, err
		}
		s.tlsInfo, s.clientTLS, scheme = info, ctls, "https"
	}
	var ports [3]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	s.curl = url.URL{Scheme: scheme, Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	s.inner = url.URL{Scheme: scheme, Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	s.purl = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2])}
	if err := s.run(); err != nil {
		return nil, err
	}
	return s, nil
}

// config returns the server's configuration; it is the same at every
// (re)start, so a restart finds its data and its cluster again.
func (s *Server) config() *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = "cnm-test"
	cfg.Dir = s.dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop()) // its shutdown is noisy; failures come back as errors
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.UnsafeNoFsync = true
	cfg.ClientTLSInfo = s.tlsInfo
	cfg.ListenClientUrls = []url.URL{s.inner}
	cfg.AdvertiseClientUrls = []url.URL{s.curl}
	cfg.ListenPeerUrls = []url.URL{s.purl}
	cfg.AdvertisePeerUrls = []url.URL{s.purl}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	return cfg
}

// run starts etcd on the server's URLs and data dir, waits until it
// serves, and opens the client URL's forwarder.
func (s *Server) run() error {
	e, err := embed.StartEtcd(s.config())
	if err != nil {
		return err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcd failed while starting: %w", err)
	case <-time.After(readyTimeout):
		e.Close()
		return fmt.Errorf("etcd not ready within %s", readyTimeout)
	}
	l, err := net.Listen("tcp", s.curl.Host)
	if err != nil {
		e.Close()
		return fmt.Errorf("client url %s: %w", s.curl.String(), err)
	}
	s.mu.Lock()
	s.e = e
	s.front = newProxy(l, s.inner.Host, s.curl.Scheme)
	s.mu.Unlock()
	return nil
}

// Stop stops the server now, to test what clients do when etcd is down:
// every client connection is cut at once, then etcd shuts down. Its data
// dir stays (until the test that started it ends), so [Server.Restart]
// brings it back with every key. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.front != nil {
		s.front.Cut()
		s.front = nil
	}
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

// Restart starts the server again on the same client URL, peer URL and
// data dir, so every key written before [Server.Stop] is there and clients
// reconnect by themselves. A running server is stopped first. It may be
// called any number of times; the server still stops at the end of the
// test that started it (and of t). It fails t when the server does not come
// up within 10 seconds (retrying while the freed ports are briefly held).
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	t.Cleanup(s.Stop)
	deadline := time.Now().Add(readyTimeout)
	for {
		err := s.run()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("restart etcd on %s (data %s): %v", s.curl.String(), s.dir, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Endpoints returns the client URLs of the server.
func (s *Server) Endpoints() []string { return []string{s.curl.String()} }

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
	s.mu.Lock()
	e := s.e
	s.mu.Unlock()
	if e == nil {
		t.Fatalf("compact to %d: the server is stopped", rev)
	}
	if _, err := e.Server.Compact(t.Context(), &pb.CompactionRequest{Revision: int64(rev), Physical: true}); err != nil {
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
