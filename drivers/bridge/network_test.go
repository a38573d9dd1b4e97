package bridge

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/osl"
)

// These tests drive the driver in a throwaway host namespace, where the
// forwarding and accept_ra sysctls are the namespace's own.

// testHost is a throwaway host namespace with a firewall in it.
type testHost struct {
	ns *osl.Namespace
	fw *firewall.Firewall
}

// newTestHost makes a host namespace with IP forwarding off, deleted with
// everything in it when the test ends.
func newTestHost(t *testing.T) *testHost {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces and links")
	}
	ctx := context.Background()
	ns, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "host"))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Delete()) })
	fd, err := ns.FD()
	require.NoError(t, err)
	fw, err := firewall.New(ctx, fd, "cnm-test")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, fw.Close()) })
	h := &testHost{ns: ns, fw: fw}
	// A new namespace may inherit these from the machine's
	// (net.core.devconf_inherit_init_net): start from off.
	h.set(t, sysctlForward4, "0")
	h.set(t, sysctlForward6, "0")
	return h
}

func (h *testHost) driver(t *testing.T, leaveSysctls bool) *driver {
	t.Helper()
	d, err := New(Config{HostNS: h.ns, Firewall: h.fw, Owner: mark.NewOwner(), LeaveHostSysctls: leaveSysctls})
	require.NoError(t, err)
	return d.(*driver)
}

func (h *testHost) set(t *testing.T, name, value string) {
	t.Helper()
	require.NoError(t, h.ns.SetSysctl(name, value))
}

func (h *testHost) get(t *testing.T, name string) string {
	t.Helper()
	v, err := h.ns.Sysctl(name)
	require.NoError(t, err)
	return v
}

// acceptRA returns interface ifname's accept_ra.
func (h *testHost) acceptRA(t *testing.T, ifname string) string {
	t.Helper()
	return h.get(t, "net/ipv6/conf/"+ifname+"/accept_ra")
}

// switches returns every sysctl the driver could write: IP forwarding, and
// each interface's forwarding and accept_ra.
func (h *testHost) switches(t *testing.T) map[string]string {
	t.Helper()
	all := map[string]string{sysctlForward4: h.get(t, sysctlForward4)}
	for _, pattern := range []string{"net/ipv4/conf/*/forwarding", "net/ipv6/conf/*/forwarding", "net/ipv6/conf/*/accept_ra"} {
		vals, err := h.ns.Sysctls(pattern)
		require.NoError(t, err)
		require.NotEmpty(t, vals, pattern)
		for k, v := range vals {
			all[k] = v
		}
	}
	return all
}

// addBridge makes a bridge that is not the driver's, with alias alias, and
// accept_ra set to acceptRA.
func (h *testHost) addBridge(t *testing.T, name, alias, acceptRA string) int {
	t.Helper()
	idx, err := h.ns.AddBridge(context.Background(), osl.BridgeSpec{Name: name, Alias: alias})
	require.NoError(t, err)
	h.set(t, "net/ipv6/conf/"+name+"/accept_ra", acceptRA)
	return idx
}

// links returns the names of the host namespace's links.
func (h *testHost) links(t *testing.T) []string {
	t.Helper()
	links, err := h.ns.Links(context.Background())
	require.NoError(t, err)
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	return names
}

// request returns a request for a dual-stack network (IPv4 only unless
// ipv6) on bridge br, with subnets numbered by n.
func request(id, br string, n int, ipv6 bool, opts map[string]string) driverapi.NetworkRequest {
	req := driverapi.NetworkRequest{
		ID:      id,
		Options: map[string]string{OptionBridgeName: br},
		IPv4: &driverapi.IPAMData{
			Pool:    netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/24", n)),
			Gateway: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.1/24", n)),
		},
	}
	if ipv6 {
		req.IPv6 = &driverapi.IPAMData{
			Pool:    netip.MustParsePrefix(fmt.Sprintf("fd00:%x::/64", n)),
			Gateway: netip.MustParsePrefix(fmt.Sprintf("fd00:%x::1/64", n)),
		}
	}
	for k, v := range opts {
		req.Options[k] = v
	}
	return req
}

// TestCreateNetworkKeepsAcceptingRAs: the first IPv6 network turns IPv6
// forwarding on, and before that sets accept_ra=2 on the host's interfaces
// that had 1, so that the host keeps its SLAAC default route. cnm's own
// links keep 1 (with forwarding on they ignore advertisements a container
// sends), and so does "default".
func TestCreateNetworkKeepsAcceptingRAs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newTestHost(t)
	d := h.driver(t, false)
	h.addBridge(t, "uplink0", "", "1") // e.g. the host's br0, configured by SLAAC
	h.addBridge(t, "lan0", "", "0")
	other := h.addBridge(t, "other0", mark.NewOwner().Link("n0"), "1") // another controller's
	sb, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "sandbox"))
	require.NoError(t, err)
	defer sb.Delete()
	require.NoError(t, h.ns.AddVeth(ctx, osl.VethSpec{HostName: "vport0", PeerName: "eth0", PeerNS: sb, MasterIndex: other}))
	h.set(t, "net/ipv6/conf/vport0/accept_ra", "1")
	defaultRA := h.acceptRA(t, "default")

	require.NoError(t, d.CreateNetwork(ctx, request("n4", "br-v4", 1, false, nil)))
	assert.Equal(t, "1", h.get(t, sysctlForward4))
	assert.Equal(t, "0", h.get(t, sysctlForward6), "an IPv4 network leaves IPv6 forwarding alone")
	assert.Equal(t, "1", h.acceptRA(t, "uplink0"), "an IPv4 network leaves accept_ra alone")

	require.NoError(t, d.CreateNetwork(ctx, request("n6", "br-v6", 2, true, nil)))
	assert.Equal(t, "1", h.get(t, sysctlForward6))
	assert.Equal(t, "2", h.acceptRA(t, "uplink0"), "the host's uplink keeps taking router advertisements")
	assert.Equal(t, "0", h.acceptRA(t, "lan0"), "accept_ra=0 stays")
	assert.Equal(t, "1", h.acceptRA(t, "other0"), "another controller's bridge")
	assert.Equal(t, "1", h.acceptRA(t, "vport0"), "a port of another controller's bridge")
	assert.Equal(t, "0", h.acceptRA(t, "br-v4"), "this driver's bridges take no advertisements from containers")
	assert.Equal(t, "0", h.acceptRA(t, "br-v6"), "this driver's bridges take no advertisements from containers")
	assert.Equal(t, defaultRA, h.acceptRA(t, "default"))

	// Forwarding stays on once a network needed it.
	require.NoError(t, d.DeleteNetwork(ctx, "n6"))
	require.NoError(t, d.DeleteNetwork(ctx, "n4"))
	assert.Equal(t, "1", h.get(t, sysctlForward4))
	assert.Equal(t, "1", h.get(t, sysctlForward6))
}

// TestCreateNetworkFailureRestoresSysctls fails a network create after the
// sysctls were set, at the bridge (its name is taken) and at the firewall
// (another network's rules name the bridge). Each leaves every sysctl as it
// was, and no bridge; a create that found forwarding on leaves it on.
func TestCreateNetworkFailureRestoresSysctls(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fault   func(t *testing.T, h *testHost)
		already string // forwarding before the create
	}{
		{"bridge name taken", func(t *testing.T, h *testHost) { h.addBridge(t, "br-x", "", "1") }, "0"},
		{"firewall", func(t *testing.T, h *testHost) {
			require.NoError(t, h.fw.AddNetwork(context.Background(), firewall.Network{ID: "squatter", Bridge: "br-x"}))
		}, "0"},
		{"forwarding was on", func(t *testing.T, h *testHost) { h.addBridge(t, "br-x", "", "1") }, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			h := newTestHost(t)
			d := h.driver(t, false)
			h.addBridge(t, "uplink0", "", "1")
			h.set(t, sysctlForward4, tc.already)
			h.set(t, sysctlForward6, tc.already)
			h.set(t, "net/ipv6/conf/uplink0/accept_ra", "1") // writing forwarding resets it
			tc.fault(t, h)
			before, links := h.switches(t), h.links(t)

			err := d.CreateNetwork(ctx, request("n1", "br-x", 1, true, nil))
			require.ErrorIs(t, err, driverapi.ErrExists)
			assert.Equal(t, before, h.switches(t))
			assert.Equal(t, links, h.links(t))
			assert.Equal(t, tc.already, h.get(t, sysctlForward6))

			// The same network on a free bridge name is made, and keeps
			// forwarding on.
			require.NoError(t, d.CreateNetwork(ctx, request("n1", "br-y", 1, true, nil)))
			assert.Equal(t, "1", h.get(t, sysctlForward4))
			assert.Equal(t, "1", h.get(t, sysctlForward6))
		})
	}
}

// TestCreateNetworkConcurrentRollback creates networks in parallel while
// forwarding is off, half of them failing after their sysctl step: however
// they interleave, a failure never turns off forwarding that a network made
// meanwhile relies on.
func TestCreateNetworkConcurrentRollback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newTestHost(t)
	d := h.driver(t, false)
	const n = 8
	for i := range n / 2 {
		h.addBridge(t, fmt.Sprintf("br-bad%d", i), "", "0")
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			br := fmt.Sprintf("br-ok%d", i/2)
			if i%2 == 1 {
				br = fmt.Sprintf("br-bad%d", i/2)
			}
			errs[i] = d.CreateNetwork(ctx, request(fmt.Sprintf("n%d", i), br, i+1, true, nil))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i%2 == 1 {
			assert.ErrorIs(t, err, driverapi.ErrExists, "network %d", i)
		} else {
			assert.NoError(t, err, "network %d", i)
		}
	}
	assert.Equal(t, "1", h.get(t, sysctlForward4))
	assert.Equal(t, "1", h.get(t, sysctlForward6))
}

// TestLeaveHostSysctls: with Config.LeaveHostSysctls the driver writes no
// sysctl, and a network that needs forwarding while it is off fails with an
// error naming the sysctl, before it makes anything.
func TestLeaveHostSysctls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newTestHost(t)
	d := h.driver(t, true)
	h.addBridge(t, "uplink0", "", "1")
	before, links := h.switches(t), h.links(t)

	err := d.CreateNetwork(ctx, request("n1", "br-1", 1, false, nil))
	require.ErrorIs(t, err, driverapi.ErrNotSupported)
	assert.ErrorContains(t, err, "net.ipv4.ip_forward=1")
	assert.Equal(t, links, h.links(t))

	require.NoError(t, d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "n2", Internal: true,
		Options: map[string]string{OptionBridgeName: "br-2"}}), "an internal network needs no forwarding")
	require.NoError(t, d.DeleteNetwork(ctx, "n2"))
	assert.Equal(t, before, h.switches(t))

	// IPv4 forwarding on, IPv6 off: an IPv6 network names the IPv6 switch.
	h.set(t, sysctlForward4, "1")
	before = h.switches(t)
	err = d.CreateNetwork(ctx, request("n3", "br-3", 3, true, nil))
	require.ErrorIs(t, err, driverapi.ErrNotSupported)
	assert.ErrorContains(t, err, "net.ipv6.conf.all.forwarding=1")
	assert.Equal(t, before, h.switches(t))

	// With forwarding on, as the runtime set it, networks are made and
	// accept_ra stays as the runtime left it.
	h.set(t, sysctlForward6, "1")
	h.set(t, "net/ipv6/conf/uplink0/accept_ra", "1")
	before = h.switches(t)
	require.NoError(t, d.CreateNetwork(ctx, request("n3", "br-3", 3, true, nil)))
	require.NoError(t, d.DeleteNetwork(ctx, "n3"))
	assert.Equal(t, before, h.switches(t))
}

// TestCreateNetworkIPv6MTU: IPv6 needs an MTU of at least 1280; a network
// with IPv6 and a smaller MTU is refused before anything is made.
func TestCreateNetworkIPv6MTU(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newTestHost(t)
	d := h.driver(t, false)
	before, links := h.switches(t), h.links(t)

	err := d.CreateNetwork(ctx, request("n1", "br-1", 1, true, map[string]string{OptionMTU: "1279"}))
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.ErrorContains(t, err, "com.docker.network.driver.mtu=1279")
	assert.Equal(t, links, h.links(t))
	assert.Equal(t, before, h.switches(t))

	require.NoError(t, d.CreateNetwork(ctx, request("n1", "br-1", 1, true, map[string]string{OptionMTU: "1280"})))
	require.NoError(t, d.CreateNetwork(ctx, request("n2", "br-2", 2, false, map[string]string{OptionMTU: "1279"})),
		"an IPv4-only network takes it")
}

// An IPv6 bridge carries fe80::1/64 besides its gateway (ready without
// DAD), unless its subnet is link-local: there the gateway is the bridge's
// link-local address, and fe80::1 is the gateway's or a container's.
func TestBridgeLinkLocal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newTestHost(t)
	d := h.driver(t, false)
	addrsOf := func(br string) []netip.Prefix {
		l, err := h.ns.LinkByName(ctx, br)
		require.NoError(t, err)
		addrs, err := h.ns.Addresses(ctx, l.Index)
		require.NoError(t, err)
		return addrs
	}
	require.NoError(t, d.CreateNetwork(ctx, request("n1", "br-1", 1, true, nil)))
	assert.Contains(t, addrsOf("br-1"), bridgeLinkLocal)
	assert.Contains(t, addrsOf("br-1"), netip.MustParsePrefix("fd00:1::1/64"))

	for i, gw := range []string{"fe80::1/64", "fe80::fe/64"} {
		req := request(fmt.Sprintf("ll%d", i), "br-ll", 2, false, nil)
		req.IPv6 = &driverapi.IPAMData{Pool: netip.MustParsePrefix("fe80::/64"), Gateway: netip.MustParsePrefix(gw)}
		require.NoError(t, d.CreateNetwork(ctx, req), "gateway %s", gw)
		addrs := addrsOf("br-ll")
		assert.Contains(t, addrs, netip.MustParsePrefix(gw))
		if gw != "fe80::1/64" {
			assert.NotContains(t, addrs, bridgeLinkLocal, "fe80::1 is left to the subnet's IPAM")
		}
		require.NoError(t, d.DeleteNetwork(ctx, req.ID))
	}
}

// A cnm bridge takes no router advertisements: a container cannot give
// the host a default route through it, whatever forwarding is.
func TestBridgeRefusesRouterAdvertisements(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t)
	d := h.driver(t, false)
	require.NoError(t, d.CreateNetwork(ctx, request("ra", "br-ra", 60, false, nil)))
	assert.Equal(t, "0", h.acceptRA(t, "br-ra"))
	require.NoError(t, d.DeleteNetwork(ctx, "ra"))
}
