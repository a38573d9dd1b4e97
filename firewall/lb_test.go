//go:build linux

package firewall

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"

	"github.com/seed53641549/cnm/errdefs"
)

// lbTopology is one bridge in a host namespace with a client and three
// backends, dual-stack. Each backend serves svcPort (serveTagged).
//
//	client .10, b0 .11, b1 .12, b2 .13 -- brS .1 (198.18.5.0/24, 2001:db8:5::/64)
type lbTopology struct {
	host, client int
	backends     [3]int
}

const svcPort = 8090

var (
	lbSubnet4, lbSubnet6 = pfx("198.18.5.0/24"), pfx("2001:db8:5::/64")
	lbVIP4, lbVIP6       = ip("198.18.5.100"), ip("2001:db8:5::100")
)

// lbAddr returns the address of host number n (client 10, backends 11-13)
// in the family of subnet.
func lbAddr(subnet netip.Prefix, n int) netip.Addr {
	b := subnet.Addr().AsSlice()
	b[len(b)-1] = byte(n)
	a, _ := netip.AddrFromSlice(b)
	return a
}

func backends(subnet netip.Prefix) []netip.Addr {
	return []netip.Addr{lbAddr(subnet, 11), lbAddr(subnet, 12), lbAddr(subnet, 13)}
}

func newLBTopology(t testing.TB) *lbTopology {
	t.Helper()
	var tp lbTopology
	tp.host = newNS(t)
	h := handle(t, tp.host)
	br := addBridge(t, h, "brS", in(lbAddr(lbSubnet4, 1), lbSubnet4), in(lbAddr(lbSubnet6, 1), lbSubnet6))
	add := func(n int) int {
		addrs := []netip.Prefix{in(lbAddr(lbSubnet4, n), lbSubnet4), in(lbAddr(lbSubnet6, n), lbSubnet6)}
		return addContainer(t, tp.host, br, fmt.Sprintf("vs%d", n), addrs, []netip.Addr{lbAddr(lbSubnet4, 1), lbAddr(lbSubnet6, 1)})
	}
	tp.client = add(10)
	for i := range tp.backends {
		tp.backends[i] = add(11 + i)
		serveTagged(t, tp.backends[i], fmt.Sprintf("b%d", i))
	}
	return &tp
}

// serveTagged listens on svcPort (both families) in namespace fd. To each
// connection it sends one line, "<name> <client address it sees>", then
// echoes every line back until the client closes.
func serveTagged(t testing.TB, fd int, name string) {
	t.Helper()
	serveConns(t, fd, fmt.Sprintf("[::]:%d", svcPort), func(c net.Conn) {
		_, _ = fmt.Fprintf(c, "%s %s\n", name, remoteAddr(c))
		_, _ = io.Copy(c, c)
	})
}

// lbConn is a connection to a service: the backend that took it and the
// client address that backend saw.
type lbConn struct {
	net.Conn
	r               *bufio.Reader
	backend, source string
}

func dialService(t testing.TB, fd int, vip netip.Addr) (*lbConn, error) {
	t.Helper()
	c, err := dialTCP(fd, netip.AddrPortFrom(vip, svcPort), okTimeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(okTimeout))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, err
	}
	backend, source, _ := strings.Cut(strings.TrimSpace(line), " ")
	return &lbConn{Conn: c, r: r, backend: backend, source: source}, nil
}

// alive sends a line on an open connection and checks it comes back.
func (c *lbConn) alive(t testing.TB, what string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(okTimeout))
	_, err := io.WriteString(c, "ping\n")
	require.NoError(t, err, what)
	line, err := c.r.ReadString('\n')
	require.NoError(t, err, what)
	require.Equal(t, "ping\n", line, what)
}

// spread opens n connections to vip from the client, closing each, and
// counts them per backend; every one must see the client's own address.
func spread(t testing.TB, tp *lbTopology, vip netip.Addr, n int) map[string]int {
	t.Helper()
	subnet := lbSubnet4
	if vip.Is6() {
		subnet = lbSubnet6
	}
	counts := map[string]int{}
	for range n {
		c, err := dialService(t, tp.client, vip)
		require.NoError(t, err, "connect to %s", vip)
		counts[c.backend]++
		require.Equal(t, lbAddr(subnet, 10).String(), c.source, "the backend sees the client's own address")
		_ = c.Conn.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	return counts
}

// openServices returns a Services for table name in namespace fd, closed
// at the end of the test.
func openServices(t testing.TB, fd int, name string, hook *nftables.ChainHook) *Services {
	t.Helper()
	s, err := newServices(fd, name, hook)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// serviceRules counts the rules of the services table name in namespace
// fd; -1 if there is no such table.
func serviceRules(t testing.TB, fd int, name string) int {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	require.NoError(t, err)
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	require.NoError(t, err)
	for _, tb := range tables {
		if tb.Name != name {
			continue
		}
		n := 0
		for _, ch := range []string{chainServices, chainServicesRefuse} {
			rules, err := c.GetRules(tb, &nftables.Chain{Name: ch, Table: tb})
			require.NoError(t, err)
			n += len(rules)
		}
		return n
	}
	return -1
}

// TestPacketServices: 300 connections to a VIP reach each of three
// backends 100 times, with the client's address; a backend taken out gets
// no new connection while every established one lives on; a VIP with no
// backend refuses at once; an empty set removes the table. Both families.
func TestPacketServices(t *testing.T) {
	ctx := context.Background()
	tp := newLBTopology(t)
	const table = "cnm-lbtest"
	svc := openServices(t, tp.client, table, nftables.ChainHookOutput)
	all4, all6 := backends(lbSubnet4), backends(lbSubnet6)
	set := func(b4, b6 []netip.Addr) {
		t.Helper()
		require.NoError(t, svc.Set(ctx, []Service{{VIP: lbVIP4, Backends: b4}, {VIP: lbVIP6, Backends: b6}}))
	}

	// No rules: the VIP answers nobody.
	_, err := dialTCP(tp.client, netip.AddrPortFrom(lbVIP4, svcPort), blockedTimeout)
	require.Error(t, err, "no VIP before the rules")

	set(all4, all6)
	require.Equal(t, 4, serviceRules(t, tp.client, table), "a dnat and a refuse rule per VIP")
	for _, vip := range []netip.Addr{lbVIP4, lbVIP6} {
		counts := spread(t, tp, vip, 300)
		for _, b := range []string{"b0", "b1", "b2"} {
			assert.GreaterOrEqual(t, counts[b], 60, "%s: connections to %s", vip, b)
		}
		assert.Len(t, counts, 3, "%s: %v", vip, counts)
	}

	// One long-lived connection to each backend.
	open := map[string]*lbConn{}
	for len(open) < 3 {
		c, err := dialService(t, tp.client, lbVIP4)
		require.NoError(t, err)
		if open[c.backend] != nil {
			c.Close()
			continue
		}
		open[c.backend] = c
		t.Cleanup(func() { c.Close() })
	}

	// b1 leaves the map: no new connection reaches it, and the established
	// ones, its own included, go on.
	set([]netip.Addr{all4[0], all4[2]}, []netip.Addr{all6[0], all6[2]})
	counts := spread(t, tp, lbVIP4, 60)
	assert.Equal(t, map[string]int{"b0": 30, "b2": 30}, counts)
	for b, c := range open {
		c.alive(t, "established connection to "+b+" after b1 left the map")
	}

	// No backend: refused at once, not left to time out.
	set(nil, nil)
	require.Equal(t, 2, serviceRules(t, tp.client, table), "only the refuse rules")
	start := time.Now()
	_, err = dialTCP(tp.client, netip.AddrPortFrom(lbVIP4, svcPort), okTimeout)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	require.Less(t, time.Since(start), time.Second)
	_, err = dialTCP(tp.client, netip.AddrPortFrom(lbVIP6, svcPort), okTimeout)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	for b, c := range open {
		c.alive(t, "established connection to "+b+" with no backend in the map")
	}

	// Back again, then no services: the table is gone.
	set(all4, all6)
	assert.Len(t, spread(t, tp, lbVIP4, 3), 3)
	require.NoError(t, svc.Set(ctx, nil))
	require.Equal(t, -1, serviceRules(t, tp.client, table))
	assertNoTables(t, tp.client)
	require.NoError(t, svc.Set(ctx, nil), "deleting an absent table is no error")
	require.NoError(t, svc.Close())
	require.ErrorIs(t, svc.Set(ctx, nil), net.ErrClosed)
}

// TestServicesBadInput: each bad input is refused, naming it, and the
// table stays as it was.
func TestServicesBadInput(t *testing.T) {
	ctx := context.Background()
	fd := newNS(t)
	const table = "cnm-lbtest"
	good := []Service{{VIP: lbVIP4, Backends: backends(lbSubnet4)}}
	svc := openServices(t, fd, table, nftables.ChainHookOutput)
	require.NoError(t, svc.Set(ctx, good))
	for _, name := range []string{"", strings.Repeat("x", 300), "a\x00b"} {
		_, err := NewServices(fd, name)
		require.ErrorIs(t, err, errdefs.ErrInvalid)
		require.ErrorContains(t, err, "services table name")
	}
	for _, tc := range []struct {
		name string
		svcs []Service
		want string
	}{
		{"zero vip", []Service{{}}, "service vip"},
		{"unspecified vip", []Service{{VIP: netip.IPv4Unspecified()}}, "service vip"},
		{"vip with zone", []Service{{VIP: ip("fe80::1%eth0")}}, "service vip"},
		{"mapped vip", []Service{{VIP: ip("::ffff:198.18.5.100")}}, "service vip"},
		{"vip twice", []Service{{VIP: lbVIP4}, {VIP: lbVIP4}}, "listed twice"},
		{"backend of other family", []Service{{VIP: lbVIP4, Backends: []netip.Addr{lbAddr(lbSubnet6, 11)}}}, "backend"},
		{"zero backend", []Service{{VIP: lbVIP4, Backends: []netip.Addr{{}}}}, "backend"},
		{"backend twice", []Service{{VIP: lbVIP4, Backends: []netip.Addr{lbAddr(lbSubnet4, 11), lbAddr(lbSubnet4, 11)}}}, "backend 198.18.5.11 listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := svc.Set(ctx, tc.svcs)
			require.ErrorIs(t, err, errdefs.ErrInvalid)
			require.ErrorContains(t, err, tc.want)
			require.Equal(t, 2, serviceRules(t, fd, table), "the table is unchanged")
		})
	}
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	require.True(t, errors.Is(svc.Set(ctx2, nil), context.Canceled))
	require.Equal(t, 2, serviceRules(t, fd, table))
}

// BenchmarkServiceConnect compares the two places service rules can live,
// by the cost of a new TCP connection (connect, first byte, reset) from
// the client:
//
//   - direct: to one backend's own address, no rules: the baseline;
//   - client: to the VIP, with Services in the client's namespace (what
//     cnm does);
//   - host: to a VIP held by the bridge, with the same DNAT in the host's
//     prerouting and the hairpin masquerade of the host's firewall, so that
//     replies come back through the host.
func BenchmarkServiceConnect(b *testing.B) {
	ctx := context.Background()
	tp := newLBTopology(b)
	writeSysctl(b, tp.host, "net/ipv4/ip_forward", "1")
	all4 := backends(lbSubnet4)
	require.NoError(b, openServices(b, tp.client, "cnm-lb", nftables.ChainHookOutput).Set(ctx, []Service{{VIP: lbVIP4, Backends: all4}}))
	hostVIP := ip("198.18.5.200")
	h := handle(b, tp.host)
	br, err := h.LinkByName("brS")
	require.NoError(b, err)
	require.NoError(b, h.AddrAdd(br, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(hostVIP, 32))}))
	f := openFirewall(b, tp.host)
	require.NoError(b, f.AddNetwork(ctx, Network{ID: "S", Bridge: "brS", Subnets: []netip.Prefix{lbSubnet4, lbSubnet6}, ICC: true}))
	b.Cleanup(func() { _ = f.RemoveNetwork(ctx, "S") })
	hostSvc := openServices(b, tp.host, "cnm-lbhost", nftables.ChainHookPrerouting)
	require.NoError(b, hostSvc.Set(ctx, []Service{{VIP: hostVIP, Backends: all4}}))
	c, err := dialService(b, tp.client, hostVIP)
	require.NoError(b, err, "the host placement works")
	require.Equal(b, lbAddr(lbSubnet4, 1).String(), c.source, "the host placement masquerades")
	c.Close()

	for _, bc := range []struct {
		name string
		to   netip.Addr
	}{{"direct", all4[0]}, {"client", lbVIP4}, {"host", hostVIP}} {
		b.Run(bc.name, func(b *testing.B) {
			to := netip.AddrPortFrom(bc.to, svcPort).String()
			err := inNS(tp.client, func() error {
				d := net.Dialer{Timeout: okTimeout}
				buf := make([]byte, 1)
				for b.Loop() {
					c, err := d.Dial("tcp", to)
					if err != nil {
						return err
					}
					if _, err := c.Read(buf); err != nil {
						return err
					}
					// Reset, not close: no TIME_WAIT to run out of ports.
					_ = c.(*net.TCPConn).SetLinger(0)
					_ = c.Close()
				}
				return nil
			})
			require.NoError(b, err)
		})
	}
	require.NoError(b, hostSvc.Set(ctx, nil))
}

// BenchmarkSetServices is the cost of one client's rewrite when a backend
// comes or goes, with 1 and 10 services of 3 backends each: rules in the
// clients cost one of these per client on the network, rules on the host
// one in all.
func BenchmarkSetServices(b *testing.B) {
	ctx := context.Background()
	fd := newNS(b)
	svc := openServices(b, fd, "cnm-lb", nftables.ChainHookOutput)
	for _, n := range []int{1, 10} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			svcs := make([]Service, n)
			for i := range svcs {
				svcs[i] = Service{VIP: lbAddr(lbSubnet4, 100+i), Backends: backends(lbSubnet4)}
			}
			for b.Loop() {
				if err := svc.Set(ctx, svcs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	require.NoError(b, svc.Set(ctx, nil))
}
