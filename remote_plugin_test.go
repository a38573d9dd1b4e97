package cnm_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/internal/plugintest"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin"
	"github.com/seed53641549/cnm/plugin/protocol"
)

// pluginDirs are a test's plugin directories, empty.
type pluginDirs struct{ sockets, specs string }

func newPluginDirs(t testing.TB) pluginDirs {
	d := t.TempDir()
	return pluginDirs{sockets: filepath.Join(d, "run"), specs: filepath.Join(d, "etc")}
}

func (d pluginDirs) option() cnm.Option {
	return cnm.WithPluginDirs([]string{d.sockets}, []string{d.specs})
}

// startVeth serves the SDK veth plugin as <name>.sock in the socket dir,
// making its links in host.
func startVeth(t *testing.T, dirs pluginDirs, name string, host *cnmtest.HostNS) *plugintest.VethPlugin {
	t.Helper()
	p, err := plugintest.StartVeth(filepath.Join(dirs.sockets, name+".sock"), host.Path)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// newPluginController makes a controller in host with opts, closed when the
// test ends. It skips the test when New does not set up plugins yet.
func newPluginController(t testing.TB, host *cnmtest.HostNS, opts ...cnm.Option) *cnm.Controller {
	t.Helper()
	ctrl, err := cnm.New(append(host.Options(), opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	return ctrl
}

func sandboxLinks(t *testing.T, sb *cnm.Sandbox) []string {
	t.Helper()
	ns, err := osl.OpenNamespace(context.Background(), sb.Key())
	require.NoError(t, err)
	defer ns.Close()
	links, err := ns.Links(context.Background())
	require.NoError(t, err)
	var out []string
	for _, l := range links {
		out = append(out, l.Name)
	}
	return out
}

// TestRemotePluginEndToEnd drives a network plugin written with Docker's
// SDK, found by name in a plugin directory, through cnm: a network, two
// containers whose veth ends the plugin makes and cnm moves into their
// sandboxes, TCP between them, then leave and delete; the plugin saw every
// call with the fields Docker sends, and nothing is left.
func TestRemotePluginEndToEnd(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dirs := newPluginDirs(t)
	host := cnmtest.NewHostNS(t)
	p := startVeth(t, dirs, "vethp", host)
	ctrl := newPluginController(t, host, dirs.option())

	nw, err := ctrl.NewNetwork(ctx, "vethp", "pnet",
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.78.0.0/24")}),
		cnm.WithDriverOptions(map[string]string{"mtu": "1400"}))
	require.NoError(t, err)
	assert.Equal(t, "vethp", nw.Type())
	br, ok := p.Bridge(nw.ID())
	require.True(t, ok)
	p.SetRoutes(&network.StaticRoute{Destination: "10.201.0.0/16", RouteType: protocol.RouteConnected},
		&network.StaticRoute{Destination: "10.202.0.0/16", RouteType: protocol.RouteNextHop, NextHop: "10.78.0.1"})

	a, epA := container(t, nw, "a")
	b, epB := container(t, nw, "b")
	ia, ib := epA.Info(), epB.Info()
	assert.Equal(t, "eth0", ia.InterfaceName)
	assert.Equal(t, netip.MustParsePrefix("10.78.0.2/24"), ia.IPv4)
	assert.Equal(t, netip.MustParsePrefix("10.78.0.3/24"), ib.IPv4)
	assert.Equal(t, netip.MustParseAddr("10.78.0.1"), ia.Gateway)

	// The plugin's veth end is now eth0 inside the sandbox, with cnm's MAC
	// and address, and a default route through the plugin's gateway.
	hostEnd, peer, ok := p.Endpoint(epA.ID())
	require.True(t, ok)
	sbNS, err := osl.OpenNamespace(ctx, a.Key())
	require.NoError(t, err)
	eth0, err := sbNS.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	assert.Equal(t, "veth", eth0.Kind)
	assert.Equal(t, ia.MAC, eth0.MAC)
	addrs, err := sbNS.Addresses(ctx, eth0.Index)
	require.NoError(t, err)
	assert.Contains(t, addrs, ia.IPv4)
	routes, err := sbNS.Routes(ctx, 4)
	require.NoError(t, err)
	assert.Contains(t, routes, osl.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: ia.Gateway, LinkIndex: eth0.Index})
	assert.Contains(t, routes, osl.Route{Dst: netip.MustParsePrefix("10.201.0.0/16"), LinkIndex: eth0.Index}, "the plugin's connected route")
	assert.Contains(t, routes, osl.Route{Dst: netip.MustParsePrefix("10.202.0.0/16"), Gateway: netip.MustParseAddr("10.78.0.1"), LinkIndex: eth0.Index}, "the plugin's next-hop route")
	sbNS.Close()
	_, err = host.NS.LinkByName(ctx, peer)
	require.ErrorIs(t, err, osl.ErrLinkNotFound, "the plugin's end was moved out of the host namespace")

	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(ib.IPv4, 8080), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(ia.IPv4, 8080), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, host.Path, a.Key(), netip.MustParseAddrPort("10.78.0.1:9000"), tcpTimeout))

	require.NoError(t, epA.Leave(ctx, a))
	require.NoError(t, ctrl.Settle(ctx))
	assert.Equal(t, []string{"lo"}, sandboxLinks(t, a))
	_, err = host.NS.LinkByName(ctx, hostEnd)
	require.ErrorIs(t, err, osl.ErrLinkNotFound, "the plugin removed its pair at Leave")
	require.NoError(t, epA.Delete(ctx))
	require.NoError(t, a.Delete(ctx))
	require.NoError(t, b.Delete(ctx)) // leaves and deletes epB
	require.NoError(t, ctrl.Settle(ctx))
	require.NoError(t, nw.Delete(ctx))
	_, err = host.NS.LinkByName(ctx, br)
	require.ErrorIs(t, err, osl.ErrLinkNotFound)
	cnmtest.AssertNoLeaks(t, host)

	assert.Equal(t, []string{
		"NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork",
		"NetworkDriver.CreateEndpoint", "NetworkDriver.Join",
		"NetworkDriver.CreateEndpoint", "NetworkDriver.Join",
		"NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint",
		"NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint",
		"NetworkDriver.DeleteNetwork",
	}, p.Methods())
	for _, c := range p.Calls() {
		switch r := c.Request.(type) {
		case *network.CreateNetworkRequest:
			assert.Equal(t, nw.ID(), r.NetworkID)
			assert.Equal(t, map[string]any{"mtu": "1400"}, r.Options[protocol.OptionGeneric])
			require.Len(t, r.IPv4Data, 1)
			assert.Equal(t, "10.78.0.0/24", r.IPv4Data[0].Pool)
			assert.Equal(t, "10.78.0.1/24", r.IPv4Data[0].Gateway)
		case *network.CreateEndpointRequest:
			assert.Equal(t, nw.ID(), r.NetworkID)
			assert.Contains(t, []string{epA.ID(), epB.ID()}, r.EndpointID)
			assert.Contains(t, []string{"10.78.0.2/24", "10.78.0.3/24"}, r.Interface.Address)
			assert.NotEmpty(t, r.Interface.MacAddress)
		case *network.JoinRequest:
			assert.Contains(t, []string{a.Key(), b.Key()}, r.SandboxKey)
		case *network.LeaveRequest:
			assert.Contains(t, []string{epA.ID(), epB.ID()}, r.EndpointID)
		case *network.DeleteNetworkRequest:
			assert.Equal(t, nw.ID(), r.NetworkID)
		}
	}
}

// TestRemotePluginDiesAndReturns: a plugin that dies is named in the
// errors; its network stays recorded through a restart of the controller
// made while it is down, and works again when it returns.
func TestRemotePluginDiesAndReturns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dirs := newPluginDirs(t)
	host := cnmtest.NewHostNS(t)
	p := startVeth(t, dirs, "phoenix", host)
	opts := append(host.Options(), dirs.option(), cnm.WithPluginTimeout(2*tcpTimeout))
	ctrl := newPluginController(t, host, opts[len(host.Options()):]...)
	nw, err := ctrl.NewNetwork(ctx, "phoenix", "pnet", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.79.0.0/24")}))
	require.NoError(t, err)
	a, _ := container(t, nw, "a")

	require.NoError(t, p.Stop())
	_, err = nw.CreateEndpoint(ctx, "b")
	require.ErrorIs(t, err, plugin.ErrUnavailable)
	assert.ErrorContains(t, err, `plugin "phoenix": NetworkDriver.CreateEndpoint`)
	assert.Len(t, nw.Endpoints(), 1, "the failed endpoint is not kept")

	// A restart while the plugin is down keeps its network.
	require.NoError(t, ctrl.Close())
	ctrl, err = cnm.New(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	nw, err = ctrl.NetworkByName("pnet")
	require.NoError(t, err)
	assert.Equal(t, "phoenix", nw.Type())
	_, err = nw.CreateEndpoint(ctx, "b")
	require.ErrorIs(t, err, plugin.ErrUnavailable)

	// Back: everything works again, the restored container included.
	require.NoError(t, p.Start())
	a, err = ctrl.SandboxByContainerID("a")
	require.NoError(t, err)
	b, epB := container(t, nw, "b")
	epA, err := nw.EndpointByName("a")
	require.NoError(t, err)
	require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(epA.Info().IPv4, 8080), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 8080), tcpTimeout))

	require.NoError(t, a.Delete(ctx))
	require.NoError(t, b.Delete(ctx))
	require.NoError(t, ctrl.Settle(ctx))
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// TestPluginOptions: bad plugin options are refused by New, naming the
// value; an unknown driver name is not found, naming where it was looked
// for.
func TestPluginOptions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dirs := newPluginDirs(t)
	host := cnmtest.NewHostNS(t)
	for _, tc := range []struct {
		opt  cnm.Option
		is   error
		text string
	}{
		{cnm.WithPlugin("a/b", "/x.sock"), cnm.ErrInvalid, `plugin name "a/b"`},
		{cnm.WithPlugin("p", "ftp://x"), cnm.ErrInvalid, `address "ftp://x"`},
		{cnm.WithPlugin("p", "rel.sock"), cnm.ErrInvalid, `address "rel.sock"`},
		{cnm.WithPluginTimeout(0), cnm.ErrInvalid, "plugin timeout 0s"},
		{cnm.WithPluginDirs([]string{"rel"}, nil), cnm.ErrInvalid, `plugin dir "rel"`},
	} {
		_, err := cnm.New(append(host.Options(), tc.opt)...)
		require.ErrorIs(t, err, tc.is)
		assert.ErrorContains(t, err, tc.text)
	}

	c, err := cnm.New(append(host.Options(), cnm.WithPlugin("bridge", "/x.sock"))...)
	if err == nil {
		c.Close()
	}
	require.ErrorIs(t, err, cnm.ErrExists, "a plugin may not take a built-in driver's name")
	assert.ErrorContains(t, err, `"bridge"`)

	ctrl := newPluginController(t, host, dirs.option())
	_, err = ctrl.NewNetwork(ctx, "nosuch", "n")
	require.ErrorIs(t, err, cnm.ErrNotFound)
	assert.ErrorContains(t, err, `plugin "nosuch": no socket nosuch.sock in [`+dirs.sockets+`]`)
	_, err = ctrl.NewNetwork(ctx, "bridge", "n2", cnm.WithIPAMDriver("nosuch", nil))
	require.ErrorIs(t, err, cnm.ErrNotFound)
	assert.Empty(t, ctrl.Networks())
	cnmtest.AssertNoLeaks(t, host)
}

// TestPluginBySpecFileAndAddress: a plugin named by a .spec file in a spec
// directory, and one given with cnm.WithPlugin, are used like one found by
// its socket; a network plugin is no IPAM driver, and says so.
func TestPluginBySpecFileAndAddress(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dirs := newPluginDirs(t)
	host := cnmtest.NewHostNS(t)
	elsewhere := t.TempDir()
	bySpec, err := plugintest.StartVeth(filepath.Join(elsewhere, "a.sock"), host.Path)
	require.NoError(t, err)
	t.Cleanup(func() { bySpec.Close() })
	byAddr, err := plugintest.StartVeth(filepath.Join(elsewhere, "b.sock"), host.Path)
	require.NoError(t, err)
	t.Cleanup(func() { byAddr.Close() })
	require.NoError(t, os.MkdirAll(dirs.specs, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dirs.specs, "specced.spec"), []byte("unix://"+bySpec.Socket+"\n"), 0o644))
	ctrl := newPluginController(t, host, dirs.option(), cnm.WithPlugin("given", "unix://"+byAddr.Socket))

	for i, tc := range []struct {
		driver string
		p      *plugintest.VethPlugin
	}{{"specced", bySpec}, {"given", byAddr}} {
		nw, err := ctrl.NewNetwork(ctx, tc.driver, tc.driver, cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(fmt.Sprintf("10.82.%d.0/24", i))}))
		require.NoError(t, err, tc.driver)
		sb, _ := container(t, nw, "c-"+tc.driver)
		assert.Contains(t, tc.p.Methods(), "NetworkDriver.Join", tc.driver)
		require.NoError(t, sb.Delete(ctx))
		require.NoError(t, ctrl.Settle(ctx))
		require.NoError(t, nw.Delete(ctx))
	}
	_, err = ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPAMDriver("given", nil))
	require.ErrorIs(t, err, cnm.ErrNotSupported)
	assert.ErrorContains(t, err, `plugin "given": Plugin.Activate: not supported: implements [NetworkDriver], not IpamDriver`)
	assert.Empty(t, ctrl.Networks())
	cnmtest.AssertNoLeaks(t, host)
}
