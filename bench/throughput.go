//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
)

// measureTCP streams data over one TCP connection from the namespace file
// client to a listener on to in the namespace file server, for d, and
// returns the receiver's bytes per second.
func measureTCP(ctx context.Context, server, client string, to netip.AddrPort, d time.Duration) (float64, error) {
	l, err := cnmtest.Listen(ctx, server, to)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	type result struct {
		rate float64
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		start := time.Now()
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			done <- result{err: err}
			return
		}
		done <- result{rate: float64(n) / time.Since(start).Seconds()}
	}()
	c, err := cnmtest.Dial(ctx, client, to, 2*time.Second)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return 0, err
		}
	}
	c.Close()
	r := <-done
	return r.rate, r.err
}

// vethPair makes two namespaces joined by a bare veth pair, 10.210.0.1/24
// and .2/24: the baseline for throughput. cleanup removes both.
func vethPair(ctx context.Context, dir string) (a, b *osl.Namespace, cleanup func(), err error) {
	a, err = osl.NewNamespace(ctx, filepath.Join(dir, "tput-a"))
	if err != nil {
		return nil, nil, nil, err
	}
	b, err = osl.NewNamespace(ctx, filepath.Join(dir, "tput-b"))
	if err != nil {
		a.Delete()
		return nil, nil, nil, err
	}
	cleanup = func() { a.Delete(); b.Delete() }
	if err := a.AddVeth(ctx, osl.VethSpec{HostName: "eth0", PeerName: "eth0", PeerNS: b}); err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	for i, ns := range []*osl.Namespace{a, b} {
		l, err := ns.LinkByName(ctx, "eth0")
		if err == nil {
			err = ns.AddAddress(ctx, l.Index, netip.MustParsePrefix(fmt.Sprintf("10.210.0.%d/24", i+1)))
		}
		if err == nil {
			err = ns.SetLinkUp(ctx, l.Index)
		}
		if err != nil {
			cleanup()
			return nil, nil, nil, err
		}
	}
	return a, b, cleanup, nil
}
