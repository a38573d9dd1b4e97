package remote_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/remote"
	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/internal/plugintest"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin"
	"github.com/seed53641549/cnm/plugin/protocol"
)

type fixture struct {
	host   *cnmtest.HostNS
	sb     *osl.Namespace
	plugin *plugintest.VethPlugin
	drv    *remote.Driver
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	host := cnmtest.NewHostNS(t)
	sb, err := osl.NewNamespace(context.Background(), filepath.Join(t.TempDir(), "sb"))
	require.NoError(t, err)
	t.Cleanup(func() { sb.Delete() })
	p, err := plugintest.StartVeth(filepath.Join(t.TempDir(), "veth.sock"), host.Path)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return &fixture{host: host, sb: sb, plugin: p, drv: newDriver(t, "veth", p.Socket, host.NS)}
}

func newDriver(t *testing.T, name, sock string, host *osl.Namespace) *remote.Driver {
	t.Helper()
	c, err := plugin.NewClient(plugin.Config{Name: name, Locate: plugin.Fixed(plugin.Spec{Network: "unix", Address: sock})})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	d, err := remote.New(remote.Config{Client: c, HostNS: host})
	require.NoError(t, err)
	return d
}

func linkNames(t *testing.T, ns *osl.Namespace) []string {
	t.Helper()
	links, err := ns.Links(context.Background())
	require.NoError(t, err)
	var out []string
	for _, l := range links {
		out = append(out, l.Name)
	}
	return out
}

var (
	subnet = netip.MustParsePrefix("10.77.0.0/24")
	gw     = netip.MustParsePrefix("10.77.0.1/24")
	epAddr = netip.MustParsePrefix("10.77.0.2/24")
	mac    = net.HardwareAddr{0x02, 0x42, 0x0a, 0x4d, 0x00, 0x02}
)

// TestDriverAgainstSDKPlugin drives every NetworkDriver call against a
// plugin written with Docker's SDK that makes real veth pairs, doing by
// hand what the controller does between Join and Leave (move the interface
// in), and checks what the plugin received.
func TestDriverAgainstSDKPlugin(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	d := f.drv
	assert.Equal(t, "veth", d.Type())
	require.NoError(t, d.Activate(ctx))
	assert.Equal(t, driverapi.Capability{Scope: driverapi.LocalScope}, d.Capability())

	nreq := driverapi.NetworkRequest{ID: "net1abcdefgh", Name: "n", Options: map[string]string{"color": "blue"}, Internal: true,
		IPv4: &driverapi.IPAMData{Pool: subnet, Gateway: gw, AuxAddresses: map[string]netip.Addr{"router": netip.MustParseAddr("10.77.0.254")}}}
	require.NoError(t, d.CreateNetwork(ctx, nreq))
	br, ok := f.plugin.Bridge(nreq.ID)
	require.True(t, ok)
	assert.Contains(t, linkNames(t, f.host.NS), br)

	opts, err := d.AllocateNetwork(ctx, nreq)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"vni": "4242"}, opts)
	require.NoError(t, d.FreeNetwork(ctx, nreq.ID))

	ereq := driverapi.EndpointRequest{NetworkID: nreq.ID, EndpointID: "ep1abcdefgh", MAC: mac, IPv4: epAddr}
	require.NoError(t, d.CreateEndpoint(ctx, ereq))
	resp, err := d.Join(ctx, driverapi.JoinRequest{NetworkID: nreq.ID, EndpointID: ereq.EndpointID, Sandbox: f.sb, InterfaceName: "eth0", MAC: mac, IPv4: epAddr})
	require.NoError(t, err)
	assert.Equal(t, gw.Addr(), resp.Gateway)
	hostEnd, peer, ok := f.plugin.Endpoint(ereq.EndpointID)
	require.True(t, ok)
	assert.Equal(t, peer, resp.SrcName)
	assert.Subset(t, linkNames(t, f.host.NS), []string{hostEnd, peer})

	info, err := d.EndpointOperInfo(ctx, nreq.ID, ereq.EndpointID)
	require.NoError(t, err)
	assert.Equal(t, hostEnd, info["host_veth"])

	// What the controller does: move the interface in as eth0.
	require.NoError(t, f.host.NS.MoveLink(ctx, resp.SrcName, f.sb, "eth0"))
	l, err := f.sb.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	assert.Equal(t, mac, l.MAC, "the plugin used the MAC cnm assigned")

	ext := driverapi.ExternalRequest{NetworkID: nreq.ID, EndpointID: ereq.EndpointID, IPv4: epAddr.Addr(),
		Ports: []driverapi.PortMapping{{Proto: "udp", HostIP: netip.MustParseAddr("0.0.0.0"), HostPort: 5353, ContainerPort: 53}}}
	require.NoError(t, d.ProgramExternalConnectivity(ctx, ext))
	require.NoError(t, d.RevokeExternalConnectivity(ctx, ext))
	ext.Ports[0].Proto = "icmp"
	require.ErrorIs(t, d.ProgramExternalConnectivity(ctx, ext), errdefs.ErrInvalid)

	node := protocol.DiscoveryNotification{DiscoveryType: protocol.NodeDiscovery, DiscoveryData: protocol.NodeDiscoveryData{Address: "192.0.2.1", Self: true}}
	require.NoError(t, d.DiscoverNew(ctx, node))
	require.NoError(t, d.DiscoverDelete(ctx, node))
	require.ErrorIs(t, d.DiscoverNew(ctx, protocol.DiscoveryNotification{}), errdefs.ErrInvalid)

	// Leave takes the interface out of the sandbox (as the controller
	// renamed it); the plugin deletes its pair.
	require.NoError(t, d.Leave(ctx, driverapi.LeaveRequest{NetworkID: nreq.ID, EndpointID: ereq.EndpointID, Sandbox: f.sb, InterfaceName: "eth0"}))
	assert.NotContains(t, linkNames(t, f.sb), "eth0")
	assert.NotContains(t, linkNames(t, f.host.NS), hostEnd)
	assert.NotContains(t, linkNames(t, f.host.NS), peer)
	require.NoError(t, d.DeleteEndpoint(ctx, nreq.ID, ereq.EndpointID))
	require.NoError(t, d.DeleteNetwork(ctx, nreq.ID))
	assert.Equal(t, []string{"lo"}, linkNames(t, f.host.NS))

	// The plugin saw every call, in order, with Docker's fields.
	assert.Equal(t, []string{
		"NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork", "NetworkDriver.AllocateNetwork", "NetworkDriver.FreeNetwork",
		"NetworkDriver.CreateEndpoint", "NetworkDriver.Join", "NetworkDriver.EndpointOperInfo",
		"NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity",
		"NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete",
		"NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint", "NetworkDriver.DeleteNetwork",
	}, f.plugin.Methods())
	for _, c := range f.plugin.Calls() {
		switch r := c.Request.(type) {
		case *network.CreateNetworkRequest:
			assert.Equal(t, nreq.ID, r.NetworkID)
			assert.Equal(t, map[string]any{"color": "blue"}, r.Options[protocol.OptionGeneric])
			assert.Equal(t, true, r.Options[protocol.OptionInternal])
			assert.Equal(t, false, r.Options[protocol.OptionEnableIPv6])
			require.Len(t, r.IPv4Data, 1)
			assert.Equal(t, "10.77.0.0/24", r.IPv4Data[0].Pool)
			assert.Equal(t, "10.77.0.1/24", r.IPv4Data[0].Gateway)
			assert.Equal(t, map[string]any{"router": "10.77.0.254/24"}, r.IPv4Data[0].AuxAddresses)
			assert.Empty(t, r.IPv6Data)
		case *network.CreateEndpointRequest:
			assert.Equal(t, ereq.EndpointID, r.EndpointID)
			assert.Equal(t, "10.77.0.2/24", r.Interface.Address)
			assert.Equal(t, mac.String(), r.Interface.MacAddress)
			assert.Equal(t, mac.String(), r.Options[protocol.OptionMACAddress])
		case *network.JoinRequest:
			assert.Equal(t, f.sb.Path(), r.SandboxKey)
			assert.Equal(t, ereq.EndpointID, r.EndpointID)
		case *network.ProgramExternalConnectivityRequest:
			pm, _ := json.Marshal(r.Options[protocol.OptionPortMap])
			assert.JSONEq(t, `[{"Proto":17,"IP":"10.77.0.2","Port":53,"HostIP":"0.0.0.0","HostPort":5353,"HostPortEnd":0}]`, string(pm))
			ex, _ := json.Marshal(r.Options[protocol.OptionExposedPorts])
			assert.JSONEq(t, `[{"Proto":17,"Port":53}]`, string(ex))
		case *network.DiscoveryNotification:
			assert.Equal(t, protocol.NodeDiscovery, r.DiscoveryType)
		}
	}
}

// TestJoinUnknownInterface: a plugin naming an interface that does not
// exist gets an error naming it, the plugin, and the call; the plugin is
// told to leave, and nothing is left.
func TestJoinUnknownInterface(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	front, err := plugintest.StartFront(filepath.Join(t.TempDir(), "front.sock"), f.plugin.Socket)
	require.NoError(t, err)
	t.Cleanup(func() { front.Close() })
	front.Set(protocol.PathJoin, plugintest.UnknownInterface)
	d := newDriver(t, "veth", front.Socket, f.host.NS)

	require.NoError(t, d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "n1", IPv4: &driverapi.IPAMData{Pool: subnet, Gateway: gw}}))
	require.NoError(t, d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "n1", EndpointID: "e1", MAC: mac, IPv4: epAddr}))
	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "n1", EndpointID: "e1", Sandbox: f.sb, InterfaceName: "eth0"})
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	assert.ErrorContains(t, err, `plugin "veth": NetworkDriver.Join: `)
	assert.ErrorContains(t, err, `InterfaceName.SrcName "nosuchveth0": no such interface in the host namespace`)
	methods := f.plugin.Methods()
	assert.Equal(t, "NetworkDriver.Leave", methods[len(methods)-1], "the plugin was told to undo its join")
	br, _ := f.plugin.Bridge("n1")
	assert.ElementsMatch(t, []string{"lo", br}, linkNames(t, f.host.NS))
	assert.Equal(t, []string{"lo"}, linkNames(t, f.sb))
}

// answering serves one Join answer; every other call gets {}.
func answering(t *testing.T, join any) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case protocol.PathActivate:
			io.WriteString(w, `{"Implements":["NetworkDriver"]}`)
		case protocol.PathJoin:
			json.NewEncoder(w).Encode(join)
		case protocol.PathCreateEndpoint:
			json.NewEncoder(w).Encode(join) // reused: the Interface answer
		default:
			io.WriteString(w, `{}`)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// TestJoinRefusesBadAnswers: each field of a Join answer that cnm cannot
// apply is named with its value.
func TestJoinRefusesBadAnswers(t *testing.T) {
	host := cnmtest.NewHostNS(t)
	sb, err := osl.NewNamespace(context.Background(), filepath.Join(t.TempDir(), "sb"))
	require.NoError(t, err)
	t.Cleanup(func() { sb.Delete() })
	lo := map[string]any{"SrcName": "lo"} // exists in every namespace
	for _, tc := range []struct {
		name   string
		answer map[string]any
		text   string
	}{
		{"no interface", map[string]any{}, "names no interface (InterfaceName.SrcName)"},
		{"bad name", map[string]any{"InterfaceName": map[string]any{"SrcName": "a/b"}}, `InterfaceName.SrcName "a/b"`},
		{"bad gateway", map[string]any{"InterfaceName": lo, "Gateway": "10.0.0.300"}, `Gateway "10.0.0.300": want an IPv4 address`},
		{"v6 gateway as v4", map[string]any{"InterfaceName": lo, "Gateway": "fd00::1"}, `Gateway "fd00::1"`},
		{"v4 gateway as v6", map[string]any{"InterfaceName": lo, "GatewayIPv6": "10.0.0.1"}, `GatewayIPv6 "10.0.0.1": want an IPv6 address`},
		{"route destination", map[string]any{"InterfaceName": lo, "StaticRoutes": []any{map[string]any{"Destination": "x", "RouteType": 1}}}, `StaticRoutes[0].Destination "x"`},
		{"route type", map[string]any{"InterfaceName": lo, "StaticRoutes": []any{map[string]any{"Destination": "10.1.0.0/16", "RouteType": 7}}}, "StaticRoutes[0].RouteType 7"},
		{"route next hop", map[string]any{"InterfaceName": lo, "StaticRoutes": []any{map[string]any{"Destination": "10.1.0.0/16", "RouteType": 0, "NextHop": "fd00::1"}}}, `StaticRoutes[0].NextHop "fd00::1"`},
		{"connected with next hop", map[string]any{"InterfaceName": lo, "StaticRoutes": []any{map[string]any{"Destination": "10.1.0.0/16", "RouteType": 1, "NextHop": "10.0.0.1"}}}, "a connected route has no NextHop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDriver(t, "fake", answering(t, tc.answer), host.NS)
			_, err := d.Join(context.Background(), driverapi.JoinRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb, InterfaceName: "eth0"})
			require.Error(t, err)
			var ce *plugin.CallError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, "NetworkDriver.Join", ce.Call)
			assert.ErrorContains(t, err, `plugin "fake": NetworkDriver.Join: `)
			assert.ErrorContains(t, err, tc.text)
		})
	}

	// A good answer converts fully.
	d := newDriver(t, "fake", answering(t, map[string]any{"InterfaceName": map[string]any{"SrcName": "lo", "DstPrefix": "eth"},
		"Gateway": "10.0.0.1", "GatewayIPv6": "fd00::1", "StaticRoutes": []any{
			map[string]any{"Destination": "10.1.0.0/16", "RouteType": 0, "NextHop": "10.0.0.254"},
			map[string]any{"Destination": "10.2.0.1/16", "RouteType": 1},
		}}), host.NS)
	resp, err := d.Join(context.Background(), driverapi.JoinRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb, InterfaceName: "eth0"})
	require.NoError(t, err)
	assert.Equal(t, driverapi.JoinResponse{SrcName: "lo", Gateway: netip.MustParseAddr("10.0.0.1"), GatewayIPv6: netip.MustParseAddr("fd00::1"),
		StaticRoutes: []driverapi.StaticRoute{
			{Destination: netip.MustParsePrefix("10.1.0.0/16"), NextHop: netip.MustParseAddr("10.0.0.254")},
			{Destination: netip.MustParsePrefix("10.2.0.0/16")},
		}}, resp)
}

// TestCreateEndpointRefusesOtherAddress: a plugin may not choose addresses.
func TestCreateEndpointRefusesOtherAddress(t *testing.T) {
	host := cnmtest.NewHostNS(t)
	d := newDriver(t, "fake", answering(t, map[string]any{"Interface": map[string]any{"Address": "10.77.0.9/24"}}), host.NS)
	err := d.CreateEndpoint(context.Background(), driverapi.EndpointRequest{NetworkID: "n", EndpointID: "e", MAC: mac, IPv4: epAddr})
	require.ErrorIs(t, err, errdefs.ErrNotSupported)
	assert.ErrorContains(t, err, `plugin "fake": NetworkDriver.CreateEndpoint: `)
	assert.ErrorContains(t, err, `Interface.Address "10.77.0.9/24", but cnm assigned "10.77.0.2/24"`)

	// Echoing what cnm assigned is fine.
	d = newDriver(t, "fake", answering(t, map[string]any{"Interface": map[string]any{"Address": "10.77.0.2/24", "MacAddress": "02:42:0A:4D:00:02"}}), host.NS)
	require.NoError(t, d.CreateEndpoint(context.Background(), driverapi.EndpointRequest{NetworkID: "n", EndpointID: "e", MAC: mac, IPv4: epAddr}))
}

func TestNewInvalid(t *testing.T) {
	_, err := remote.New(remote.Config{})
	require.ErrorIs(t, err, errdefs.ErrInvalid)
}
