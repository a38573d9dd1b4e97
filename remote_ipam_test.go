package cnm_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/internal/plugintest"
	"github.com/seed53641549/cnm/plugin"
)

// TestRemoteIPAMBridge: an IPAM plugin written with Docker's SDK, found by
// name, hands out a bridge network's subnet, gateway and container
// addresses; the containers talk; deleting everything gives every address
// and the pool back to the plugin.
func TestRemoteIPAMBridge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dirs := newPluginDirs(t)
	host := cnmtest.NewHostNS(t)
	p, err := plugintest.StartIPAM(filepath.Join(dirs.sockets, "ipt.sock"), netip.MustParsePrefix("10.81.0.0/24"), netip.MustParsePrefix("fd00:81::/64"))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	ctrl := newPluginController(t, host, dirs.option())

	nw, err := ctrl.NewNetwork(ctx, "bridge", "inet", cnm.WithIPAMDriver("ipt", nil),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "br-ipt"}))
	require.NoError(t, err)
	v4, ok := nw.IPv4()
	require.True(t, ok)
	assert.Equal(t, netip.MustParsePrefix("10.81.0.0/24"), v4.Subnet, "the plugin chose the subnet")
	assert.Equal(t, netip.MustParseAddr("10.81.0.1"), v4.Gateway)

	a, epA := container(t, nw, "a")
	b, epB := container(t, nw, "b")
	assert.Equal(t, netip.MustParsePrefix("10.81.0.2/24"), epA.Info().IPv4)
	assert.Equal(t, netip.MustParsePrefix("10.81.0.3/24"), epB.Info().IPv4)
	assert.Equal(t, 3, p.Allocated(), "gateway and two containers")
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 8080), tcpTimeout))
	require.NoError(t, cnmtest.TCPExchange(ctx, a.Key(), b.Key(), addrPort(epA.Info().IPv4, 8080), tcpTimeout))

	// The plugin's refusal reaches the caller, and nothing is kept.
	_, err = nw.CreateEndpoint(ctx, "c", cnm.WithIPv4Address(netip.MustParseAddr("10.81.0.2")))
	require.ErrorIs(t, err, plugin.ErrPlugin)
	assert.ErrorContains(t, err, `plugin "ipt": IpamDriver.RequestAddress: plugin error: address 10.81.0.2 is in use`)
	assert.Len(t, nw.Endpoints(), 2)

	require.NoError(t, a.Delete(ctx))
	require.NoError(t, b.Delete(ctx))
	require.NoError(t, ctrl.Settle(ctx))
	require.NoError(t, nw.Delete(ctx))
	assert.Empty(t, p.Pools())
	assert.Zero(t, p.Allocated())
	cnmtest.AssertNoLeaks(t, host)

	var requested []string
	for _, c := range p.Calls() {
		if r, ok := c.Request.(*ipam.RequestAddressRequest); ok {
			requested = append(requested, r.Address)
		}
	}
	assert.Equal(t, []string{"10.81.0.1", "", "", "10.81.0.2"}, requested, "the gateway by address, the containers by any")
}

// TestRemoteIPAMDownAtRestart: a controller restarts while its IPAM plugin
// is down: New does not ask the plugin for what its records say it holds,
// so it starts; the network and its endpoints come back with their
// addresses, and new addresses come from the plugin once it is back.
func TestRemoteIPAMDownAtRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dirs := newPluginDirs(t)
	host := cnmtest.NewHostNS(t)
	sock := filepath.Join(dirs.sockets, "ipt.sock")
	p, err := plugintest.StartIPAM(sock, netip.MustParsePrefix("10.82.0.0/24"), netip.MustParsePrefix("fd00:82::/64"))
	require.NoError(t, err)
	ctrl, err := cnm.New(append(host.Options(), dirs.option())...)
	require.NoError(t, err)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "inet", cnm.WithIPAMDriver("ipt", nil),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.bridge.name": "br-ipt2"}))
	require.NoError(t, err)
	a, epA := container(t, nw, "a")
	addrA := epA.Info().IPv4
	require.NoError(t, ctrl.Close())

	// The plugin goes down (its state with it, in this test plugin: a real
	// one keeps it), and the controller restarts.
	pools := p.Pools()
	p.Close()
	ctrl, err = cnm.New(append(host.Options(), dirs.option())...)
	require.NoError(t, err, "New does not need the IPAM plugin for what it recorded")
	t.Cleanup(func() { ctrl.Close() })
	nw, err = ctrl.NetworkByName("inet")
	require.NoError(t, err)
	epA, err = nw.EndpointByName("a")
	require.NoError(t, err)
	require.Equal(t, addrA, epA.Info().IPv4)
	_, err = nw.CreateEndpoint(ctx, "b")
	require.ErrorIs(t, err, plugin.ErrUnavailable, "a call to the plugin while it is down")
	assert.ErrorContains(t, err, `plugin "ipt"`)

	// Back, with the pool it had: new endpoints get addresses again.
	p, err = plugintest.StartIPAM(sock, netip.MustParsePrefix("10.82.0.0/24"), netip.MustParsePrefix("fd00:82::/64"))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	require.NoError(t, p.Restore(pools, []netip.Addr{netip.MustParseAddr("10.82.0.1"), addrA.Addr()}))
	b, epB := container(t, nw, "b")
	assert.NotEqual(t, addrA, epB.Info().IPv4)
	require.NoError(t, cnmtest.TCPExchange(ctx, b.Key(), a.Key(), addrPort(epB.Info().IPv4, 8080), tcpTimeout))
	deleteAll(t, ctrl)
	cnmtest.AssertNoLeaks(t, host)
}
