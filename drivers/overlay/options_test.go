package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// TestParseOptions: every bad option is refused with ErrInvalid, naming
// the key and the value.
func TestParseOptions(t *testing.T) {
	o, err := parseOptions(map[string]string{OptionVNI: "4097", OptionMTU: "1400"}, false)
	require.NoError(t, err)
	assert.Equal(t, options{vni: 4097, mtu: 1400}, o)
	o, err = parseOptions(map[string]string{OptionVNI: "16777215"}, false)
	require.NoError(t, err)
	assert.Equal(t, uint32(MaxVNI), o.vni)
	// Encryption is asked for by the key's presence, whatever its value;
	// the network's creation decides (TestEncryptedRefused).
	for _, v := range []string{"", "true"} {
		o, err = parseOptions(map[string]string{OptionVNI: "1", OptionEncrypted: v}, false)
		require.NoError(t, err)
		assert.Equal(t, options{vni: 1, encrypted: true, encryptedValue: v}, o)
	}

	for _, tc := range []struct {
		opts map[string]string
		ipv6 bool
		want error
		says []string
	}{
		{map[string]string{OptionVNI: "0"}, false, driverapi.ErrInvalid, []string{OptionVNI, `"0"`, "1-16777215"}},
		{map[string]string{OptionVNI: "16777216"}, false, driverapi.ErrInvalid, []string{OptionVNI, "16777216"}},
		{map[string]string{OptionVNI: "-1"}, false, driverapi.ErrInvalid, []string{OptionVNI, "-1"}},
		{map[string]string{OptionVNI: "vni"}, false, driverapi.ErrInvalid, []string{OptionVNI, "vni"}},
		{map[string]string{OptionVNI: "4097,4098"}, false, driverapi.ErrInvalid, []string{OptionVNI, "4097,4098"}},
		{map[string]string{}, false, driverapi.ErrInvalid, []string{OptionVNI, "missing"}},
		{map[string]string{OptionVNI: "1", OptionMTU: "67"}, false, driverapi.ErrInvalid, []string{OptionMTU, "67"}},
		{map[string]string{OptionVNI: "1", OptionMTU: "1200"}, true, driverapi.ErrInvalid, []string{OptionMTU, "1200", "IPv6"}},
		{map[string]string{OptionVNI: "1", OptionMTU: "big"}, false, driverapi.ErrInvalid, []string{OptionMTU, "big"}},
		{map[string]string{OptionVNI: "1", "com.docker.network.bridge.name": "x"}, false, driverapi.ErrInvalid, []string{"com.docker.network.bridge.name", "unknown"}},
	} {
		_, err := parseOptions(tc.opts, tc.ipv6)
		require.ErrorIs(t, err, tc.want, "%v", tc.opts)
		for _, s := range tc.says {
			assert.Contains(t, err.Error(), s)
		}
	}
}

// TestNewRefusesBadConfig: each bad field is named with its value.
func TestNewRefusesBadConfig(t *testing.T) {
	ns := &osl.Namespace{}
	good := Config{HostNS: ns, AdvertiseAddress: netip.MustParseAddr("192.0.2.1"), RunDir: "/run/x"}
	d, err := New(good)
	require.NoError(t, err)
	assert.Equal(t, uint16(DefaultPort), d.cfg.Port)
	assert.Equal(t, driverapi.GlobalScope, d.Capability().Scope)

	for _, tc := range []struct {
		change func(*Config)
		says   []string
	}{
		{func(c *Config) { c.HostNS = nil }, []string{"HostNS"}},
		{func(c *Config) { c.RunDir = "" }, []string{"RunDir"}},
		{func(c *Config) { c.AdvertiseAddress = netip.Addr{} }, []string{"AdvertiseAddress", "missing"}},
		{func(c *Config) { c.AdvertiseAddress = netip.MustParseAddr("0.0.0.0") }, []string{"AdvertiseAddress=0.0.0.0"}},
		{func(c *Config) { c.AdvertiseAddress = netip.MustParseAddr("239.1.1.1") }, []string{"AdvertiseAddress=239.1.1.1"}},
		{func(c *Config) { c.AdvertiseAddress = netip.MustParseAddr("127.0.0.1") }, []string{"AdvertiseAddress=127.0.0.1"}},
		{func(c *Config) { c.MTU = 50 }, []string{"MTU=50"}},
	} {
		c := good
		tc.change(&c)
		_, err := New(c)
		require.ErrorIs(t, err, driverapi.ErrInvalid, tc.says)
		for _, s := range tc.says {
			assert.Contains(t, err.Error(), s)
		}
	}
}

// TestNetworkIDRefused: a network ID names a file (the network's
// namespace): one with a '/' is refused before anything else is looked at.
func TestNetworkIDRefused(t *testing.T) {
	d, err := New(Config{HostNS: &osl.Namespace{}, AdvertiseAddress: netip.MustParseAddr("192.0.2.1"), RunDir: "/run/x"})
	require.NoError(t, err)
	for _, id := range []string{"a/../../../x", "x\x00"} {
		req := driverapi.NetworkRequest{ID: id, Options: map[string]string{OptionVNI: "1", OptionMTU: "1400"}}
		for _, err := range []error{d.CreateNetwork(context.Background(), req), d.RestoreNetwork(context.Background(), req)} {
			require.ErrorIs(t, err, driverapi.ErrInvalid, id)
			assert.Contains(t, err.Error(), fmt.Sprintf("%q", id))
		}
		assert.False(t, d.hasNetwork(id))
	}
}

// TestPeerRefusesBadInput: AddPeer and RemovePeer check every field before
// they touch the table or the kernel.
func TestPeerRefusesBadInput(t *testing.T) {
	d, err := New(Config{HostNS: &osl.Namespace{}, AdvertiseAddress: netip.MustParseAddr("192.0.2.1"), RunDir: "/run/x"})
	require.NoError(t, err)
	ctx := context.Background()
	good := Peer{NetworkID: "n", IP: netip.MustParseAddr("10.0.0.2"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, VTEP: netip.MustParseAddr("192.0.2.2")}
	for _, tc := range []struct {
		change func(*Peer)
		says   []string
	}{
		{func(p *Peer) { p.NetworkID = "" }, []string{"NetworkID"}},
		{func(p *Peer) { p.IP = netip.Addr{} }, []string{"IP=invalid IP"}},
		{func(p *Peer) { p.IP = netip.MustParseAddr("224.0.0.1") }, []string{"IP=224.0.0.1"}},
		{func(p *Peer) { p.MAC = nil }, []string{"MAC"}},
		{func(p *Peer) { p.MAC = net.HardwareAddr{1, 0, 0, 0, 0, 1} }, []string{"MAC=\"01:00:00:00:00:01\"", "multicast"}},
		{func(p *Peer) { p.VTEP = netip.Addr{} }, []string{"VTEP", "missing"}},
		{func(p *Peer) { p.VTEP = netip.MustParseAddr("0.0.0.0") }, []string{"VTEP=0.0.0.0"}},
		{func(p *Peer) { p.VTEP = netip.MustParseAddr("2001:db8::1") }, []string{"VTEP=2001:db8::1", "family"}},
	} {
		p := good
		tc.change(&p)
		err := d.AddPeer(ctx, p)
		require.ErrorIs(t, err, driverapi.ErrInvalid, tc.says)
		for _, s := range tc.says {
			assert.Contains(t, err.Error(), s)
		}
	}
	assert.Empty(t, d.knownPeers("n"))

	// A network this host does not have: remembered, not an error.
	require.NoError(t, d.AddPeer(ctx, good))
	require.NoError(t, d.AddPeer(ctx, good))
	assert.Len(t, d.knownPeers("n"), 1)
	require.ErrorIs(t, d.RemovePeer(ctx, Peer{IP: good.IP}), driverapi.ErrInvalid)
	require.ErrorIs(t, d.RemovePeer(ctx, Peer{NetworkID: "n"}), driverapi.ErrInvalid)
	// A stale removal (another MAC) leaves the peer.
	require.NoError(t, d.RemovePeer(ctx, Peer{NetworkID: "n", IP: good.IP, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}}))
	assert.Len(t, d.knownPeers("n"), 1)
	require.NoError(t, d.RemovePeer(ctx, good))
	assert.Empty(t, d.knownPeers("n"))
	require.NoError(t, d.RemovePeer(ctx, good))

	// Unknown networks and endpoints.
	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "nope", EndpointID: "e", Sandbox: &osl.Namespace{}, InterfaceName: "eth0"})
	require.ErrorIs(t, err, driverapi.ErrNotFound)
	assert.Contains(t, err.Error(), `"nope"`)
	for _, err := range []error{
		d.Leave(ctx, driverapi.LeaveRequest{NetworkID: "nope", EndpointID: "e"}),
		d.DeleteNetwork(ctx, "nope"),
		d.DeleteEndpoint(ctx, "nope", "e"),
		d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "nope", EndpointID: "e"}),
	} {
		require.True(t, errors.Is(err, driverapi.ErrNotFound), "%v", err)
		assert.Contains(t, err.Error(), `"nope"`)
	}
	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "nope", EndpointID: "e", Sandbox: &osl.Namespace{}, InterfaceName: "a/b"})
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.Contains(t, err.Error(), `"a/b"`)
}
