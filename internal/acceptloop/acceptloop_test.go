package acceptloop

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestRun: connections are served at once, each by its own handler (a slow
// one does not hold the next), closed after it, and Run returns when the
// listener closes.
func TestRun(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		Run(l, func(c net.Conn) {
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
			<-release
		})
	}()
	read := func() (net.Conn, string) {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return c, string(b)
	}
	c1, got1 := read()
	c2, got2 := read() // served while the first handler still runs
	if got1 != "x" || got2 != "x" {
		t.Fatalf("read %q and %q", got1, got2)
	}
	close(release)
	for _, c := range []net.Conn{c1, c2} {
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after the handler returned: %v, want EOF", err)
		}
		c.Close()
	}
	l.Close()
	select {
	case <-returned:
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after the listener closed")
	}
}
