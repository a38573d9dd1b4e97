package subif

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/parent"
	"github.com/seed53641549/cnm/osl"
)

// Option keys of [testKind], for the tests' option maps.
const (
	optParent = parent.OptionParent
	optMode   = "testvlan_mode"
)

// testKind is the Kind the package's tests drive: its links are macvlan
// links (every kernel the tests run on has macvlan), but its words are its
// own, so the tests show which come from the Kind. Its modes: "bridge" (the
// default), "alone" (Exclusive: macvlan passthru) and "routed" (Routed).
func testKind() Kind[osl.MacvlanMode] {
	return Kind[osl.MacvlanMode]{
		Type:           "testvlan",
		InternalPrefix: "tvi-",
		ModeOption:     optMode,
		Modes: []Mode[osl.MacvlanMode]{
			{Name: "bridge", Value: osl.MacvlanBridge},
			{Name: "alone", Value: osl.MacvlanPassthru, Exclusive: true},
			{Name: "routed", Value: osl.MacvlanBridge, Routed: true},
		},
		OwnMAC:       true,
		NeedsGateway: "a testvlan network with a parent",
		AddLink: func(ctx context.Context, host *osl.Namespace, s LinkSpec[osl.MacvlanMode]) error {
			return host.AddMacvlan(ctx, osl.MacvlanSpec{Name: s.Name, ParentIndex: s.ParentIndex, NS: s.NS, Mode: s.Mode, MAC: s.MAC, MTU: s.MTU})
		},
	}
}

func newNS(t *testing.T) *osl.Namespace {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces and links")
	}
	ns, err := osl.NewNamespace(context.Background(), filepath.Join(t.TempDir(), "ns"))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Delete()) })
	return ns
}

func names(t *testing.T, ns *osl.Namespace) []string {
	t.Helper()
	links, err := ns.Links(context.Background())
	require.NoError(t, err)
	var out []string
	for _, l := range links {
		out = append(out, l.Name)
	}
	sort.Strings(out)
	return out
}

// newHost returns a host namespace whose eth1 (up) is a veth end, and a
// driver for it.
func newHost(t *testing.T) (*osl.Namespace, *driver[osl.MacvlanMode]) {
	t.Helper()
	return newHostOf(t, testKind())
}

// newHostOf is newHost with a driver of kind k.
func newHostOf(t *testing.T, k Kind[osl.MacvlanMode]) (*osl.Namespace, *driver[osl.MacvlanMode]) {
	t.Helper()
	host := newNS(t)
	wire := newNS(t)
	require.NoError(t, host.AddVeth(context.Background(), osl.VethSpec{HostName: "eth1", PeerName: "w", PeerNS: wire}))
	d, err := New(k, Config{HostNS: host})
	require.NoError(t, err)
	return host, d.(*driver[osl.MacvlanMode])
}

func v4(subnet, gw string) *driverapi.IPAMData {
	d := &driverapi.IPAMData{Pool: netip.MustParsePrefix(subnet)}
	if gw != "" {
		d.Gateway = netip.MustParsePrefix(gw)
	}
	return d
}

// TestCreateNetworkRefusals checks the refusals that the controller's own
// checks hide from the public API (it always fills in a gateway, and IPAM
// refuses overlapping subnets first), and that none leaves anything.
func TestCreateNetworkRefusals(t *testing.T) {
	ctx := context.Background()
	host, d := newHost(t)
	require.NoError(t, d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "a", Name: "a", Options: map[string]string{optParent: "eth1"}, IPv4: v4("10.1.0.0/24", "10.1.0.1/24")}))
	before := names(t, host)

	for _, tc := range []struct {
		name    string
		req     driverapi.NetworkRequest
		is      error
		mention string
	}{
		{"subnet without gateway", driverapi.NetworkRequest{ID: "b", Name: "lan", Options: map[string]string{optParent: "eth1"}, IPv4: v4("10.2.0.0/24", "")},
			driverapi.ErrInvalid, "network lan: subnet 10.2.0.0/24 has no gateway"},
		{"gateway outside subnet", driverapi.NetworkRequest{ID: "b", Name: "lan", Options: map[string]string{optParent: "eth1"}, IPv4: v4("10.2.0.0/24", "10.3.0.1/24")},
			driverapi.ErrInvalid, "gateway 10.3.0.1 is outside subnet 10.2.0.0/24"},
		{"overlapping subnet on one parent", driverapi.NetworkRequest{ID: "b", Name: "lan", Options: map[string]string{optParent: "eth1"}, IPv4: v4("10.1.0.0/16", "10.1.0.1/16")},
			driverapi.ErrExists, "subnet 10.1.0.0/16 overlaps subnet 10.1.0.0/24 of network a"},
		{"same ID", driverapi.NetworkRequest{ID: "a", Name: "a", IPv4: v4("10.9.0.0/24", "10.9.0.1/24")},
			driverapi.ErrExists, "testvlan network a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := d.CreateNetwork(ctx, tc.req)
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.mention)
			assert.Equal(t, before, names(t, host))
			assert.Len(t, d.networks, 1)
		})
	}
	// An internal network needs no gateway.
	require.NoError(t, d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "i", Name: "i", Internal: true, IPv4: v4("10.4.0.0/24", "")}))
	assert.Contains(t, names(t, host), "tvi-i")
	require.NoError(t, d.DeleteNetwork(ctx, "i"))
	require.NoError(t, d.DeleteNetwork(ctx, "a"))
	assert.Equal(t, before, names(t, host))
	require.ErrorIs(t, d.DeleteNetwork(ctx, "a"), driverapi.ErrNotFound)
}

// TestEndpointLifecycle checks the driver's bookkeeping around Join and
// Leave: double joins, deleting joined endpoints and busy networks, and a
// Leave of a sandbox that is going away, which deletes nothing.
func TestEndpointLifecycle(t *testing.T) {
	ctx := context.Background()
	host, d := newHost(t)
	require.NoError(t, d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "n", Name: "n", Options: map[string]string{optParent: "eth1"}, IPv4: v4("10.1.0.0/24", "10.1.0.254/24")}))
	sb := newNS(t)
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	require.NoError(t, d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "n", EndpointID: "e", MAC: mac}))
	require.ErrorIs(t, d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "n", EndpointID: "e"}), driverapi.ErrExists)
	require.ErrorIs(t, d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "n", EndpointID: "m", MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}}), driverapi.ErrInvalid)

	resp, err := d.Join(ctx, driverapi.JoinRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb, InterfaceName: "eth0", MAC: mac})
	require.NoError(t, err)
	assert.Equal(t, driverapi.JoinResponse{Gateway: netip.MustParseAddr("10.1.0.254")}, resp)
	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb, InterfaceName: "eth1", MAC: mac})
	require.ErrorIs(t, err, driverapi.ErrExists)
	assert.Equal(t, []string{"eth0", "lo"}, names(t, sb))
	require.ErrorIs(t, d.DeleteEndpoint(ctx, "n", "e"), driverapi.ErrInUse)
	require.ErrorIs(t, d.DeleteNetwork(ctx, "n"), driverapi.ErrInUse)

	// Interface name taken in the sandbox: refused, nothing made, endpoint free.
	require.NoError(t, d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "n", EndpointID: "f"}))
	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "n", EndpointID: "f", Sandbox: sb, InterfaceName: "eth0"})
	require.ErrorIs(t, err, driverapi.ErrExists)
	assert.ErrorContains(t, err, "interface eth0")
	require.NoError(t, d.DeleteEndpoint(ctx, "n", "f"))

	require.NoError(t, d.Leave(ctx, driverapi.LeaveRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb}))
	assert.Equal(t, []string{"lo"}, names(t, sb))

	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb, InterfaceName: "eth0", MAC: mac})
	require.NoError(t, err, "join again after leave")
	require.NoError(t, d.Leave(ctx, driverapi.LeaveRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb, SandboxGone: true}))
	assert.Equal(t, []string{"eth0", "lo"}, names(t, sb), "SandboxGone: the namespace takes the link, the driver deletes none")
	require.NoError(t, d.DeleteEndpoint(ctx, "n", "e"))
	require.NoError(t, d.DeleteNetwork(ctx, "n"))
	assert.Equal(t, []string{"eth1", "lo"}, names(t, host))
}

// TestRestoreWithMissingParent checks that a network whose parent vanished
// while no controller ran is taken back, and that its joins fail with a
// clear error until the parent exists again, then work.
func TestRestoreWithMissingParent(t *testing.T) {
	ctx := context.Background()
	host, d := newHost(t)
	req := driverapi.NetworkRequest{ID: "n", Name: "n", Options: map[string]string{optParent: "eth5"}, IPv4: v4("10.1.0.0/24", "10.1.0.1/24")}
	require.ErrorIs(t, d.CreateNetwork(ctx, req), driverapi.ErrNotFound)
	require.NoError(t, d.RestoreNetwork(ctx, req))
	require.NoError(t, d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "n", EndpointID: "e"}))
	sb := newNS(t)
	_, err := d.Join(ctx, driverapi.JoinRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb, InterfaceName: "eth0"})
	require.ErrorIs(t, err, driverapi.ErrNotFound)
	assert.ErrorContains(t, err, `parent "eth5" of network n does not exist`)

	wire := newNS(t)
	require.NoError(t, host.AddVeth(ctx, osl.VethSpec{HostName: "eth5", PeerName: "w5", PeerNS: wire}))
	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb, InterfaceName: "eth0"})
	require.NoError(t, err, "the parent is back")
	require.NoError(t, d.RestoreEndpoint(ctx, driverapi.RestoreEndpointRequest{NetworkID: "n", EndpointID: "r", Sandbox: sb, InterfaceName: "eth9"}))
	require.ErrorIs(t, d.DeleteEndpoint(ctx, "n", "r"), driverapi.ErrInUse, "a restored joined endpoint is joined")
	require.NoError(t, d.FinishRestore(ctx))
}

// TestExclusiveMode checks a mode that has its parent alone (macvlan
// passthru): the parent table is asked for it, naming the mode option, and
// a second endpoint cannot join while one is joined.
func TestExclusiveMode(t *testing.T) {
	ctx := context.Background()
	host, d := newHost(t)
	require.NoError(t, d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "a", Name: "a", Options: map[string]string{optParent: "eth1"}, IPv4: v4("10.1.0.0/24", "10.1.0.1/24")}))
	err := d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "b", Name: "b", Options: map[string]string{optParent: "eth1", optMode: "alone"}, IPv4: v4("10.2.0.0/24", "10.2.0.1/24")})
	require.ErrorIs(t, err, driverapi.ErrExists)
	assert.ErrorContains(t, err, `option testvlan_mode=alone: network a already uses parent "eth1"`)
	require.NoError(t, d.DeleteNetwork(ctx, "a"))

	require.NoError(t, d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "b", Name: "b", Options: map[string]string{optParent: "eth1", optMode: "alone"}, IPv4: v4("10.2.0.0/24", "10.2.0.1/24")}))
	sb1, sb2 := newNS(t), newNS(t)
	for _, id := range []string{"e1", "e2"} {
		require.NoError(t, d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "b", EndpointID: id}))
	}
	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "b", EndpointID: "e1", Sandbox: sb1, InterfaceName: "eth0"})
	require.NoError(t, err)
	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "b", EndpointID: "e2", Sandbox: sb2, InterfaceName: "eth0"})
	require.ErrorIs(t, err, driverapi.ErrInUse)
	assert.ErrorContains(t, err, `option testvlan_mode=alone: parent "eth1" already carries endpoint e1; alone takes one endpoint`)
	assert.Equal(t, []string{"lo"}, names(t, sb2))
	require.NoError(t, d.Leave(ctx, driverapi.LeaveRequest{NetworkID: "b", EndpointID: "e1", Sandbox: sb1}))
	_, err = d.Join(ctx, driverapi.JoinRequest{NetworkID: "b", EndpointID: "e2", Sandbox: sb2, InterfaceName: "eth0"})
	require.NoError(t, err, "the parent is free again")
	require.NoError(t, d.Leave(ctx, driverapi.LeaveRequest{NetworkID: "b", EndpointID: "e2", Sandbox: sb2}))
	for _, id := range []string{"e1", "e2"} {
		require.NoError(t, d.DeleteEndpoint(ctx, "b", id))
	}
	require.NoError(t, d.DeleteNetwork(ctx, "b"))
	assert.Equal(t, []string{"eth1", "lo"}, names(t, host))
}

// TestRoutedMode checks a mode whose parent routes (ipvlan l3): a subnet
// needs no gateway, a gateway given is not reported, and Join reports a
// default route through the interface per family.
func TestRoutedMode(t *testing.T) {
	ctx := context.Background()
	_, d := newHost(t)
	v6 := &driverapi.IPAMData{Pool: netip.MustParsePrefix("fd01::/64")}
	require.NoError(t, d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "r", Name: "r", Options: map[string]string{optParent: "eth1", optMode: "routed"},
		IPv4: v4("10.1.0.0/24", "10.1.0.1/24"), IPv6: v6}))
	require.NoError(t, d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "r", EndpointID: "e"}))
	sb := newNS(t)
	resp, err := d.Join(ctx, driverapi.JoinRequest{NetworkID: "r", EndpointID: "e", Sandbox: sb, InterfaceName: "eth0"})
	require.NoError(t, err)
	assert.Equal(t, driverapi.JoinResponse{StaticRoutes: []driverapi.StaticRoute{
		{Destination: netip.MustParsePrefix("0.0.0.0/0")}, {Destination: netip.MustParsePrefix("::/0")},
	}}, resp)
	require.NoError(t, d.Leave(ctx, driverapi.LeaveRequest{NetworkID: "r", EndpointID: "e", Sandbox: sb}))
	require.NoError(t, d.DeleteEndpoint(ctx, "r", "e"))
	require.NoError(t, d.DeleteNetwork(ctx, "r"))
}

// TestJoinLinkSpec checks what Join asks of Kind.AddLink (the endpoint's
// MAC only for a Kind with OwnMAC), and how it reports a kernel without
// the link type: wrapping driverapi.ErrNotSupported for a KernelOptional
// Kind, as it comes otherwise. A failed Join leaves the endpoint unjoined.
func TestJoinLinkSpec(t *testing.T) {
	ctx := context.Background()
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	noKind := fmt.Errorf("add link: %w", osl.ErrKindNotSupported)
	for _, tc := range []struct {
		name           string
		ownMAC, kernel bool
		wantMAC        net.HardwareAddr
		is             error
		mention        string
	}{
		{"own MAC", true, false, mac, osl.ErrKindNotSupported, "add link: link type not supported"},
		{"parent's MAC, kernel optional", false, true, nil, driverapi.ErrNotSupported, "testvlan network n: the kernel has no testvlan: add link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := testKind()
			k.OwnMAC, k.KernelOptional = tc.ownMAC, tc.kernel
			var got []LinkSpec[osl.MacvlanMode]
			k.AddLink = func(ctx context.Context, host *osl.Namespace, s LinkSpec[osl.MacvlanMode]) error {
				got = append(got, s)
				return noKind
			}
			_, d := newHostOf(t, k)
			require.NoError(t, d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "n", Name: "n", Options: map[string]string{optParent: "eth1"}, IPv4: v4("10.1.0.0/24", "10.1.0.1/24")}))
			require.NoError(t, d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: "n", EndpointID: "e", MAC: mac}))
			sb := newNS(t)
			_, err := d.Join(ctx, driverapi.JoinRequest{NetworkID: "n", EndpointID: "e", Sandbox: sb, InterfaceName: "eth0", MAC: mac})
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.mention)
			if !tc.kernel {
				assert.NotErrorIs(t, err, driverapi.ErrNotSupported)
			}
			require.Len(t, got, 1)
			assert.Equal(t, "eth0", got[0].Name)
			assert.Equal(t, sb, got[0].NS)
			assert.Equal(t, osl.MacvlanBridge, got[0].Mode)
			assert.Equal(t, tc.wantMAC, got[0].MAC)
			assert.NotZero(t, got[0].ParentIndex)
			require.NoError(t, d.DeleteEndpoint(ctx, "n", "e"), "the failed join left the endpoint unjoined")
			require.NoError(t, d.DeleteNetwork(ctx, "n"))
		})
	}
}
