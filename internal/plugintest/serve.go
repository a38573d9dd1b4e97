package plugintest

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
)

// Server is a plugin served on a unix socket.
type Server struct {
	// Socket is the path of the socket.
	Socket string
	l      *trackingListener
	done   chan struct{}
}

// serve serves on a new unix socket at path (its directory is made): run
// is the SDK's Serve, or an http.Server's.
func serve(path string, run func(net.Listener) error) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	s := &Server{Socket: path, l: &trackingListener{Listener: l, conns: map[net.Conn]bool{}}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = run(s.l)
	}()
	return s, nil
}

// Close stops serving, cuts every open connection and removes the socket,
// as a plugin that exits does. Safe to call twice.
func (s *Server) Close() error {
	err := s.l.closeAll()
	<-s.done
	if rerr := os.Remove(s.Socket); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// trackingListener remembers its connections, so Close can cut them: the
// SDK's server offers no way to.
type trackingListener struct {
	net.Listener
	mu     sync.Mutex // guards the fields below
	conns  map[net.Conn]bool
	closed bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	l.conns[c] = true
	return c, nil
}

func (l *trackingListener) closeAll() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
	return l.Listener.Close()
}

// Call is one call a plugin received.
type Call struct {
	Method  string // "NetworkDriver.Join"
	Request any    // the decoded request, a type of go-plugins-helpers
}

// recorder keeps the calls a plugin received.
type recorder struct {
	mu    sync.Mutex // guards calls
	calls []Call
}

func (r *recorder) record(method string, req any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, Call{Method: method, Request: req})
}

// Calls returns the calls received so far, in order.
func (r *recorder) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Call(nil), r.calls...)
}

// Methods returns the names of the calls received so far, in order.
func (r *recorder) Methods() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.calls))
	for i, c := range r.calls {
		out[i] = c.Method
	}
	return out
}

// Reset forgets the calls received so far.
func (r *recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = nil
}

// httpServer serves an http.Handler on a listener.
type httpServer struct{ h http.Handler }

func (s *httpServer) serve(l net.Listener) error {
	return (&http.Server{Handler: s.h}).Serve(l)
}
