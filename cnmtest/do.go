package cnmtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/seed53641549/cnm/internal/acceptloop"
	"github.com/seed53641549/cnm/osl"
)

// Do runs fn with its thread inside the network namespace file path (a
// sandbox's Key), and switches back afterwards. Sockets opened in fn belong
// to that namespace.
func Do(ctx context.Context, path string, fn func() error) error {
	ns, err := osl.OpenNamespace(ctx, path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(fn)
}

// Listen opens a TCP listener on addr inside the namespace file path.
func Listen(ctx context.Context, path string, addr netip.AddrPort) (net.Listener, error) {
	var l net.Listener
	err := Do(ctx, path, func() error {
		var err error
		l, err = net.Listen("tcp", addr.String())
		return err
	})
	return l, err
}

// Dial opens a TCP connection to addr from inside the namespace file path.
func Dial(ctx context.Context, path string, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := Do(ctx, path, func() error {
		// The socket is made (and so bound to the namespace) inside Do; the
		// connect may finish later on any thread.
		d := net.Dialer{Timeout: timeout}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr.String())
		return err
	})
	return c, err
}

// Serve listens on TCP addr inside the namespace file path until the test
// ends, and hands each connection to handle in a goroutine of its own,
// closing it afterwards (a nil handle only accepts and closes). It fails
// the test if it cannot listen.
func Serve(t testing.TB, path string, addr netip.AddrPort, handle func(net.Conn)) {
	t.Helper()
	l, err := Listen(context.Background(), path, addr)
	if err != nil {
		t.Fatalf("cnmtest: listen on %s in %s: %v", addr, path, err)
	}
	t.Cleanup(func() { l.Close() })
	go acceptloop.Run(l, handle)
}

// Echo is [Serve] with a handler that sends every byte back.
func Echo(c net.Conn) { _, _ = io.Copy(c, c) }

// TCPExchange proves TCP connectivity: it listens on to inside the namespace
// serverNS, connects from clientNS, sends a message and reads it echoed back.
// It returns nil only if the bytes made the round trip.
func TCPExchange(ctx context.Context, serverNS, clientNS string, to netip.AddrPort, timeout time.Duration) error {
	l, err := Listen(ctx, serverNS, to)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", to, err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		_, _ = io.CopyN(c, c, 5)
	}()
	c, err := Dial(ctx, clientNS, to, timeout)
	if err != nil {
		return fmt.Errorf("dial %s: %w", to, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("hello")); err != nil {
		return fmt.Errorf("write to %s: %w", to, err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read echo from %s: %w", to, err)
	}
	if string(buf) != "hello" {
		return fmt.Errorf("echo from %s: got %q", to, buf)
	}
	return nil
}

// Resolver returns a Go resolver that asks the embedded DNS server
// (127.0.0.11) of the sandbox whose namespace file is path, from inside it.
func Resolver(path string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := Do(ctx, path, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, "127.0.0.11:53")
			return err
		})
		return c, err
	}}
}
