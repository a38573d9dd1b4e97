package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
)

// defaultRoutes returns "gateway dev-name" for each default route of one
// family in the sandbox.
func defaultRoutes(t *testing.T, sb *cnm.Sandbox, family int) []string {
	t.Helper()
	ctx := context.Background()
	ns, err := osl.OpenNamespace(ctx, sb.Key())
	require.NoError(t, err)
	defer ns.Close()
	routes, err := ns.Routes(ctx, family)
	require.NoError(t, err)
	links, err := ns.Links(ctx)
	require.NoError(t, err)
	names := map[int]string{}
	for _, l := range links {
		names[l.Index] = l.Name
	}
	var out []string
	for _, r := range routes {
		if r.Dst.Bits() == 0 {
			out = append(out, r.Gateway.String()+" "+names[r.LinkIndex])
		}
	}
	return out
}

func TestGatewayChoiceAndMove(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	mk := func(name, subnet string, opts ...cnm.NetworkOption) *cnm.Network {
		nw, err := ctrl.NewNetwork(ctx, "bridge", name, append(opts, cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(subnet)}))...)
		require.NoError(t, err)
		return nw
	}
	nb := mk("b-net", "10.60.0.0/24")
	na := mk("a-net", "10.61.0.0/24")
	ni := mk("0-internal", "10.62.0.0/24", cnm.WithInternal())
	sb, err := ctrl.NewSandbox(ctx, "c")
	require.NoError(t, err)
	join := func(nw *cnm.Network, opts ...cnm.JoinOption) *cnm.Endpoint {
		ep, err := nw.CreateEndpoint(ctx, "ep-"+nw.Name())
		require.NoError(t, err)
		require.NoError(t, ep.Join(ctx, sb, opts...))
		return ep
	}

	epI := join(ni)
	assert.Empty(t, defaultRoutes(t, sb, 4), "an internal network gives no default route")
	epB := join(nb)
	assert.Equal(t, []string{"10.60.0.1 eth1"}, defaultRoutes(t, sb, 4))
	epA := join(na)
	assert.Equal(t, []string{"10.61.0.1 eth2"}, defaultRoutes(t, sb, 4), "equal priority: network name decides (a-net < b-net)")

	// Leave the gateway endpoint: the route moves to the next best, b-net.
	require.NoError(t, epA.Leave(ctx, sb))
	assert.Equal(t, []string{"10.60.0.1 eth1"}, defaultRoutes(t, sb, 4))
	assert.Equal(t, "", epA.Info().InterfaceName)
	assert.Equal(t, netip.MustParsePrefix("10.61.0.2/24"), epA.Info().IPv4, "addresses are kept across Leave")

	// Rejoin with a lower priority: b-net keeps the route; the free eth2 is reused.
	require.NoError(t, epA.Join(ctx, sb, cnm.WithGatewayPriority(-1)))
	assert.Equal(t, "eth2", epA.Info().InterfaceName)
	assert.Equal(t, netip.MustParsePrefix("10.61.0.2/24"), epA.Info().IPv4, "same address after rejoin")
	assert.Equal(t, []string{"10.60.0.1 eth1"}, defaultRoutes(t, sb, 4))

	// Leaving the internal endpoint frees eth0 for the next join.
	require.NoError(t, epI.Leave(ctx, sb))
	require.NoError(t, epB.Leave(ctx, sb))
	assert.Equal(t, []string{"10.61.0.1 eth2"}, defaultRoutes(t, sb, 4))
	require.NoError(t, epB.Join(ctx, sb))
	assert.Equal(t, "eth0", epB.Info().InterfaceName)
	assert.Equal(t, []string{"10.60.0.1 eth0"}, defaultRoutes(t, sb, 4))

	require.NoError(t, epA.Leave(ctx, sb))
	require.NoError(t, epB.Leave(ctx, sb))
	assert.Empty(t, defaultRoutes(t, sb, 4), "no endpoint, no default route")
	for _, ep := range []*cnm.Endpoint{epA, epB, epI} {
		require.NoError(t, ep.Delete(ctx))
	}
	require.NoError(t, sb.Delete(ctx))
	for _, nw := range ctrl.Networks() {
		require.NoError(t, nw.Delete(ctx))
	}
	cnmtest.AssertNoLeaks(t, host)
}

func TestDualStackTCPOverIPv6(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "ds",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.70.0.0/24")}),
		cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd70::/64")}))
	require.NoError(t, err)
	a, epA := container(t, nw, "a")
	b, epB := container(t, nw, "b")
	assert.Equal(t, netip.MustParsePrefix("fd70::2/64"), epA.Info().IPv6)
	assert.Equal(t, netip.MustParseAddr("fd70::1"), epA.Info().GatewayIPv6)
	assert.Equal(t, []string{"fd70::1 eth0"}, defaultRoutes(t, a, 6))

	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv6, 8080), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(epA.Info().IPv6, 8080), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, host.Path, a.Key(), netip.MustParseAddrPort("[fd70::1]:80"), tcpTimeout))

	require.NoError(t, a.Delete(ctx))
	require.NoError(t, b.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

func TestNullAndHostDrivers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	none, err := ctrl.NewNetwork(ctx, "null", "none")
	require.NoError(t, err)
	_, hasV4 := none.IPv4()
	assert.False(t, hasV4)
	hostNet, err := ctrl.NewNetwork(ctx, "host", "host")
	require.NoError(t, err)

	// null: the sandbox has its loopback only.
	sb, err := ctrl.NewSandbox(ctx, "isolated")
	require.NoError(t, err)
	ep, err := none.CreateEndpoint(ctx, "isolated")
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	assert.Equal(t, "lo", linkNames(t, sb.Key()))
	assert.False(t, ep.Info().IPv4.IsValid())
	require.NoError(t, cnmtest.TCPExchange(ctx, sb.Key(), sb.Key(), netip.MustParseAddrPort("127.0.0.1:7000"), tcpTimeout))

	// host: the sandbox is the host namespace itself.
	hsb, err := ctrl.NewSandbox(ctx, "hosty", cnm.WithHostNetwork())
	require.NoError(t, err)
	assert.Equal(t, host.Path, hsb.Key())
	hep, err := hostNet.CreateEndpoint(ctx, "hosty")
	require.NoError(t, err)
	require.NoError(t, hep.Join(ctx, hsb))

	// Mixing is refused both ways.
	bad, err := hostNet.CreateEndpoint(ctx, "bad")
	require.NoError(t, err)
	err = bad.Join(ctx, sb)
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, "not the host namespace")
	br, err := ctrl.NewNetwork(ctx, "bridge", "br", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.71.0.0/24")}))
	require.NoError(t, err)
	brep, err := br.CreateEndpoint(ctx, "brep")
	require.NoError(t, err)
	err = brep.Join(ctx, hsb)
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, "shares the host namespace")

	// Deleting a host-network sandbox keeps the host namespace.
	require.NoError(t, hsb.Delete(ctx))
	_, err = os.Stat(host.Path)
	require.NoError(t, err)
	assert.Contains(t, linkNames(t, host.Path), "lo", "the host namespace is alive")

	require.NoError(t, sb.Delete(ctx))
	for _, e := range []*cnm.Endpoint{bad, brep} {
		require.NoError(t, e.Delete(ctx))
	}
	for _, nw := range ctrl.Networks() {
		require.NoError(t, nw.Delete(ctx))
	}
	cnmtest.AssertNoLeaks(t, host)
}

func TestAdoptedNamespaceIsKept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	// The runtime made this namespace; cnm must leave it alive.
	mine, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "runtime-ns"))
	require.NoError(t, err)
	defer mine.Delete()

	// The runtime already put its own eth0 there.
	other, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "other"))
	require.NoError(t, err)
	defer other.Delete()
	require.NoError(t, other.AddVeth(ctx, osl.VethSpec{HostName: "x", PeerName: "eth0", PeerNS: mine}))

	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.72.0.0/24")}))
	require.NoError(t, err)
	sb, err := ctrl.NewSandbox(ctx, "c", cnm.WithNetnsPath(mine.Path()))
	require.NoError(t, err)
	assert.Equal(t, mine.Path(), sb.Key())
	ep, err := nw.CreateEndpoint(ctx, "c")
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	assert.Equal(t, "eth1", ep.Info().InterfaceName, "the runtime's eth0 is skipped")
	assert.Equal(t, "eth0,eth1,lo", linkNames(t, mine.Path()))

	// A cancelled context does not stop a delete halfway.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	require.NoError(t, sb.Delete(cancelled))
	require.NoError(t, ctrl.Settle(ctx)) // the interface goes in the background
	assert.Equal(t, "eth0,lo", linkNames(t, mine.Path()), "cnm's interface is gone, the runtime's and the namespace stay")
	_, err = os.Stat(mine.Path())
	require.NoError(t, err)

	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

func TestSandboxFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	dir := t.TempDir()
	sb, err := ctrl.NewSandbox(ctx, "c",
		cnm.WithHostname("web"), cnm.WithDomainname("example.org"),
		cnm.WithDNS(netip.MustParseAddr("192.0.2.53")),
		cnm.WithExtraHosts(cnm.ExtraHost{Name: "db", IP: netip.MustParseAddr("192.0.2.10")}),
		cnm.WithHostsPath(filepath.Join(dir, "hosts")), cnm.WithResolvConfPath(filepath.Join(dir, "resolv.conf")))
	require.NoError(t, err)
	resolv, err := os.ReadFile(filepath.Join(dir, "resolv.conf"))
	require.NoError(t, err)
	assert.Equal(t, "nameserver 192.0.2.53\n", string(resolv), "before any join: the server given")
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.73.0.0/24")}))
	require.NoError(t, err)
	ep, err := nw.CreateEndpoint(ctx, "c")
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))

	hosts, err := os.ReadFile(filepath.Join(dir, "hosts"))
	require.NoError(t, err)
	assert.Contains(t, string(hosts), "127.0.0.1\tlocalhost\n")
	assert.Contains(t, string(hosts), "192.0.2.10\tdb\n")
	assert.Contains(t, string(hosts), "10.73.0.2\tweb.example.org web\n")
	resolv, err = os.ReadFile(filepath.Join(dir, "resolv.conf"))
	require.NoError(t, err)
	assert.Equal(t, "nameserver 127.0.0.11\noptions ndots:0\n", string(resolv),
		"after a join, the embedded DNS server (which forwards to 192.0.2.53)")

	require.NoError(t, ep.Leave(ctx, sb))
	hosts, err = os.ReadFile(filepath.Join(dir, "hosts"))
	require.NoError(t, err)
	assert.NotContains(t, string(hosts), "10.73.0.2", "leave removes the address line")

	require.NoError(t, ep.Delete(ctx))
	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// TestConcurrentSandboxes runs setups and teardowns of many sandboxes in
// parallel on one network (run it with -race).
func TestConcurrentSandboxes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.74.0.0/24")}))
	require.NoError(t, err)
	const workers, each = 8, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	seen := sync.Map{}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				name := fmt.Sprintf("c-%d-%d", w, i)
				sb, err := ctrl.NewSandbox(ctx, name)
				if err != nil {
					errs <- err
					return
				}
				ep, err := nw.CreateEndpoint(ctx, name)
				if err != nil {
					errs <- err
					return
				}
				if _, dup := seen.LoadOrStore(ep.Info().IPv4, name); dup {
					errs <- fmt.Errorf("address %s handed out twice", ep.Info().IPv4)
				}
				if err := ep.Join(ctx, sb); err != nil {
					errs <- err
					return
				}
				if i%2 == 0 { // half leave explicitly, half go with their sandbox
					if err := ep.Leave(ctx, sb); err != nil {
						errs <- err
					}
					if err := ep.Delete(ctx); err != nil {
						errs <- err
					}
				}
				if err := sb.Delete(ctx); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Empty(t, nw.Endpoints())
	assert.Empty(t, ctrl.Sandboxes())
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

func TestLookupsAndClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithLabels(map[string]string{"team": "web"}))
	require.NoError(t, err)
	v4, ok := nw.IPv4()
	require.True(t, ok)
	assert.Equal(t, netip.MustParsePrefix("172.17.0.0/16"), v4.Subnet, "first default pool")
	assert.Equal(t, netip.MustParseAddr("172.17.0.1"), v4.Gateway)
	assert.Equal(t, "web", nw.Labels()["team"])
	nw2, err := ctrl.NewNetwork(ctx, "bridge", "m")
	require.NoError(t, err)
	v4, _ = nw2.IPv4()
	assert.Equal(t, netip.MustParsePrefix("172.18.0.0/16"), v4.Subnet, "next default pool")

	got, err := ctrl.NetworkByName("n")
	require.NoError(t, err)
	assert.Same(t, nw, got)
	got, err = ctrl.NetworkByID(nw.ID())
	require.NoError(t, err)
	assert.Same(t, nw, got)
	_, err = ctrl.NetworkByName("zz")
	require.ErrorIs(t, err, cnm.ErrNotFound)
	assert.Equal(t, []string{"m", "n"}, []string{ctrl.Networks()[0].Name(), ctrl.Networks()[1].Name()})

	ep, err := nw.CreateEndpoint(ctx, "e")
	require.NoError(t, err)
	gotEp, err := nw.EndpointByName("e")
	require.NoError(t, err)
	assert.Same(t, ep, gotEp)
	gotEp, err = nw.EndpointByID(ep.ID())
	require.NoError(t, err)
	assert.Same(t, ep, gotEp)
	sb, err := ctrl.NewSandbox(ctx, "cid")
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	gotSb, err := ctrl.SandboxByID(sb.ID())
	require.NoError(t, err)
	assert.Same(t, sb, gotSb)
	assert.Equal(t, "cid", sb.ContainerID())
	assert.Equal(t, []*cnm.Endpoint{ep}, sb.Endpoints())

	// Close keeps the data plane: the namespace and its interface survive.
	require.NoError(t, ctrl.Close())
	require.NoError(t, ctrl.Close(), "Close twice")
	assert.Equal(t, "eth0,lo", linkNames(t, sb.Key()))
	_, err = ctrl.NewNetwork(ctx, "bridge", "after")
	require.ErrorIs(t, err, cnm.ErrClosed)
	require.ErrorIs(t, sb.Delete(ctx), cnm.ErrClosed)

	// The next controller takes it all back and can remove it.
	ctrl2 := reopen(t, host)
	sb2, err := ctrl2.SandboxByContainerID("cid")
	require.NoError(t, err)
	require.NoError(t, sb2.Delete(ctx))
	for _, n := range ctrl2.Networks() {
		for _, e := range n.Endpoints() {
			require.NoError(t, e.Delete(ctx))
		}
		require.NoError(t, n.Delete(ctx))
	}
	cnmtest.AssertNoLeaks(t, host)
}

// TestCloseWaitsForOperations closes the controller while joins run: every
// operation either completes or fails with ErrClosed, and nothing changes in
// the kernel once Close has returned.
func TestCloseWaitsForOperations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.75.0.0/24")}))
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				name := fmt.Sprintf("c-%d-%d", w, i)
				sb, err := ctrl.NewSandbox(ctx, name)
				if err == nil {
					var ep *cnm.Endpoint
					if ep, err = nw.CreateEndpoint(ctx, name); err == nil {
						err = ep.Join(ctx, sb)
					}
				}
				if err != nil {
					if !errors.Is(err, cnm.ErrClosed) {
						errs <- err
					}
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, ctrl.Close())
	before := linkNames(t, host.Path)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Equal(t, before, linkNames(t, host.Path), "no kernel change after Close returned")

	// Close kept the data plane; the next controller takes it back whole and
	// removes it.
	ctrl2 := reopen(t, host)
	deleteAll(t, ctrl2)
	cnmtest.AssertNoLeaks(t, host)
}
