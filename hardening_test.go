package cnm_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/store"
)

// A port plugged back into a bridge that a restore made again gets what a
// port of its network gets at Join: isolation with ICC off, and the MTU.
func TestRestoreReplugsPortWithNetworkSettings(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "noicc",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.94.0.0/24")}),
		cnm.WithDriverOptions(map[string]string{
			"com.docker.network.bridge.enable_icc": "false",
			"com.docker.network.bridge.name":       "br-replug",
			"com.docker.network.driver.mtu":        "1400",
		}))
	require.NoError(t, err)
	a, _ := container(t, nw, "a")
	b, epB := container(t, nw, "b")
	require.NoError(t, ctrl.Close())

	// Someone deletes the bridge, and puts the ports' MTU back to default.
	require.NoError(t, host.NS.DeleteLink(ctx, "br-replug"))
	links, err := host.NS.Links(ctx)
	require.NoError(t, err)
	for _, l := range links {
		if l.Kind == "veth" {
			require.NoError(t, host.NS.SetLinkMTU(ctx, l.Index, 1500))
		}
	}

	ctrl2 := reopen(t, host)
	br, err := host.NS.LinkByName(ctx, "br-replug")
	require.NoError(t, err, "the bridge is made again")
	links, err = host.NS.Links(ctx)
	require.NoError(t, err)
	ports := 0
	for _, l := range links {
		if l.MasterIndex == br.Index {
			ports++
			assert.Equal(t, 1400, l.MTU, "port %s has the network's MTU again", l.Name)
		}
	}
	assert.Equal(t, 2, ports, "both ports plugged back")
	err = cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 80), blockedTimeout)
	assert.Error(t, err, "icc=false still blocks container to container after the re-plug")
	require.NoError(t, cnmtest.TCPExchange(ctx, host.Path, a.Key(), netip.MustParseAddrPort("10.94.0.1:80"), tcpTimeout),
		"the re-plugged port reaches its gateway")
	deleteAll(t, ctrl2)
	cnmtest.AssertNoLeaks(t, host)
}

// Leave returns before the kernel deletes the interface: the name is free
// at once for the next Join, the old interface carries no traffic, and
// once settled it is gone with its host end.
func TestLeaveRetiresInterfaceAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.95.0.0/24")}))
	require.NoError(t, err)
	a, epA := container(t, nw, "a")
	b, epB := container(t, nw, "b")
	addr := epA.Info().IPv4

	require.NoError(t, epA.Leave(ctx, a))
	names := linkNames(t, a.Key())
	assert.NotContains(t, names, "eth0", "the name is free at once")
	assert.Empty(t, epA.Info().InterfaceName)

	// Joined again at once: same address, the new eth0 carries the traffic.
	require.NoError(t, epA.Join(ctx, a))
	assert.Equal(t, addr, epA.Info().IPv4)
	require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(addr, 80), tcpTimeout))

	require.NoError(t, epB.Leave(ctx, b))
	require.NoError(t, ctrl.Settle(ctx))
	assert.Equal(t, "lo", linkNames(t, b.Key()), "after Settle the left interface is gone")
	links, err := host.NS.Links(ctx)
	require.NoError(t, err)
	veths := 0
	for _, l := range links {
		if l.Kind == "veth" {
			veths++
		}
	}
	assert.Equal(t, 1, veths, "one host end, a's, is left")
	require.NoError(t, epB.Delete(ctx))
	deleteAll(t, ctrl)
	require.NoError(t, ctrl.Settle(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// Two controllers share one host namespace: each restarts and sweeps only
// what carries its own identity, and the other's networks keep working.
func TestTwoControllersInOneHostNamespace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrlA, host := cnmtest.NewController(t)
	dirB := t.TempDir()
	optsB := []cnm.Option{cnm.WithHostNamespace(host.Path), cnm.WithRunDir(dirB + "/run"), cnm.WithDataDir(dirB + "/data")}
	ctrlB, err := cnm.New(optsB...)
	require.NoError(t, err)
	require.NotEqual(t, ctrlA.ID(), ctrlB.ID())
	require.NotEqual(t, ctrlA.FirewallTable(), ctrlB.FirewallTable())

	nwA, err := ctrlA.NewNetwork(ctx, "bridge", "a", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.96.0.0/24")}))
	require.NoError(t, err)
	nwB, err := ctrlB.NewNetwork(ctx, "bridge", "b", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.97.0.0/24")}))
	require.NoError(t, err)
	a1, _ := container(t, nwA, "a1")
	b1, epB1 := container(t, nwB, "b1")
	b2, _ := container(t, nwB, "b2")

	// Isolation holds across the two controllers' tables.
	err = cnmtest.TCPExchange(ctx, b1.Key(), a1.Key(), addrPort(epB1.Info().IPv4, 80), blockedTimeout)
	assert.Error(t, err, "a network of A cannot reach one of B")

	// A restarts twice (a restore sweeps each time): B's bridge, rules and
	// sandboxes survive, and keep talking.
	for range 2 {
		require.NoError(t, ctrlA.Close())
		ctrlA = reopen(t, host)
	}
	require.NoError(t, cnmtest.TCPExchange(ctx, b1.Key(), b2.Key(), addrPort(epB1.Info().IPv4, 81), tcpTimeout))
	_, err = osl.OpenNamespace(ctx, b1.Key())
	require.NoError(t, err, "B's sandbox survives A's restarts")

	deleteAll(t, ctrlA)
	deleteAll(t, ctrlB)
	require.NoError(t, ctrlB.Close())
	cnmtest.AssertNoLeaks(t, host)
}

// WithNetnsPath naming the controller's own host namespace is refused: a
// sandbox's Delete would remove interfaces from the host.
func TestNetnsPathOfHostNamespaceRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	_, err := ctrl.NewSandbox(ctx, "c", cnm.WithNetnsPath(host.Path))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, host.Path)
	assert.Empty(t, ctrl.Sandboxes())
	cnmtest.AssertNoLeaks(t, host)
}

// An address stays reserved while an interface still holds it: a socket
// open inside a deleted sandbox keeps its namespace, and so its interface,
// alive; the address is handed out again only once cnm removed it.
func TestAddressHeldUntilInterfaceGone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.98.0.0/29")}))
	require.NoError(t, err)
	a, epA := container(t, nw, "a")
	held := epA.Info().IPv4.Addr()
	ln, err := cnmtest.Listen(ctx, a.Key(), netip.AddrPortFrom(held, 80))
	require.NoError(t, err)
	defer ln.Close()

	start := time.Now()
	require.NoError(t, a.Delete(ctx))
	// Until cnm removed the interface, the address is not handed out.
	for time.Since(start) < 300*time.Millisecond {
		ep, err := nw.CreateEndpoint(ctx, "probe", cnm.WithIPv4Address(held))
		require.ErrorIs(t, err, cnm.ErrExists, "address %s handed out while its interface lives", held)
		require.Nil(t, ep)
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, ctrl.Settle(ctx))
	links, err := host.NS.Links(ctx)
	require.NoError(t, err)
	for _, l := range links {
		assert.NotEqual(t, "veth", l.Kind, "the lingering pair was deleted: %s", l.Name)
	}
	ep, err := nw.CreateEndpoint(ctx, "probe", cnm.WithIPv4Address(held))
	require.NoError(t, err, "once the interface is gone, the address is free")
	require.NoError(t, ep.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// failingStore fails every write whose ops delete a key with prefix.
type failingStore struct {
	store.Store
	prefix string
}

func (s failingStore) Txn(ctx context.Context, ops ...store.Op) error {
	for _, op := range ops {
		if op.Delete && strings.HasPrefix(op.Key, s.prefix) {
			return errInjected
		}
	}
	return s.Store.Txn(ctx, ops...)
}

// A network whose record cannot be deleted keeps its subnet and name
// reserved until the next New has finished the deletion.
func TestFailedNetworkRecordDeleteKeepsSubnet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	subnet := cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.99.0.0/24")})
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", subnet)
	require.NoError(t, err)
	cnm.WrapStores(ctrl, func(s store.Store) store.Store { return failingStore{Store: s, prefix: "network/"} })
	require.ErrorIs(t, nw.Delete(ctx), errInjected)
	_, err = ctrl.NewNetwork(ctx, "bridge", "m", subnet)
	require.ErrorIs(t, err, ipam.ErrOverlap, "the subnet is not reusable while the record claims it")
	_, err = ctrl.NewNetwork(ctx, "bridge", "n")
	require.ErrorIs(t, err, cnm.ErrExists, "nor the name")

	require.NoError(t, ctrl.Close())
	ctrl2 := reopen(t, host)
	_, err = ctrl2.NetworkByName("n")
	require.ErrorIs(t, err, cnm.ErrNotFound, "the next New finished the deletion")
	nw2, err := ctrl2.NewNetwork(ctx, "bridge", "n", subnet)
	require.NoError(t, err, "subnet and name are free now")
	require.NoError(t, nw2.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// A failed drop of the namespace leaves the sandbox as it was; a failed
// background removal keeps the address reserved until the next New.
func TestPartialSandboxDeleteStaysCoherent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.100.0.0/24")}))
	require.NoError(t, err)
	sb, ep := container(t, nw, "c")
	addr := ep.Info().IPv4.Addr()

	cnm.SetFaultHook(ctrl, failAt("sandbox-delete:namespace"))
	require.ErrorIs(t, sb.Delete(ctx), errInjected)
	assert.Equal(t, sb.ID(), ep.Info().SandboxID, "still joined")
	assert.Contains(t, linkNames(t, sb.Key()), "eth0")
	require.NoError(t, cnmtest.TCPExchange(ctx, host.Path, sb.Key(), netip.MustParseAddrPort("10.100.0.1:80"), tcpTimeout))

	cnm.SetFaultHook(ctrl, failAt("reap:driver"))
	require.NoError(t, sb.Delete(ctx), "the sandbox goes; its interface's removal fails in the background")
	require.ErrorIs(t, ctrl.Settle(ctx), errInjected)
	_, err = nw.CreateEndpoint(ctx, "probe", cnm.WithIPv4Address(addr))
	require.ErrorIs(t, err, cnm.ErrExists, "the address stays reserved: its interface may live on")
	cnm.SetFaultHook(ctrl, nil)

	require.NoError(t, ctrl.Close())
	ctrl2 := reopen(t, host)
	nw2, err := ctrl2.NetworkByName("n")
	require.NoError(t, err)
	assert.Empty(t, nw2.Endpoints())
	probe, err := nw2.CreateEndpoint(ctx, "probe", cnm.WithIPv4Address(addr))
	require.NoError(t, err, "the next New removed the interface and released the address")
	require.NoError(t, probe.Delete(ctx))
	require.NoError(t, nw2.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// A link with an MTU below 1280 has no IPv6 in the kernel: an IPv4 network
// with such an MTU still joins and carries traffic.
func TestLowMTUNetworkJoins(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "small",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.101.0.0/24")}),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.driver.mtu": "1200"}))
	require.NoError(t, err)
	a, _ := container(t, nw, "a")
	b, epB := container(t, nw, "b")
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 80), tcpTimeout))
	deleteAll(t, ctrl)
	cnmtest.AssertNoLeaks(t, host)
}

// A sandbox record written by an older cnm with a value this one refuses
// (an IPv6 zone in a name server) is taken back without that value: it is
// never written to a file again.
func TestRestoreDropsRefusedSandboxSettings(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.102.0.0/24")}))
	require.NoError(t, err)
	sb, err := ctrl.NewSandbox(ctx, "c", cnm.WithDNS(netip.MustParseAddr("192.0.2.53")))
	require.NoError(t, err)
	require.NoError(t, ctrl.Close())

	st, err := store.OpenRuntime(host.RunDir, "")
	require.NoError(t, err)
	kv, err := st.Get(ctx, "sandbox/"+sb.ID())
	require.NoError(t, err)
	old := strings.Replace(string(kv.Value), `"192.0.2.53"`, `"192.0.2.53","fe80::1%x"`, 1)
	require.NotEqual(t, string(kv.Value), old)
	require.NoError(t, st.Txn(ctx, store.Put(kv.Key, []byte(old))))
	require.NoError(t, st.Close())

	ctrl2 := reopen(t, host)
	sb2, err := ctrl2.SandboxByID(sb.ID())
	require.NoError(t, err)
	assert.Equal(t, []netip.Addr{netip.MustParseAddr("192.0.2.53")}, cnm.SandboxDNS(sb2), "the zoned server is dropped, the other kept")
	resolv, err := os.ReadFile(sb2.ResolvConfPath())
	require.NoError(t, err)
	assert.NotContains(t, string(resolv), "fe80::1", "never written")
	nw2, err := ctrl2.NetworkByID(nw.ID())
	require.NoError(t, err)
	ep, err := nw2.CreateEndpoint(ctx, "c")
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb2))
	deleteAll(t, ctrl2)
	cnmtest.AssertNoLeaks(t, host)
}
