package ipvlan_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/internal/subif/subiftest"
	"github.com/seed53641549/cnm/osl"
)

const tcpTimeout = 2 * time.Second

var (
	lanSubnet = netip.MustParsePrefix("192.168.50.0/24")
	router    = netip.MustParseAddr("192.168.50.254")
)

// newLAN plugs the host namespace h into a new upstream namespace, whose
// switch carries the router's address (see subiftest.NewLAN).
func newLAN(t *testing.T, h *cnmtest.HostNS) *osl.Namespace {
	t.Helper()
	return subiftest.NewLAN(t, h.NS, netip.PrefixFrom(router, lanSubnet.Bits()), false)
}

// kernelHasIPvlan probes once, in a throwaway namespace, whether the kernel
// can make ipvlan links.
func kernelHasIPvlan(t *testing.T) error {
	t.Helper()
	ctx := context.Background()
	ns, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "probe"))
	require.NoError(t, err)
	defer ns.Delete()
	br, err := ns.AddBridge(ctx, osl.BridgeSpec{Name: "probe0"})
	require.NoError(t, err)
	err = ns.AddIPvlan(ctx, osl.IPvlanSpec{Name: "probe1", ParentIndex: br})
	if errors.Is(err, osl.ErrKindNotSupported) {
		return err
	}
	require.NoError(t, err)
	return nil
}

// TestIPvlanWithoutKernelSupport checks, on a kernel without ipvlan, that a
// Join fails with a clear error wrapping cnm.ErrNotSupported and leaves
// nothing; on a kernel with ipvlan it skips (TestIPvlanL2 covers that).
func TestIPvlanWithoutKernelSupport(t *testing.T) {
	t.Parallel()
	cnmtest.SkipUnlessRoot(t)
	if kernelHasIPvlan(t) == nil {
		t.Skip("the kernel has ipvlan")
	}
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	newLAN(t, host)
	nw, err := ctrl.NewNetwork(ctx, "ipvlan", "lan", cnm.WithIPv4(cnm.IPAMConfig{Subnet: lanSubnet, Gateway: router}),
		cnm.WithDriverOptions(map[string]string{"parent": "eth1"}))
	require.NoError(t, err, "the network itself needs no ipvlan link")
	sb, err := ctrl.NewSandbox(ctx, "a")
	require.NoError(t, err)
	ep, err := nw.CreateEndpoint(ctx, "a")
	require.NoError(t, err)
	err = ep.Join(ctx, sb)
	require.ErrorIs(t, err, cnm.ErrNotSupported)
	assert.ErrorContains(t, err, "the kernel has no ipvlan")
	assert.Equal(t, []string{"lo/device"}, subiftest.LinkNames(t, sb.Key()))
	require.NoError(t, ep.Delete(ctx))
	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host, "eth1")
}

// TestIPvlanMacvlanShareNoParent checks that ipvlan and macvlan networks
// never share a parent (the kernel gives a link to one of them only), in
// either order, and that the refusal leaves nothing.
func TestIPvlanMacvlanShareNoParent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	newLAN(t, host)
	before := subiftest.LinkNames(t, host.Path)
	for _, order := range [][2]string{{"macvlan", "ipvlan"}, {"ipvlan", "macvlan"}} {
		first, err := ctrl.NewNetwork(ctx, order[0], "first", cnm.WithIPv4(cnm.IPAMConfig{Subnet: lanSubnet, Gateway: router}),
			cnm.WithDriverOptions(map[string]string{"parent": "eth1"}))
		require.NoError(t, err)
		_, err = ctrl.NewNetwork(ctx, order[1], "second", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("192.168.51.0/24")}),
			cnm.WithDriverOptions(map[string]string{"parent": "eth1"}))
		require.ErrorIs(t, err, cnm.ErrExists)
		assert.ErrorContains(t, err, `parent="eth1": `+order[0]+` network `+first.ID()+` uses this parent`)
		assert.Equal(t, before, subiftest.LinkNames(t, host.Path))
		require.NoError(t, first.Delete(ctx))
	}
	cnmtest.AssertNoLeaks(t, host, "eth1")
}

// TestIPvlanBadInput checks the ipvlan driver's own refusals through the
// public API; the parent checks are shared with macvlan (package parent).
func TestIPvlanBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	newLAN(t, host)
	before := subiftest.LinkNames(t, host.Path)
	for _, tc := range []struct {
		opts    map[string]string
		is      error
		mention string
	}{
		{map[string]string{"parent": "eth1", "ipvlan_mode": "l4"}, cnm.ErrInvalid, `ipvlan_mode="l4": unknown mode`},
		{map[string]string{"parent": "eth9"}, cnm.ErrNotFound, `parent="eth9": no such link`},
		{map[string]string{"parent": "eth1.5000"}, cnm.ErrInvalid, `parent="eth1.5000": vlan id 5000 out of range 1-4094`},
		{map[string]string{"parent": "eth1", "com.docker.network.driver.mtu": "1501"}, cnm.ErrInvalid, `mtu=1501: above the MTU 1500 of parent "eth1"`},
		{map[string]string{"parent": "eth1", "macvlan_mode": "bridge"}, cnm.ErrInvalid, `unknown ipvlan driver option "macvlan_mode"`},
	} {
		_, err := ctrl.NewNetwork(ctx, "ipvlan", "bad", cnm.WithIPv4(cnm.IPAMConfig{Subnet: lanSubnet}), cnm.WithDriverOptions(tc.opts))
		require.ErrorIs(t, err, tc.is, "%v", tc.opts)
		assert.ErrorContains(t, err, tc.mention)
		assert.Equal(t, before, subiftest.LinkNames(t, host.Path))
	}
	assert.Empty(t, ctrl.Networks())
	cnmtest.AssertNoLeaks(t, host, "eth1")
}

// TestIPvlanModes checks, where the kernel has ipvlan, that two sandboxes on
// one network talk in l2 and l3 mode, and in l2 mode reach the router
// upstream through their gateway; in l3 mode they get a default route
// through the interface and no gateway.
func TestIPvlanModes(t *testing.T) {
	t.Parallel()
	cnmtest.SkipUnlessRoot(t)
	if err := kernelHasIPvlan(t); err != nil {
		t.Skipf("kernel has no ipvlan (CONFIG_IPVLAN): %v", err)
	}
	for _, mode := range []string{"l2", "l3"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			ctrl, host := cnmtest.NewController(t)
			up := newLAN(t, host)
			nw, err := ctrl.NewNetwork(ctx, "ipvlan", "lan", cnm.WithIPv4(cnm.IPAMConfig{Subnet: lanSubnet, Gateway: router}),
				cnm.WithDriverOptions(map[string]string{"parent": "eth1", "ipvlan_mode": mode}))
			require.NoError(t, err)
			var sbs []*cnm.Sandbox
			var eps []*cnm.Endpoint
			for _, name := range []string{"a", "b"} {
				sb, err := ctrl.NewSandbox(ctx, name)
				require.NoError(t, err)
				ep, err := nw.CreateEndpoint(ctx, name)
				require.NoError(t, err)
				require.NoError(t, ep.Join(ctx, sb))
				sbs, eps = append(sbs, sb), append(eps, ep)
			}
			assert.Contains(t, subiftest.LinkNames(t, sbs[0].Key()), "eth0/ipvlan")
			require.NoError(t, cnmtest.TCPExchange(ctx, sbs[1].Key(), sbs[0].Key(), netip.AddrPortFrom(eps[1].Info().IPv4.Addr(), 80), tcpTimeout))
			if mode == "l2" {
				assert.Equal(t, router, eps[0].Info().Gateway)
				require.NoError(t, cnmtest.TCPExchange(ctx, up.Path(), sbs[0].Key(), netip.AddrPortFrom(router, 80), tcpTimeout))
			} else {
				assert.False(t, eps[0].Info().Gateway.IsValid(), "l3: no gateway, a device route")
			}
			for _, sb := range sbs {
				require.NoError(t, sb.Delete(ctx))
			}
			require.NoError(t, nw.Delete(ctx))
			cnmtest.AssertNoLeaks(t, host, "eth1")
		})
	}
}
