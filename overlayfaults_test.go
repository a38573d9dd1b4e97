//go:build linux

package cnm_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// Failure paths of overlay networks that the rollback and crash tests do
// not reach: the gateway bridge endpoint failing to be made or removed, a
// network deleted by another host while an endpoint is being made here,
// a peer record nobody can read, and a join the driver lost while its
// controller was down.

// TestOverlayEgressFaults: the gateway bridge endpoint of a join cannot be
// made: the join fails and leaves nothing. Its removal at a leave fails:
// the leave is done all the same, the gateway endpoint stays joined, the
// next join uses it instead of making a second one, and the next leave
// removes it.
func TestOverlayEgressFaults(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 1, cnmtest.ClusterOptions{})
	h := cl.Hosts[0]
	nw, err := h.Ctrl.NewNetwork(ctx, "overlay", "eg", ipv4Subnet("10.145.0.0/24"))
	require.NoError(t, err)
	sb, err := h.Ctrl.NewSandbox(ctx, "eg")
	require.NoError(t, err)
	ep, err := nw.CreateEndpoint(ctx, "eg")
	require.NoError(t, err)
	gwEndpoints := func() []*cnm.Endpoint {
		gw, err := h.Ctrl.NetworkByName(cnm.GatewayBridgeNetwork)
		if errors.Is(err, cnm.ErrNotFound) {
			return nil
		}
		require.NoError(t, err)
		return gw.Endpoints()
	}
	links := func() []string {
		require.NoError(t, h.Ctrl.Settle(ctx))
		l, err := cnmtestLinks(ctx, sb.Key())
		require.NoError(t, err)
		return l
	}
	// failNth fails the nth call of step.
	failNth := func(step string, nth int) *int {
		calls := 0
		cnm.SetFaultHook(h.Ctrl, func(s string) error {
			if s == step {
				calls++
				if calls == nth {
					return errors.New("injected fault")
				}
			}
			return nil
		})
		return &calls
	}

	// The join's only endpoint creation is the gateway bridge's.
	calls := failNth("endpoint:ipv4", 1)
	err = ep.Join(ctx, sb)
	require.Equal(t, 1, *calls)
	require.ErrorContains(t, err, "gateway bridge endpoint")
	assert.Empty(t, sb.Endpoints())
	assert.Empty(t, gwEndpoints())
	assert.Equal(t, []string{"lo"}, links())

	// The leave's second interface taken out of use is the gateway's.
	cnm.SetFaultHook(h.Ctrl, nil)
	require.NoError(t, ep.Join(ctx, sb))
	require.Len(t, gwEndpoints(), 1)
	calls = failNth("leave:interface", 2)
	require.NoError(t, ep.Leave(ctx, sb), "the overlay leave is done; the gateway's removal is logged")
	require.Equal(t, 2, *calls)
	require.Len(t, sb.Endpoints(), 1, "the gateway endpoint stays joined")
	require.Len(t, gwEndpoints(), 1)

	cnm.SetFaultHook(h.Ctrl, nil)
	require.NoError(t, ep.Join(ctx, sb))
	require.Len(t, sb.Endpoints(), 2)
	require.Len(t, gwEndpoints(), 1, "the gateway endpoint left joined is used, not a second one")
	require.NoError(t, ep.Leave(ctx, sb))
	assert.Empty(t, sb.Endpoints())
	assert.Empty(t, gwEndpoints())
	assert.Equal(t, []string{"lo"}, links())

	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, ep.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
}

// TestOverlayDeletedWhileCreatingEndpoint: another host deletes the network
// between this host's checks and its endpoint's record: the record's
// condition on the network fails, CreateEndpoint says the network was
// deleted, and the endpoint leaves nothing (no record, no address kept);
// the network goes from this host too.
func TestOverlayDeletedWhileCreatingEndpoint(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	kv := cl.Store(t)
	nw, err := h1.Ctrl.NewNetwork(ctx, "overlay", "gone", ipv4Subnet("10.146.0.0/24"))
	require.NoError(t, err)
	other := waitNetwork(t, h2.Ctrl, "gone")

	deleted := false
	cnm.SetFaultHook(h1.Ctrl, func(s string) error {
		if s != "endpoint:global" || deleted {
			return nil
		}
		deleted = true
		if err := other.Delete(ctx); err != nil { // host 2 sees no endpoint yet
			return err
		}
		// Host 1 sees the deletion while its endpoint is being made.
		for start := time.Now(); !cnm.IsOrphan(nw); time.Sleep(time.Millisecond) {
			if time.Since(start) > 5*time.Second {
				return errors.New("host 1 never saw the deletion")
			}
		}
		return nil
	})
	_, err = nw.CreateEndpoint(ctx, "e")
	require.True(t, deleted)
	require.ErrorIs(t, err, cnm.ErrNotFound)
	require.ErrorContains(t, err, "deleted by another host")
	assert.Empty(t, nw.Endpoints())
	cnm.SetFaultHook(h1.Ctrl, nil)
	require.Eventually(t, func() bool {
		_, err := h1.Ctrl.NetworkByName("gone")
		return errors.Is(err, cnm.ErrNotFound)
	}, 5*time.Second, 10*time.Millisecond, "the network goes from host 1")
	for _, p := range []string{"networks/", "network-names/", "endpoints/", "vxlan/ids/", "ipam/global/"} {
		assert.Zero(t, countKeys(t, kv, p), p)
	}
	// The name and the subnet are free again.
	_, err = h1.Ctrl.NewNetwork(ctx, "overlay", "gone", ipv4Subnet("10.146.0.0/24"))
	require.NoError(t, err)
}

// TestOverlayPeerRecordUnreadable: a key under a network's endpoints that
// no cnm wrote is skipped, and peers still come and go; a peer's record
// overwritten with something unreadable takes the peer away (it used to
// stay as it was).
func TestOverlayPeerRecordUnreadable(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	kv := cl.Store(t)
	nw, err := h1.Ctrl.NewNetwork(ctx, "overlay", "pr", ipv4Subnet("10.147.0.0/24"))
	require.NoError(t, err)
	a, b := ovRun(t, h1, "pr", "a"), ovRun(t, h2, "pr", "b")
	echoServer(t, b)
	requireReach(t, a, b)

	junk := "endpoints/" + nw.ID() + "/junk"
	_, err = kv.CompareAndSwap(ctx, junk, 0, []byte("not a peer record"))
	require.NoError(t, err)
	c := ovRun(t, h2, "pr", "c")
	echoServer(t, c)
	requireReach(t, a, c)

	// b's record overwritten: host 1 drops b as a peer, so a reaches it
	// no more.
	bKey := "endpoints/" + nw.ID() + "/" + b.ep.ID()
	old, err := kv.Get(ctx, bKey)
	require.NoError(t, err)
	_, err = kv.CompareAndSwap(ctx, bKey, old.Revision, []byte("{"))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return echo(ctx, a, b, 200*time.Millisecond) != nil
	}, 5*time.Second, 50*time.Millisecond, "b is still a peer of host 1")
	requireReach(t, a, c)

	junkKV, err := kv.Get(ctx, junk)
	require.NoError(t, err)
	_, err = kv.TxnIf(ctx, []etcdstore.Cond{{Key: junk, Revision: junkKV.Revision}}, etcdstore.Op{Key: junk, Delete: true})
	require.NoError(t, err)
	for _, x := range []ovContainer{a, b, c} {
		require.NoError(t, x.sb.Delete(ctx))
	}
	require.NoError(t, nw.Delete(ctx))
}

// TestOverlayRestoreLostJoin: while host 1's controller is down, someone
// moves a container's veth peer out of the overlay network's namespace.
// At restart the driver cannot take the join back: the endpoint comes
// back left (its interface gone from the sandbox), and joins again.
func TestOverlayRestoreLostJoin(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{LeaseTTL: 10 * time.Second})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	_, err := h1.Ctrl.NewNetwork(ctx, "overlay", "lost", ipv4Subnet("10.148.0.0/24"))
	require.NoError(t, err)
	a, b := ovRun(t, h1, "lost", "a"), ovRun(t, h2, "lost", "b")
	echoServer(t, b)
	requireReach(t, a, b)

	h1.Kill(t)
	paths, err := filepath.Glob(filepath.Join(h1.RunDir, "*", "overlay", "ov-*"))
	require.NoError(t, err)
	require.Len(t, paths, 1, "one overlay network namespace")
	ovns, err := osl.OpenNamespace(ctx, paths[0])
	require.NoError(t, err)
	defer ovns.Close()
	links, err := ovns.Links(ctx)
	require.NoError(t, err)
	br, err := ovns.LinkByName(ctx, "br0")
	require.NoError(t, err)
	moved := ""
	for _, l := range links {
		if l.MasterIndex == br.Index && l.Kind == "veth" {
			moved = l.Name
		}
	}
	require.NotEmpty(t, moved, "the container's port on br0")
	require.NoError(t, ovns.MoveLink(ctx, moved, h1.NS, "stray0"))

	h1.Start(t)
	sb, err := h1.Ctrl.SandboxByID(a.sb.ID())
	require.NoError(t, err)
	assert.Empty(t, sb.Endpoints(), "the endpoint comes back left")
	require.NoError(t, h1.Ctrl.Settle(ctx))
	names, err := cnmtestLinks(ctx, sb.Key())
	require.NoError(t, err)
	assert.Equal(t, []string{"lo"}, names, "its interface is removed from the sandbox")
	nw, err := h1.Ctrl.NetworkByName("lost")
	require.NoError(t, err)
	ep, err := nw.EndpointByName("a")
	require.NoError(t, err)
	assert.Equal(t, a.addr, ep.Info().IPv4.Addr(), "it keeps its address")
	require.NoError(t, ep.Join(ctx, sb))
	requireReach(t, ovContainer{sb: sb, ep: ep, addr: a.addr}, b)

	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, b.sb.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))
}

// TestOverlayPeerWatchIdle: the watch of a network's peers outlives the
// host's last container on it for a while, so that a container restarted
// (deleted and made again) does not stop and start it (a listing of the
// network's peers); it stops once the host has had no endpoint on the
// network for that while, and at once when the network is deleted.
func TestOverlayPeerWatchIdle(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	nw, err := h1.Ctrl.NewNetwork(ctx, "overlay", "pw", ipv4Subnet("10.149.0.0/24"))
	require.NoError(t, err)
	b := ovRun(t, h2, "pw", "b")
	echoServer(t, b)
	a := ovRun(t, h1, "pw", "a")
	requireReach(t, a, b)
	running, started := cnm.PeerWatches(h1.Ctrl)
	require.Equal(t, 1, running)

	// Restarted: the same watch serves the new container.
	require.NoError(t, a.sb.Delete(ctx))
	a = ovRun(t, h1, "pw", "a")
	requireReach(t, a, b)
	running, again := cnm.PeerWatches(h1.Ctrl)
	assert.Equal(t, 1, running)
	assert.Equal(t, started, again, "no watch started for the restarted container")

	// Gone for good: the watch stops after its idle time, and a new
	// container starts one again.
	require.NoError(t, a.sb.Delete(ctx))
	require.Eventually(t, func() bool { n, _ := cnm.PeerWatches(h1.Ctrl); return n == 0 }, 15*time.Second, 50*time.Millisecond)
	a = ovRun(t, h1, "pw", "a")
	requireReach(t, a, b)
	_, after := cnm.PeerWatches(h1.Ctrl)
	assert.Equal(t, started+1, after)

	// The network deleted: its watch stops at once on both hosts.
	require.NoError(t, a.sb.Delete(ctx))
	require.NoError(t, b.sb.Delete(ctx))
	require.NoError(t, h1.Ctrl.Settle(ctx))
	require.NoError(t, nw.Delete(ctx))
	for _, h := range cl.Hosts {
		require.Eventually(t, func() bool {
			_, err := h.Ctrl.NetworkByName("pw")
			n, _ := cnm.PeerWatches(h.Ctrl)
			return errors.Is(err, cnm.ErrNotFound) && n == 0
		}, 2*time.Second, 10*time.Millisecond, "host %s", h.VTEP)
	}
}
