package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/seed53641549/cnm/osl"
)

// Server is one sandbox's DNS server, serving on [Addr]:[Port], UDP and
// TCP, inside the sandbox's network namespace. Its methods are safe for
// concurrent use.
type Server struct {
	ns  *osl.Namespace
	udp *net.UDPConn
	tcp *net.TCPListener

	cfg      atomic.Pointer[config]
	inFlight atomic.Int32 // forwarded queries being handled

	// ctx is cancelled by Close: it ends the waits of forwarded queries.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the server started

	closeOnce sync.Once
	closeErr  error

	// mu guards the following fields.
	mu     sync.Mutex
	conns  map[net.Conn]struct{} // open TCP client connections
	closed bool
}

// Start serves DNS on [Addr]:[Port], UDP and TCP, inside the namespace ns:
// its sockets are opened from a thread switched into ns, and so are the
// sockets of the queries it forwards, which leave through the namespace's
// own routes. ns must stay open while the server runs; queries forwarded
// after ns is closed are answered SERVFAIL.
//
// On error nothing is left open. Starting a second server in the same
// namespace fails: the address is taken.
func Start(ns *osl.Namespace, cfg Config) (*Server, error) {
	var udp *net.UDPConn
	var tcp *net.TCPListener
	err := ns.Do(func() error {
		var err error
		udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(self))
		if err != nil {
			return err
		}
		tcp, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(self))
		if err != nil {
			udp.Close()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("start DNS server in namespace %s: %w", ns, err)
	}
	s := &Server{ns: ns, udp: udp, tcp: tcp}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.cfg.Store(newConfig(cfg))
	s.wg.Add(2)
	go s.serveUDP()
	go s.serveTCP()
	return s, nil
}

// Update replaces the server's names, upstreams and limits at once,
// without a restart: every query read after Update returns is served with
// cfg. Queries already being forwarded finish with the configuration they
// started with.
func (s *Server) Update(cfg Config) {
	s.cfg.Store(newConfig(cfg))
}

// Close stops the server: it closes its sockets, ends the queries in
// flight (a forwarded query stops waiting for its upstream and is dropped)
// and returns once every goroutine the server started has ended. Calling it
// again returns the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.closeErr = errors.Join(s.udp.Close(), s.tcp.Close())
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s.closeErr
}

// acquire takes one of the cfg.maxInFlight slots for a forwarded query;
// false when all are taken.
func (s *Server) acquire(cfg *config) bool {
	if s.inFlight.Add(1) > cfg.maxInFlight {
		s.inFlight.Add(-1)
		return false
	}
	return true
}

func (s *Server) release() { s.inFlight.Add(-1) }
