package etcdtest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy forwards TCP connections from a 127.0.0.1 port to a server's client
// port, and can cut them all at once: clients then see etcd as unreachable
// at once, without waiting for the server to shut down.
type Proxy struct {
	l      net.Listener
	target string
	scheme string

	mu     sync.Mutex
	conns  map[net.Conn]bool
	cut    bool
	paused bool
	wg     sync.WaitGroup
}

// Pause closes every connection through the proxy and refuses new ones
// until Resume: its clients lose etcd for a while (their watches fall
// behind) while other clients go on.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = true
	for c := range p.conns {
		_ = c.Close()
	}
}

// Resume forwards connections again after Pause.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = false
}

// NewProxy starts a proxy to the server's first endpoint and registers its
// end with t.Cleanup.
func NewProxy(t testing.TB, s *Server) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(l, s.curl.Host, s.curl.Scheme)
	t.Cleanup(p.Cut)
	return p
}

// newProxy forwards the connections l accepts to target until Cut.
func newProxy(l net.Listener, target, scheme string) *Proxy {
	p := &Proxy{l: l, target: target, scheme: scheme, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	return p
}

// Endpoint returns the proxy's client URL.
func (p *Proxy) Endpoint() string { return p.scheme + "://" + p.l.Addr().String() }

// Cut closes the proxy and every connection through it. Safe to call twice.
func (p *Proxy) Cut() {
	p.mu.Lock()
	if !p.cut {
		p.cut = true
		_ = p.l.Close()
		for c := range p.conns {
			_ = c.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		paused := p.paused
		p.mu.Unlock()
		if paused {
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			_ = up.Close()
			return
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}
