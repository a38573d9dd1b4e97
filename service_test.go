//go:build linux

package cnm_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/ipam"
)

const svcPort = 80

// serveTagged listens on svcPort in the sandbox sb. To each connection it
// sends one line, "<name> <client address>", then echoes lines back.
func serveTagged(t testing.TB, sb *cnm.Sandbox, name string) {
	t.Helper()
	cnmtest.Serve(t, sb.Key(), netip.AddrPortFrom(netip.IPv6Unspecified(), svcPort), func(c net.Conn) {
		_, _ = fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
		cnmtest.Echo(c)
	})
}

// svcConn is a connection to a service and the backend that took it.
type svcConn struct {
	net.Conn
	r       *bufio.Reader
	backend string
	source  string
}

func dialSvc(t *testing.T, sb *cnm.Sandbox, to netip.Addr) (*svcConn, error) {
	t.Helper()
	c, err := cnmtest.Dial(context.Background(), sb.Key(), netip.AddrPortFrom(to, svcPort), 3*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, err
	}
	backend, source, _ := strings.Cut(strings.TrimSpace(line), " ")
	return &svcConn{Conn: c, r: r, backend: backend, source: source}, nil
}

func (c *svcConn) requireAlive(t *testing.T, what string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := io.WriteString(c, "ping\n")
	require.NoError(t, err, what)
	line, err := c.r.ReadString('\n')
	require.NoError(t, err, what)
	require.Equal(t, "ping\n", line, what)
}

// spreadOver opens n connections from sb to vip and counts them by backend.
func spreadOver(t *testing.T, sb *cnm.Sandbox, vip netip.Addr, n int, client netip.Addr) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		c, err := dialSvc(t, sb, vip)
		require.NoError(t, err, "connect to %s", vip)
		counts[c.backend]++
		require.Equal(t, client.String(), c.source, "the backend sees the client's own address")
		_ = c.Conn.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	return counts
}

// nftTables lists the nftables tables in the namespace at path.
func nftTables(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	require.NoError(t, err)
	tables, err := c.ListTables()
	require.NoError(t, err)
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	return names
}

// TestServices: three backends of service "web" share a VIP that DNS gives
// for "web"; tasks.web gives the three; 300 connections to the name reach
// each backend at least 60 times with the client's own address. After one
// backend leaves, no new connection reaches it and established ones to the
// others live on. When the last backend is deleted, the name, the rules and
// the VIP go.
func TestServices(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "svc", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.130.0.0/24")}),
		cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd30::/64")}))
	require.NoError(t, err)
	other, err := ctrl.NewNetwork(ctx, "bridge", "other", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.131.0.0/24")}))
	require.NoError(t, err)

	noUpstream := cnm.WithDNS(netip.MustParseAddr("127.0.0.1"))
	client, err := ctrl.NewSandbox(ctx, "client", noUpstream)
	require.NoError(t, err)
	epClient, err := nw.CreateEndpoint(ctx, "client")
	require.NoError(t, err)
	require.NoError(t, epClient.Join(ctx, client))
	require.Empty(t, nftTables(t, client.Key()), "no service, no table")

	var (
		eps  []*cnm.Endpoint
		sbs  []*cnm.Sandbox
		vip4 netip.Addr
	)
	for i := range 3 {
		sb, err := ctrl.NewSandbox(ctx, fmt.Sprintf("web%d", i), noUpstream)
		require.NoError(t, err)
		ep, err := nw.CreateEndpoint(ctx, fmt.Sprintf("web%d", i), cnm.WithService("web"))
		require.NoError(t, err)
		info := ep.Info()
		require.Equal(t, "web", info.Service)
		require.True(t, info.ServiceIPv4.IsValid() && info.ServiceIPv6.IsValid(), "a VIP per family")
		v4cfg, _ := nw.IPv4()
		require.True(t, v4cfg.Subnet.Contains(info.ServiceIPv4))
		if i == 0 {
			vip4 = info.ServiceIPv4
		}
		require.Equal(t, vip4, info.ServiceIPv4, "one VIP for the service")
		require.NotEqual(t, info.IPv4.Addr(), info.ServiceIPv4)
		serveTagged(t, sb, fmt.Sprintf("web%d", i))
		require.NoError(t, ep.Join(ctx, sb))
		eps, sbs = append(eps, ep), append(sbs, sb)
	}
	vip6 := eps[0].Info().ServiceIPv6
	require.Equal(t, []string{ctrl.FirewallTable()}, nftTables(t, client.Key()))

	// DNS: the name gives the VIPs, tasks.web the backends, in the
	// network's members only.
	r := cnmtest.Resolver(client.Key())
	addrs, err := lookup(t, r, "web")
	require.NoError(t, err)
	assert.ElementsMatch(t, []netip.Addr{vip4, vip6}, addrs)
	addrs, err = lookup(t, r, "tasks.web")
	require.NoError(t, err)
	var want []netip.Addr
	for _, ep := range eps {
		want = append(want, ep.Info().IPv4.Addr(), ep.Info().IPv6.Addr())
	}
	assert.ElementsMatch(t, want, addrs)
	outsider, err := ctrl.NewSandbox(ctx, "outsider", noUpstream)
	require.NoError(t, err)
	epOut, err := other.CreateEndpoint(ctx, "outsider")
	require.NoError(t, err)
	require.NoError(t, epOut.Join(ctx, outsider))
	_, err = lookup(t, cnmtest.Resolver(outsider.Key()), "web")
	require.Error(t, err, "no service name across networks")
	require.Empty(t, nftTables(t, outsider.Key()), "a sandbox on no network with services gets no table")

	// 300 connections to the name's address.
	clientAddr := epClient.Info().IPv4.Addr()
	counts := spreadOver(t, client, vip4, 300, clientAddr)
	for i := range 3 {
		assert.GreaterOrEqual(t, counts[fmt.Sprintf("web%d", i)], 60, "%v", counts)
	}
	counts6 := spreadOver(t, client, vip6, 30, epClient.Info().IPv6.Addr())
	assert.Len(t, counts6, 3, "IPv6 VIP: %v", counts6)

	// A backend is itself a client: it reaches the service too.
	c, err := dialSvc(t, sbs[0], vip4)
	require.NoError(t, err)
	c.Close()

	open := map[string]*svcConn{}
	for len(open) < 3 {
		c, err := dialSvc(t, client, vip4)
		require.NoError(t, err)
		if open[c.backend] != nil {
			c.Close()
			continue
		}
		open[c.backend] = c
		t.Cleanup(func() { c.Close() })
	}

	// web1 leaves: no new connection reaches it; the others' established
	// connections live on.
	require.NoError(t, eps[1].Leave(ctx, sbs[1]))
	counts = spreadOver(t, client, vip4, 60, clientAddr)
	assert.Equal(t, map[string]int{"web0": 30, "web2": 30}, counts)
	open["web0"].requireAlive(t, "established connection to web0 after web1 left")
	open["web2"].requireAlive(t, "established connection to web2 after web1 left")
	addrs, err = lookup(t, r, "tasks.web")
	require.NoError(t, err)
	assert.Len(t, addrs, 4, "tasks.web: the two live backends")

	// It joins again: it takes connections again.
	require.NoError(t, eps[1].Join(ctx, sbs[1]))
	assert.Len(t, spreadOver(t, client, vip4, 3, clientAddr), 3)

	// A client that joins later gets the rules at its join.
	late, err := ctrl.NewSandbox(ctx, "late", noUpstream)
	require.NoError(t, err)
	epLate, err := nw.CreateEndpoint(ctx, "late")
	require.NoError(t, err)
	require.NoError(t, epLate.Join(ctx, late))
	assert.Len(t, spreadOver(t, late, vip4, 3, epLate.Info().IPv4.Addr()), 3)
	require.NoError(t, epLate.Leave(ctx, late))
	require.Empty(t, nftTables(t, late.Key()), "a sandbox that left the network loses its table")

	// Every backend's sandbox goes: the service, its name, its rules and
	// its VIPs go with the last.
	for _, c := range open {
		c.Close()
	}
	for _, sb := range sbs {
		require.NoError(t, sb.Delete(ctx))
	}
	_, err = lookup(t, r, "web")
	require.Error(t, err, "the service's name is gone")
	require.Empty(t, nftTables(t, client.Key()), "the client's table is gone")
	require.NoError(t, ctrl.Settle(ctx))
	ep, err := nw.CreateEndpoint(ctx, "reuse", cnm.WithIPv4Address(vip4))
	require.NoError(t, err, "the VIP is free again")
	require.NoError(t, ep.Delete(ctx))

	deleteAll(t, ctrl)
	cnmtest.AssertNoLeaks(t, host)
}

// TestServicesRestart: a new controller keeps the service's VIP and its
// backends, and the client's table.
func TestServicesRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	host := cnmtest.NewHostNS(t)
	dataDir := t.TempDir()
	opts := append(host.Options(), cnm.WithDataDir(dataDir))
	ctrl, err := cnm.New(opts...)
	require.NoError(t, err)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "svc", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.132.0.0/24")}))
	require.NoError(t, err)
	noUpstream := cnm.WithDNS(netip.MustParseAddr("127.0.0.1"))
	client, err := ctrl.NewSandbox(ctx, "client", noUpstream)
	require.NoError(t, err)
	epClient, err := nw.CreateEndpoint(ctx, "client")
	require.NoError(t, err)
	require.NoError(t, epClient.Join(ctx, client))
	for i := range 2 {
		sb, err := ctrl.NewSandbox(ctx, fmt.Sprintf("web%d", i), noUpstream)
		require.NoError(t, err)
		ep, err := nw.CreateEndpoint(ctx, fmt.Sprintf("web%d", i), cnm.WithService("web"))
		require.NoError(t, err)
		serveTagged(t, sb, fmt.Sprintf("web%d", i))
		require.NoError(t, ep.Join(ctx, sb))
	}
	ep0, err := nw.EndpointByName("web0")
	require.NoError(t, err)
	vip := ep0.Info().ServiceIPv4
	require.NoError(t, ctrl.Close())

	ctrl, err = cnm.New(opts...)
	require.NoError(t, err)
	nw, err = ctrl.NetworkByName("svc")
	require.NoError(t, err)
	ep0, err = nw.EndpointByName("web0")
	require.NoError(t, err)
	require.Equal(t, vip, ep0.Info().ServiceIPv4, "the VIP survives a restart")
	client, err = ctrl.SandboxByContainerID("client")
	require.NoError(t, err)
	assert.Len(t, spreadOver(t, client, vip, 4, epClient.Info().IPv4.Addr()), 2)
	addrs, err := lookup(t, cnmtest.Resolver(client.Key()), "web")
	require.NoError(t, err)
	assert.Equal(t, []netip.Addr{vip}, addrs)
	// A new endpoint of the service gets the same VIP; one of another
	// service does not.
	ep2, err := nw.CreateEndpoint(ctx, "web2", cnm.WithService("web"))
	require.NoError(t, err)
	require.Equal(t, vip, ep2.Info().ServiceIPv4)
	ep3, err := nw.CreateEndpoint(ctx, "api0", cnm.WithService("api"))
	require.NoError(t, err)
	require.NotEqual(t, vip, ep3.Info().ServiceIPv4)
	require.NoError(t, ep3.Delete(ctx))
	require.NoError(t, ep2.Delete(ctx))
	deleteAll(t, ctrl)
	require.NoError(t, ctrl.Close())
	cnmtest.AssertNoLeaks(t, host)
}

// BenchmarkServiceConnect is the cost of a new TCP connection (connect,
// first byte, reset) from a client sandbox to a service's VIP with three
// backends, against a direct connection to one backend in the same run.
func BenchmarkServiceConnect(b *testing.B) {
	ctx := context.Background()
	ctrl, _ := cnmtest.NewController(b)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "svc", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.133.0.0/24")}))
	require.NoError(b, err)
	var backend netip.Addr
	for i := range 3 {
		sb, err := ctrl.NewSandbox(ctx, fmt.Sprintf("web%d", i))
		require.NoError(b, err)
		ep, err := nw.CreateEndpoint(ctx, fmt.Sprintf("web%d", i), cnm.WithService("web"))
		require.NoError(b, err)
		serveTagged(b, sb, fmt.Sprintf("web%d", i))
		require.NoError(b, ep.Join(ctx, sb))
		backend = ep.Info().IPv4.Addr()
	}
	client, err := ctrl.NewSandbox(ctx, "client")
	require.NoError(b, err)
	ep, err := nw.CreateEndpoint(ctx, "client")
	require.NoError(b, err)
	require.NoError(b, ep.Join(ctx, client))
	vip := ep.Info().ServiceIPv4
	if !vip.IsValid() {
		web, err := nw.EndpointByName("web0")
		require.NoError(b, err)
		vip = web.Info().ServiceIPv4
	}
	for _, bc := range []struct {
		name string
		to   netip.Addr
	}{{"direct", backend}, {"vip", vip}} {
		b.Run(bc.name, func(b *testing.B) {
			to := netip.AddrPortFrom(bc.to, svcPort).String()
			err := cnmtest.Do(ctx, client.Key(), func() error {
				d := net.Dialer{Timeout: 3 * time.Second}
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
	deleteAll(b, ctrl)
}

// TestServiceVIPExhausted: a service whose VIP does not fit in the subnet
// is refused at CreateEndpoint, and the endpoint's own address is free
// again.
func TestServiceVIPExhausted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	// A /30: the gateway and one address.
	nw, err := ctrl.NewNetwork(ctx, "bridge", "tiny", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.134.0.0/30")}))
	require.NoError(t, err)
	_, err = nw.CreateEndpoint(ctx, "web", cnm.WithService("web"))
	require.ErrorIs(t, err, ipam.ErrPoolExhausted)
	require.ErrorContains(t, err, `service "web"`)
	assert.Empty(t, nw.Endpoints())
	ep, err := nw.CreateEndpoint(ctx, "plain")
	require.NoError(t, err, "the failed endpoint's address is free again")
	assert.Equal(t, netip.MustParsePrefix("10.134.0.2/30"), ep.Info().IPv4)
	deleteAll(t, ctrl)
	cnmtest.AssertNoLeaks(t, host)
}
