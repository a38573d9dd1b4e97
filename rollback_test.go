package cnm_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
)

var errInjected = errors.New("injected fault")

// failAt returns a fault hook that fails exactly the named step.
func failAt(step string) func(string) error {
	return func(s string) error {
		if s == step {
			return errInjected
		}
		return nil
	}
}

// failOnce returns a fault hook that fails the named step the first time
// only, so that a rollback passing the same step again succeeds.
func failOnce(step string) func(string) error {
	var mu sync.Mutex
	failed := false
	return func(s string) error {
		mu.Lock()
		defer mu.Unlock()
		if s == step && !failed {
			failed = true
			return errInjected
		}
		return nil
	}
}

// linkNames lists the links of a namespace file, sorted.
func linkNames(t *testing.T, path string) string {
	t.Helper()
	ns, err := osl.OpenNamespace(context.Background(), path)
	require.NoError(t, err)
	defer ns.Close()
	links, err := ns.Links(context.Background())
	require.NoError(t, err)
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

func TestRollbackNetwork(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	subnet := netip.MustParsePrefix("10.50.0.0/24")
	for _, step := range cnm.Steps["network"] {
		t.Run(step, func(t *testing.T) {
			cnm.SetFaultHook(ctrl, failAt(step))
			_, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: subnet}),
				cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd50::/64")}))
			require.ErrorIs(t, err, errInjected)
			cnm.SetFaultHook(ctrl, nil)
			assert.Empty(t, ctrl.Networks())
			cnmtest.AssertNoLeaks(t, host)
			// Name and subnets are free again.
			nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: subnet}),
				cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd50::/64")}))
			require.NoError(t, err)
			require.NoError(t, nw.Delete(ctx))
		})
	}
	cnmtest.AssertNoLeaks(t, host)
}

func TestRollbackEndpoint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.51.0.0/24")}),
		cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd51::/64")}))
	require.NoError(t, err)
	want4, want6 := netip.MustParseAddr("10.51.0.9"), netip.MustParseAddr("fd51::9")
	for _, step := range cnm.Steps["endpoint"] {
		t.Run(step, func(t *testing.T) {
			cnm.SetFaultHook(ctrl, failAt(step))
			_, err := nw.CreateEndpoint(ctx, "ep", cnm.WithIPv4Address(want4), cnm.WithIPv6Address(want6))
			require.ErrorIs(t, err, errInjected)
			cnm.SetFaultHook(ctrl, nil)
			assert.Empty(t, nw.Endpoints())
			// Name and both addresses were released.
			ep, err := nw.CreateEndpoint(ctx, "ep", cnm.WithIPv4Address(want4), cnm.WithIPv6Address(want6))
			require.NoError(t, err)
			require.NoError(t, ep.Delete(ctx))
		})
	}
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

func TestRollbackSandbox(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	for _, step := range cnm.Steps["sandbox"] {
		t.Run(step, func(t *testing.T) {
			cnm.SetFaultHook(ctrl, failAt(step))
			_, err := ctrl.NewSandbox(ctx, "c1")
			require.ErrorIs(t, err, errInjected)
			cnm.SetFaultHook(ctrl, nil)
			assert.Empty(t, ctrl.Sandboxes())
			cnmtest.AssertNoLeaks(t, host)
			sb, err := ctrl.NewSandbox(ctx, "c1")
			require.NoError(t, err)
			require.NoError(t, sb.Delete(ctx))
		})
	}
	cnmtest.AssertNoLeaks(t, host)
}

// TestRollbackJoin fails each step of a join of a second endpoint (so the
// sandbox already has a default route that a failed join must not disturb)
// and checks that the sandbox, the host and the hosts file are as before.
func TestRollbackJoin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	first, err := ctrl.NewNetwork(ctx, "bridge", "first", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.52.0.0/24")}))
	require.NoError(t, err)
	second, err := ctrl.NewNetwork(ctx, "bridge", "second", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.53.0.0/24")}),
		cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd53::/64")}))
	require.NoError(t, err)
	sb, err := ctrl.NewSandbox(ctx, "c", cnm.WithHostname("c"))
	require.NoError(t, err)
	ep1, err := first.CreateEndpoint(ctx, "ep1")
	require.NoError(t, err)
	require.NoError(t, ep1.Join(ctx, sb))
	ep2, err := second.CreateEndpoint(ctx, "ep2")
	require.NoError(t, err)

	snapshot := func() (string, string, string, string) {
		ns, err := osl.OpenNamespace(ctx, sb.Key())
		require.NoError(t, err)
		defer ns.Close()
		r4, err := ns.Routes(ctx, 4)
		require.NoError(t, err)
		r6, err := ns.Routes(ctx, 6)
		require.NoError(t, err)
		hosts, err := os.ReadFile(sb.HostsPath())
		require.NoError(t, err)
		var rs []string
		for _, r := range append(r4, r6...) {
			if !r.Dst.Addr().IsLinkLocalUnicast() && !r.Dst.Addr().IsMulticast() {
				rs = append(rs, r.String())
			}
		}
		sort.Strings(rs)
		return linkNames(t, sb.Key()), linkNames(t, host.Path), strings.Join(rs, ";"), string(hosts)
	}
	sbLinks, hostLinks, routes, hosts := snapshot()

	for _, step := range cnm.Steps["join"] {
		t.Run(step, func(t *testing.T) {
			// Gateway priority makes ep2 take over the default route, so the
			// gateway step has something to undo.
			cnm.SetFaultHook(ctrl, failOnce(step))
			err := ep2.Join(ctx, sb, cnm.WithGatewayPriority(10))
			require.ErrorIs(t, err, errInjected)
			cnm.SetFaultHook(ctrl, nil)

			assert.Empty(t, ep2.Info().InterfaceName)
			assert.Len(t, sb.Endpoints(), 1)
			l, h, r, f := snapshot()
			assert.Equal(t, sbLinks, l, "sandbox links")
			assert.Equal(t, routes, r, "sandbox routes")
			assert.Equal(t, hosts, f, "hosts file")
			// The host end of a deleted veth may take a moment to go.
			assert.Eventually(t, func() bool { return linkNames(t, host.Path) == hostLinks }, leakWait, pollEvery, "host links: %s", h)
		})
	}
	// The endpoint still joins after all those failures.
	require.NoError(t, ep2.Join(ctx, sb, cnm.WithGatewayPriority(10)))
	assert.Equal(t, "eth1", ep2.Info().InterfaceName)

	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, first.Delete(ctx))
	require.NoError(t, second.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}

// TestFailedLeaveAndDeletesChangeNothing fails a Leave, a sandbox Delete
// and a network Delete where their drivers would fail: each returns the
// error and leaves the sandbox, its interface, default route and hosts file,
// and the network, as they were; each then succeeds when tried again.
func TestFailedLeaveAndDeletesChangeNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.54.0.0/24")}))
	require.NoError(t, err)
	sb, ep := container(t, nw, "c")
	// A second network with a lower gateway priority: a leave of ep moves
	// the default route to it first, which the failed leave must undo.
	other, err := ctrl.NewNetwork(ctx, "bridge", "other", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.55.0.0/24")}))
	require.NoError(t, err)
	ep2, err := other.CreateEndpoint(ctx, "c2")
	require.NoError(t, err)
	require.NoError(t, ep2.Join(ctx, sb, cnm.WithGatewayPriority(-1)))
	hosts, err := os.ReadFile(sb.HostsPath())
	require.NoError(t, err)
	links, routes := linkNames(t, sb.Key()), defaultRoutes(t, sb, 4)
	unchanged := func() {
		t.Helper()
		assert.Equal(t, sb.ID(), ep.Info().SandboxID, "still joined")
		assert.Equal(t, links, linkNames(t, sb.Key()))
		assert.Equal(t, routes, defaultRoutes(t, sb, 4))
		h, err := os.ReadFile(sb.HostsPath())
		require.NoError(t, err)
		assert.Equal(t, string(hosts), string(h))
	}

	cnm.SetFaultHook(ctrl, failAt(cnm.Steps["leave"][0]))
	require.ErrorIs(t, ep.Leave(ctx, sb), errInjected)
	unchanged()

	cnm.SetFaultHook(ctrl, failAt("sandbox-delete:detach"))
	require.ErrorIs(t, sb.Delete(ctx), errInjected)
	unchanged()
	got, err := ctrl.SandboxByID(sb.ID())
	require.NoError(t, err)
	assert.Same(t, sb, got, "the sandbox is still there")
	require.NoError(t, cnmtest.TCPExchange(ctx, host.Path, sb.Key(), netip.MustParseAddrPort("10.54.0.1:80"), tcpTimeout))

	cnm.SetFaultHook(ctrl, nil)
	require.NoError(t, ep.Leave(ctx, sb))
	require.NoError(t, ep.Join(ctx, sb))
	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, other.Delete(ctx))

	cnm.SetFaultHook(ctrl, failAt("network-delete:driver"))
	require.ErrorIs(t, nw.Delete(ctx), errInjected)
	cnm.SetFaultHook(ctrl, nil)
	got2, err := ctrl.NetworkByName("n")
	require.NoError(t, err)
	assert.Same(t, nw, got2)
	c2, _ := container(t, nw, "d") // the network still works
	require.NoError(t, c2.Delete(ctx))
	// A restart keeps it: the deletion mark was taken back.
	require.NoError(t, ctrl.Close())
	ctrl2 := reopen(t, host)
	nw2, err := ctrl2.NetworkByName("n")
	require.NoError(t, err)
	require.NoError(t, nw2.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}
