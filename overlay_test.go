package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// Multi-host overlay networks, end to end: controllers in host namespaces
// of their own, an underlay through a switch namespace, a real etcd
// (cnmtest.NewCluster).

// waitNetwork waits until the network called name appears on c.
func waitNetwork(t *testing.T, c *cnm.Controller, name string) *cnm.Network {
	t.Helper()
	var n *cnm.Network
	require.Eventually(t, func() bool {
		var err error
		n, err = c.NetworkByName(name)
		return err == nil
	}, 5*time.Second, 5*time.Millisecond, "network %q never appeared on controller %s", name, c.ID())
	return n
}

// countKeys returns how many keys of kv have the prefix.
func countKeys(t *testing.T, kv *etcdstore.Store, prefix string) int {
	t.Helper()
	kvs, _, err := kv.Snapshot(context.Background(), prefix)
	require.NoError(t, err)
	return len(kvs)
}

// ovContainer is a sandbox with one endpoint on an overlay network.
type ovContainer struct {
	sb   *cnm.Sandbox
	ep   *cnm.Endpoint
	addr netip.Addr
}

// run makes a sandbox called name on h and joins it to the network called
// network.
func ovRun(t *testing.T, h *cnmtest.ClusterHost, network, name string) ovContainer {
	t.Helper()
	ctx := context.Background()
	n := waitNetwork(t, h.Ctrl, network)
	sb, err := h.Ctrl.NewSandbox(ctx, name+"-"+network, cnm.WithHostname(name), cnm.WithDNS(netip.MustParseAddr("127.0.0.1")))
	require.NoError(t, err)
	ep, err := n.CreateEndpoint(ctx, name)
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	return ovContainer{sb: sb, ep: ep, addr: ep.Info().IPv4.Addr()}
}

// echoServer serves TCP echo on port 7 inside a sandbox until the test
// ends.
func echoServer(t *testing.T, c ovContainer) {
	t.Helper()
	cnmtest.Serve(t, c.sb.Key(), netip.AddrPortFrom(netip.IPv4Unspecified(), 7), cnmtest.Echo)
}

// echo dials from one ovContainer to another's echo server and checks one
// round trip.
func echo(ctx context.Context, from, to ovContainer, timeout time.Duration) error {
	conn, err := cnmtest.Dial(ctx, from.sb.Key(), netip.AddrPortFrom(to.addr, 7), timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	return roundTrip(conn, timeout)
}

func roundTrip(conn net.Conn, timeout time.Duration) error {
	_ = conn.SetDeadline(time.Now().Add(timeout))
	msg := []byte("over the overlay")
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo: got %q", got)
	}
	return nil
}

// requireReach waits until from reaches to (peers are programmed by a
// watch, a few milliseconds after the join).
func requireReach(t *testing.T, from, to ovContainer) {
	t.Helper()
	var last error
	ok := assert.Eventually(t, func() bool {
		last = echo(context.Background(), from, to, 300*time.Millisecond)
		return last == nil
	}, 5*time.Second, 10*time.Millisecond)
	if !ok {
		t.Fatalf("%s cannot reach %s at %s: %v", from.ep.Name(), to.ep.Name(), to.addr, last)
	}
}

// An underlay with IPv6 addresses only: the hosts advertise IPv6 VTEPs,
// VXLAN runs over IPv6, the containers' MTU leaves room for its 70 bytes
// (IPv6 header 40, UDP 8, VXLAN 8, inner Ethernet 14), and a dual-stack
// overlay carries both families, a 1 MiB stream each way included.
func TestOverlayIPv6Underlay(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{IPv6Underlay: true})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	require.True(t, h1.VTEP.Is6())
	_, err := h1.Ctrl.NewNetwork(ctx, "overlay", "ov6",
		ipv4Subnet("10.56.0.0/24"),
		cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd56::/64")}))
	require.NoError(t, err)
	a, b := ovRun(t, h1, "ov6", "a"), ovRun(t, h2, "ov6", "b")
	echoServer(t, b)
	requireReach(t, a, b)

	sb, err := osl.OpenNamespace(ctx, a.sb.Key())
	require.NoError(t, err)
	defer sb.Close()
	l, err := sb.LinkByName(ctx, a.ep.Info().InterfaceName)
	require.NoError(t, err)
	assert.Equal(t, 1500-70, l.MTU, "the underlay's MTU less VXLAN over IPv6")

	// A 1 MiB stream both ways, over IPv4 then IPv6 inside the overlay.
	b6 := b.ep.Info().IPv6.Addr()
	require.True(t, b6.Is6(), "b has an IPv6 address")
	for _, to := range []netip.Addr{b.addr, b6} {
		var conn net.Conn
		require.Eventually(t, func() bool {
			conn, err = cnmtest.Dial(ctx, a.sb.Key(), netip.AddrPortFrom(to, 7), 300*time.Millisecond)
			return err == nil
		}, 5*time.Second, 10*time.Millisecond, "dial %s", to)
		require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
		sent := make([]byte, 1<<20)
		for i := range sent {
			sent[i] = byte(i * 7)
		}
		werr := make(chan error, 1)
		go func() { _, err := conn.Write(sent); werr <- err }()
		got := make([]byte, len(sent))
		_, err = io.ReadFull(conn, got)
		require.NoError(t, err, "echo from %s", to)
		require.NoError(t, <-werr)
		assert.True(t, string(got) == string(sent), "the stream from %s came back changed", to)
		conn.Close()
	}
}

// overlayPair makes a cluster of two hosts with an overlay network "ov" of
// subnet, a container a on host 1 and b on host 2, b serving echo and
// reached from a.
func overlayPair(t *testing.T, opts cnmtest.ClusterOptions, subnet string) (cl *cnmtest.Cluster, a, b ovContainer) {
	t.Helper()
	cl = cnmtest.NewCluster(t, 2, opts)
	_, err := cl.Hosts[0].Ctrl.NewNetwork(context.Background(), "overlay", "ov", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(subnet)}))
	require.NoError(t, err)
	a, b = ovRun(t, cl.Hosts[0], "ov", "a"), ovRun(t, cl.Hosts[1], "ov", "b")
	echoServer(t, b)
	requireReach(t, a, b)
	return cl, a, b
}

// waitName waits up to within until name resolves through r (known) or
// stops resolving (!known).
func waitName(t *testing.T, r *net.Resolver, name string, known bool, within time.Duration, msg string) {
	t.Helper()
	require.Eventually(t, func() bool { _, err := lookup(t, r, name); return (err == nil) == known }, within, 10*time.Millisecond, msg)
}

func TestOverlayAcrossHosts(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 3, cnmtest.ClusterOptions{})
	h1, h2, h3 := cl.Hosts[0], cl.Hosts[1], cl.Hosts[2]

	ov, err := h1.Ctrl.NewNetwork(ctx, "overlay", "ov1", ipv4Subnet("10.50.0.0/24"))
	require.NoError(t, err)
	assert.Equal(t, "overlay", ov.Type())
	for _, h := range cl.Hosts[1:] {
		n := waitNetwork(t, h.Ctrl, "ov1")
		assert.Equal(t, ov.ID(), n.ID())
		cfg, ok := n.IPv4()
		require.True(t, ok)
		assert.Equal(t, netip.MustParsePrefix("10.50.0.0/24"), cfg.Subnet)
		assert.Equal(t, netip.MustParseAddr("10.50.0.1"), cfg.Gateway)
	}
	_, err = h2.Ctrl.NewNetwork(ctx, "overlay", "ov1", ipv4Subnet("10.51.0.0/24"))
	require.ErrorIs(t, err, cnm.ErrExists, "the name is taken in the cluster")

	cs := []ovContainer{ovRun(t, h1, "ov1", "c1"), ovRun(t, h2, "ov1", "c2"), ovRun(t, h3, "ov1", "c3")}
	seen := map[netip.Addr]bool{}
	for _, c := range cs {
		require.False(t, seen[c.addr], "address %s handed out twice", c.addr)
		seen[c.addr] = true
		assert.NotEqual(t, netip.MustParseAddr("10.50.0.1"), c.addr, "the gateway is never handed out")
		echoServer(t, c)
	}
	for _, from := range cs {
		for _, to := range cs {
			if from != to {
				requireReach(t, from, to)
			}
		}
	}

	t.Run("names", func(t *testing.T) {
		r := cnmtest.Resolver(cs[0].sb.Key())
		for _, c := range cs[1:] {
			require.Eventually(t, func() bool {
				addrs, err := lookup(t, r, c.ep.Name())
				return err == nil && len(addrs) == 1 && addrs[0] == c.addr
			}, 5*time.Second, 10*time.Millisecond, "name %s from another host", c.ep.Name())
		}
	})

	t.Run("second network with the same subnet is isolated", func(t *testing.T) {
		ov2, err := h2.Ctrl.NewNetwork(ctx, "overlay", "ov2", ipv4Subnet("10.50.0.0/24"))
		require.NoError(t, err)
		assert.NotEqual(t, ov.DriverOptions()["com.docker.network.driver.overlay.vxlanid_list"], ov2.DriverOptions()["com.docker.network.driver.overlay.vxlanid_list"])
		d1, d3 := ovRun(t, h1, "ov2", "d1"), ovRun(t, h3, "ov2", "d3")
		echoServer(t, d3)
		requireReach(t, d1, d3)
		// Each address of ov2 may also be one of ov1's: a listener on port
		// 8 of every ov1 container, none on ov2's. A connection from d1 to
		// any of them is refused by an ov2 container or finds nobody; it
		// never reaches ov1.
		for _, c := range cs {
			cnmtest.Serve(t, c.sb.Key(), netip.AddrPortFrom(netip.IPv4Unspecified(), 8), nil)
		}
		for _, c := range cs {
			conn, err := cnmtest.Dial(ctx, d1.sb.Key(), netip.AddrPortFrom(c.addr, 8), 300*time.Millisecond)
			if err == nil {
				conn.Close()
			}
			require.Error(t, err, "ov2 reached %s on ov1 at %s", c.ep.Name(), c.addr)
		}
		if d3.addr == cs[1].addr || d3.addr == cs[2].addr || d3.addr == cs[0].addr {
			t.Logf("d3 on ov2 has the address %s of a container on ov1", d3.addr)
		}

		// h2, which made ov2, has no endpoint on it; h1 and h3 have.
		err = ov2.Delete(ctx)
		require.ErrorIs(t, err, cnm.ErrInUse)
		assert.Contains(t, err.Error(), "2 endpoints on 2 hosts")
	})

	t.Run("late joiner reachable from every host", func(t *testing.T) {
		late := ovRun(t, h3, "ov1", "late")
		echoServer(t, late)
		for _, from := range cs {
			requireReach(t, from, late)
		}
	})

	t.Run("leave removes the peer", func(t *testing.T) {
		gone := ovRun(t, h2, "ov1", "gone")
		echoServer(t, gone)
		requireReach(t, cs[0], gone)
		require.NoError(t, gone.ep.Leave(ctx, gone.sb))
		require.Eventually(t, func() bool {
			_, err := lookup(t, cnmtest.Resolver(cs[0].sb.Key()), "gone")
			return err != nil
		}, 5*time.Second, 10*time.Millisecond, "name of a left endpoint still answered")
	})
}

func TestOverlayHostKilled(t *testing.T) {
	ctx := context.Background()
	cl, a, b := overlayPair(t, cnmtest.ClusterOptions{LeaseTTL: 2 * time.Second}, "10.70.0.0/25")
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	r := cnmtest.Resolver(a.sb.Key())
	waitName(t, r, "b", true, 5*time.Second, "b's name")

	killed := time.Now()
	h2.Kill(t)
	waitName(t, r, "b", false, 10*time.Second, "the killed host's endpoint is still a peer")
	took := time.Since(killed)
	t.Logf("peer gone %s after the kill (lease TTL 2s)", took)
	assert.Less(t, took, 6*time.Second)

	// Its address block is free again: h1 can take the killed host's
	// address.
	n := waitNetwork(t, h1.Ctrl, "ov")
	ep, err := n.CreateEndpoint(ctx, "taker", cnm.WithIPv4Address(b.addr))
	require.NoError(t, err, "the killed host's address block is reusable")
	require.NoError(t, ep.Delete(ctx))
}

func TestOverlayRestart(t *testing.T) {
	ctx := context.Background()
	cl, a, b := overlayPair(t, cnmtest.ClusterOptions{LeaseTTL: 3 * time.Second}, "10.80.0.0/24")
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	echoServer(t, a)
	conn, err := cnmtest.Dial(ctx, a.sb.Key(), netip.AddrPortFrom(b.addr, 7), time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, roundTrip(conn, time.Second))

	h2.Kill(t)
	require.NoError(t, roundTrip(conn, time.Second), "the data plane runs while the controller is down")
	h2.Start(t)
	require.NoError(t, roundTrip(conn, time.Second), "restart kept the established connection")

	n := waitNetwork(t, h2.Ctrl, "ov")
	eps := n.Endpoints()
	require.Len(t, eps, 1)
	assert.Equal(t, b.addr, eps[0].Info().IPv4.Addr())
	// Past the old lease's TTL: the peer was taken back, not lost.
	time.Sleep(4 * time.Second)
	require.NoError(t, roundTrip(conn, time.Second))
	requireReach(t, a, b)
	b2 := ovRun(t, h2, "ov", "b2")
	assert.NotEqual(t, b.addr, b2.addr, "an address of before the restart handed out again")
	echoServer(t, b2)
	requireReach(t, a, b2)
	_, err = lookup(t, cnmtest.Resolver(a.sb.Key()), "b")
	require.NoError(t, err, "the restarted host's names are still known")

	// Down for longer than the TTL: its peers go from h1, and come back
	// with a new lease when it starts again; its addresses are claimed
	// again, not handed out twice.
	h2.Kill(t)
	waitName(t, cnmtest.Resolver(a.sb.Key()), "b", false, 10*time.Second, "the restarted host's peer outlived its lease")
	h2.Start(t)
	requireReach(t, a, b)
	requireReach(t, a, b2)
	require.NoError(t, roundTrip(conn, time.Second), "an established connection outlives the lease")
	b3 := ovRun(t, h2, "ov", "b3")
	assert.NotContains(t, []netip.Addr{b.addr, b2.addr}, b3.addr)
	c := ovRun(t, h1, "ov", "c1")
	assert.NotContains(t, []netip.Addr{a.addr, b.addr, b2.addr, b3.addr}, c.addr)
}

func TestOverlayEtcdDown(t *testing.T) {
	ctx := context.Background()
	cl, a, b := overlayPair(t, cnmtest.ClusterOptions{LeaseTTL: 5 * time.Second}, "10.90.0.0/24")
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	conn, err := cnmtest.Dial(ctx, a.sb.Key(), netip.AddrPortFrom(b.addr, 7), time.Second)
	require.NoError(t, err)
	defer conn.Close()

	// Traffic flows throughout the outage.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var flowErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if err := roundTrip(conn, time.Second); err != nil {
				flowErr = err
				return
			}
		}
	}()

	cl.Etcd.Stop()
	start := time.Now()
	_, err = h1.Ctrl.NewNetwork(ctx, "overlay", "ov-down", ipv4Subnet("10.91.0.0/24"))
	require.Error(t, err, "a global operation with etcd down")
	assert.Less(t, time.Since(start), 6*time.Second, "fails within its timeout")
	t.Logf("with etcd down: %v (%s)", err, time.Since(start).Round(time.Millisecond))
	n := waitNetwork(t, h2.Ctrl, "ov")
	_, err = n.CreateEndpoint(ctx, "while-down")
	require.Error(t, err)

	// Local networks keep working.
	br, err := h1.Ctrl.NewNetwork(ctx, "bridge", "local", ipv4Subnet("10.92.0.0/24"))
	require.NoError(t, err)
	lsb, err := h1.Ctrl.NewSandbox(ctx, "local")
	require.NoError(t, err)
	lep, err := br.CreateEndpoint(ctx, "local")
	require.NoError(t, err)
	require.NoError(t, lep.Join(ctx, lsb))

	time.Sleep(time.Second)
	cl.Etcd.Restart(t)
	close(stop)
	wg.Wait()
	require.NoError(t, flowErr, "traffic stopped while etcd was down")

	// New joins work once it is back, and are seen by the other host.
	var late ovContainer
	require.Eventually(t, func() bool {
		sb, err := h2.Ctrl.NewSandbox(ctx, "late")
		if err != nil {
			return false
		}
		ep, err := n.CreateEndpoint(ctx, "late")
		if err == nil {
			err = ep.Join(ctx, sb)
		}
		if err != nil {
			_ = sb.Delete(ctx)
			if ep != nil {
				_ = ep.Delete(ctx)
			}
			return false
		}
		late = ovContainer{sb: sb, ep: ep, addr: ep.Info().IPv4.Addr()}
		return true
	}, 15*time.Second, 100*time.Millisecond, "joins never worked again after etcd returned")
	echoServer(t, late)
	requireReach(t, a, late)
}

func TestOverlayConcurrentAllocation(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{LeaseTTL: 10 * time.Second})
	_, err := cl.Hosts[0].Ctrl.NewNetwork(ctx, "overlay", "big", ipv4Subnet("10.100.0.0/21"))
	require.NoError(t, err)
	const each = 500
	var wg sync.WaitGroup
	addrs := make([][]netip.Addr, len(cl.Hosts))
	errs := make([]error, len(cl.Hosts))
	for i, h := range cl.Hosts {
		n := waitNetwork(t, h.Ctrl, "big")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				ep, err := n.CreateEndpoint(ctx, fmt.Sprintf("e%d-%d", i, j))
				if err != nil {
					errs[i] = err
					return
				}
				addrs[i] = append(addrs[i], ep.Info().IPv4.Addr())
			}
		}()
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	seen := map[netip.Addr]int{}
	for i, as := range addrs {
		require.Len(t, as, each)
		for _, a := range as {
			if prev, dup := seen[a]; dup {
				t.Fatalf("address %s handed out to hosts %d and %d", a, prev, i)
			}
			seen[a] = i
		}
	}
}

func TestOverlayBadInput(t *testing.T) {
	ctx := context.Background()
	t.Run("no global store", func(t *testing.T) {
		c, _ := cnmtest.NewController(t)
		_, err := c.NewNetwork(ctx, "overlay", "ov", ipv4Subnet("10.110.0.0/24"))
		require.ErrorIs(t, err, cnm.ErrInvalid)
		assert.Contains(t, err.Error(), "WithGlobalStore")
		assert.Contains(t, err.Error(), "WithAdvertiseAddress")
	})
	t.Run("global store without advertise address", func(t *testing.T) {
		h := cnmtest.NewHostNS(t)
		_, err := cnm.New(append(h.Options(), cnm.WithGlobalStore(cnm.GlobalStore{Endpoints: []string{"http://127.0.0.1:1"}}))...)
		require.ErrorIs(t, err, cnm.ErrInvalid)
		assert.Contains(t, err.Error(), "WithAdvertiseAddress")
	})
	t.Run("options", func(t *testing.T) {
		h := cnmtest.NewHostNS(t)
		for _, o := range []cnm.Option{
			cnm.WithGlobalStore(cnm.GlobalStore{}),
			cnm.WithGlobalStore(cnm.GlobalStore{Endpoints: []string{"http://127.0.0.1:1"}, LeaseTTL: time.Millisecond}),
			cnm.WithAdvertiseAddress(netip.Addr{}),
			cnm.WithAdvertiseAddress(netip.MustParseAddr("127.0.0.1")),
			cnm.WithAdvertiseAddress(netip.MustParseAddr("224.0.0.1")),
		} {
			_, err := cnm.New(append(h.Options(), o)...)
			require.ErrorIs(t, err, cnm.ErrInvalid)
		}
	})
	t.Run("etcd unreachable", func(t *testing.T) {
		h := cnmtest.NewHostNS(t)
		start := time.Now()
		_, err := cnm.New(append(h.Options(), cnm.WithGlobalStore(cnm.GlobalStore{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: time.Second}),
			cnm.WithAdvertiseAddress(netip.MustParseAddr("192.0.2.1")))...)
		require.Error(t, err)
		assert.Less(t, time.Since(start), 4*time.Second)
		assert.Contains(t, err.Error(), "global store")
	})
	t.Run("network config", func(t *testing.T) {
		cl := cnmtest.NewCluster(t, 1, cnmtest.ClusterOptions{})
		c := cl.Hosts[0].Ctrl
		for _, tc := range []struct {
			opts []cnm.NetworkOption
			want string
		}{
			{nil, "ipv4 subnet: required"},
			{[]cnm.NetworkOption{ipv4Subnet("10.111.0.0/24"), cnm.WithIPAMDriver("default", nil)}, `ipam driver "default"`},
			{[]cnm.NetworkOption{ipv4Subnet("10.111.0.0/24"), cnm.WithDriverOptions(map[string]string{"bogus": "1"})}, "bogus"},
			{[]cnm.NetworkOption{ipv4Subnet("10.111.0.0/24"), cnm.WithDriverOptions(map[string]string{"com.docker.network.driver.overlay.vxlanid_list": "0"})}, "vxlanid_list"},
		} {
			_, err := c.NewNetwork(ctx, "overlay", "bad", tc.opts...)
			require.ErrorIs(t, err, cnm.ErrInvalid)
			assert.Contains(t, err.Error(), tc.want)
			_, err = c.NetworkByName("bad")
			require.ErrorIs(t, err, cnm.ErrNotFound)
		}
		_, err := c.NewNetwork(ctx, "overlay", "enc", ipv4Subnet("10.113.0.0/24"),
			cnm.WithDriverOptions(map[string]string{"encrypted": ""}))
		require.ErrorIs(t, err, cnm.ErrNotSupported, "this kernel has no ESP")
		assert.Contains(t, err.Error(), "encrypted")
		_, err = c.NetworkByName("enc")
		require.ErrorIs(t, err, cnm.ErrNotFound)

		// Nothing stayed reserved: the subnet and name are free.
		n, err := c.NewNetwork(ctx, "overlay", "bad", ipv4Subnet("10.111.0.0/24"))
		require.NoError(t, err)
		require.NoError(t, n.Delete(ctx))
		_, err = c.NewNetwork(ctx, "overlay", "bad", ipv4Subnet("10.111.0.0/24"))
		require.NoError(t, err, "a deleted global network's subnet and name are free again")
	})
}

func TestOverlayEgress(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	_, err := h1.Ctrl.NewNetwork(ctx, "overlay", "ov", ipv4Subnet("10.120.0.0/24"))
	require.NoError(t, err)
	_, err = h1.Ctrl.NewNetwork(ctx, "overlay", "ovi", cnm.WithInternal(), ipv4Subnet("10.121.0.0/24"))
	require.NoError(t, err)

	// "The outside world": a server on the other host's underlay address,
	// in its host namespace.
	outside := netip.MustParseAddrPort("192.0.2.2:9000")
	peers := make(chan net.Addr, 4)
	cnmtest.Serve(t, h2.Path, outside, func(c net.Conn) { peers <- c.RemoteAddr() })

	a := ovRun(t, h1, "ov", "a")
	eps := a.sb.Endpoints()
	require.Len(t, eps, 2, "an overlay ovContainer gets an interface on the gateway bridge")
	var gw *cnm.Endpoint
	for _, ep := range eps {
		if ep.Network().Name() == cnm.GatewayBridgeNetwork {
			gw = ep
		}
	}
	require.NotNil(t, gw)
	assert.True(t, gw.Info().Gateway.IsValid(), "the gateway bridge offers the default route")
	conn, err := cnmtest.Dial(ctx, a.sb.Key(), outside, 2*time.Second)
	require.NoError(t, err, "an overlay ovContainer reaches the outside world")
	conn.Close()
	select {
	case from := <-peers:
		assert.Equal(t, "192.0.2.1", from.(*net.TCPAddr).IP.String(), "masqueraded behind its host's address")
	case <-time.After(2 * time.Second):
		t.Fatal("the outside server saw no connection")
	}

	i := ovRun(t, h1, "ovi", "i")
	require.Len(t, i.sb.Endpoints(), 1, "an internal overlay network has no way out")
	_, err = cnmtest.Dial(ctx, i.sb.Key(), outside, 300*time.Millisecond)
	require.Error(t, err)

	// The last overlay endpoint's leave takes the gateway endpoint away.
	require.NoError(t, a.ep.Leave(ctx, a.sb))
	assert.Empty(t, a.sb.Endpoints())
	n, err := h1.Ctrl.NetworkByName(cnm.GatewayBridgeNetwork)
	require.NoError(t, err)
	assert.Empty(t, n.Endpoints())

	// A sandbox on a bridge network already has a way out: its overlay
	// join adds no gateway endpoint; when it leaves the bridge network, the
	// overlay endpoint gets one.
	br, err := h1.Ctrl.NewNetwork(ctx, "bridge", "br", ipv4Subnet("10.122.0.0/24"))
	require.NoError(t, err)
	sb, err := h1.Ctrl.NewSandbox(ctx, "both")
	require.NoError(t, err)
	bep, err := br.CreateEndpoint(ctx, "both-br")
	require.NoError(t, err)
	require.NoError(t, bep.Join(ctx, sb))
	ov, err := h1.Ctrl.NetworkByName("ov")
	require.NoError(t, err)
	oep, err := ov.CreateEndpoint(ctx, "both-ov")
	require.NoError(t, err)
	require.NoError(t, oep.Join(ctx, sb))
	require.Len(t, sb.Endpoints(), 2, "the bridge network gives the way out")
	require.NoError(t, bep.Leave(ctx, sb))
	eps = sb.Endpoints()
	require.Len(t, eps, 2, "the overlay endpoint gets a gateway endpoint when the bridge goes")
	conn, err = cnmtest.Dial(ctx, sb.Key(), outside, 2*time.Second)
	require.NoError(t, err, "out through the gateway bridge")
	conn.Close()
	<-peers
}

// TestOverlayDeleteRightAfterContainers: a runtime removes a network's
// containers and then the network at once. The containers' records leave
// etcd in the background; the network's deletion sends them first.
func TestOverlayDeleteRightAfterContainers(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	nw, err := h1.Ctrl.NewNetwork(ctx, "overlay", "ov", ipv4Subnet("10.123.0.0/24"))
	require.NoError(t, err)
	var cs []ovContainer
	for i := range 5 {
		cs = append(cs, ovRun(t, h1, "ov", fmt.Sprintf("c%d", i)))
	}
	for _, c := range cs {
		require.NoError(t, c.sb.Delete(ctx))
	}
	require.NoError(t, nw.Delete(ctx))
	require.Eventually(t, func() bool { _, err := h2.Ctrl.NetworkByName("ov"); return err != nil }, 5*time.Second, 10*time.Millisecond,
		"the other host still has the deleted network")
	// Its VXLAN ID and subnet are free: the same network can be made again.
	_, err = h2.Ctrl.NewNetwork(ctx, "overlay", "ov", ipv4Subnet("10.123.0.0/24"),
		cnm.WithDriverOptions(map[string]string{"com.docker.network.driver.overlay.vxlanid_list": nw.DriverOptions()["com.docker.network.driver.overlay.vxlanid_list"]}))
	require.NoError(t, err)
}

func TestOverlayResyncAfterCompaction(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{LeaseTTL: 10 * time.Second, Proxied: true})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	_, err := h1.Ctrl.NewNetwork(ctx, "overlay", "ov", ipv4Subnet("10.130.0.0/24"))
	require.NoError(t, err)
	a, x := ovRun(t, h1, "ov", "a"), ovRun(t, h1, "ov", "x")
	b := ovRun(t, h2, "ov", "b")
	echoServer(t, a)
	requireReach(t, b, a)
	r := cnmtest.Resolver(b.sb.Key())
	waitName(t, r, "x", true, 5*time.Second, "x's name")

	// h2 loses etcd; meanwhile x goes, c comes, and etcd compacts the
	// revisions h2's watch would resume from.
	h2.Proxy.Pause()
	require.NoError(t, x.sb.Delete(ctx))
	c := ovRun(t, h1, "ov", "c")
	echoServer(t, c)
	kv, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: cl.Etcd.Endpoints()})
	require.NoError(t, err)
	defer kv.Close()
	var rev uint64
	require.Eventually(t, func() bool {
		var kvs []store.KV
		kvs, rev, err = kv.Snapshot(ctx, "cnmtest-"+t.Name()+"/endpoints/")
		return err == nil && len(kvs) == 3 // a, b, c: x's deletion landed
	}, 5*time.Second, 10*time.Millisecond)
	cl.Etcd.Compact(t, rev)
	h2.Proxy.Resume()

	requireReach(t, b, c)
	waitName(t, r, "x", false, 10*time.Second, "a peer deleted during the outage is still known after the resync")
	_, err = lookup(t, r, "c")
	require.NoError(t, err)
}

// TestOverlayRollback fails each step of making an overlay network, an
// endpoint on it and a join (with its gateway bridge endpoint), and checks
// that nothing is left: no key in etcd, no address, no interface, no
// namespace.
func TestOverlayRollback(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{LeaseTTL: 10 * time.Second})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	kv := cl.Store(t)
	keys := func(prefix string) []string {
		kvs, _, err := kv.Snapshot(ctx, prefix)
		require.NoError(t, err)
		var out []string
		for _, kv := range kvs {
			out = append(out, kv.Key)
		}
		return out
	}
	fail := func(c *cnm.Controller, step string) *bool {
		hit := false
		cnm.SetFaultHook(c, func(s string) error {
			if s == step {
				hit = true
				return errors.New("injected fault")
			}
			return nil
		})
		return &hit
	}
	subnet := ipv4Subnet("10.140.0.0/24")

	for _, step := range []string{"network:ipam", "network:driver", "network:global", "network:commit"} {
		hit := fail(h1.Ctrl, step)
		_, err := h1.Ctrl.NewNetwork(ctx, "overlay", "rb", subnet)
		require.True(t, *hit, step)
		require.Error(t, err, step)
		assert.Empty(t, keys("networks/"), step)
		assert.Empty(t, keys("network-names/"), step)
		assert.Empty(t, keys("ipam/global/pools/"), step)
		assert.Empty(t, keys("ipam/global/reserved/"), step)
		assert.Empty(t, keys("vxlan/ids/"), step)
		for _, h := range cl.Hosts {
			_, err := h.Ctrl.NetworkByName("rb")
			assert.ErrorIs(t, err, cnm.ErrNotFound, step)
		}
	}
	cnm.SetFaultHook(h1.Ctrl, nil)
	// A name another host took a moment ago (its network not seen here
	// yet): the transaction's conflict, ErrExists, and nothing reserved.
	_, err := kv.CompareAndSwap(ctx, "network-names/taken", 0, []byte("elsewhere"))
	require.NoError(t, err)
	_, err = h1.Ctrl.NewNetwork(ctx, "overlay", "taken", subnet)
	require.ErrorIs(t, err, cnm.ErrExists)
	assert.ErrorContains(t, err, `"taken" is taken in the cluster`)
	assert.Empty(t, keys("networks/"))
	assert.Empty(t, keys("ipam/global/pools/"))
	assert.Empty(t, keys("vxlan/ids/"))
	require.NoError(t, kv.Txn(ctx, store.Del("network-names/taken")))

	nw, err := h1.Ctrl.NewNetwork(ctx, "overlay", "rb", subnet)
	require.NoError(t, err)

	for _, step := range []string{"endpoint:ipv4", "endpoint:ipv6", "endpoint:service", "endpoint:driver", "endpoint:global", "endpoint:commit"} {
		hit := fail(h1.Ctrl, step)
		_, err := nw.CreateEndpoint(ctx, "e")
		require.True(t, *hit, step)
		require.Error(t, err, step)
		assert.Empty(t, keys("endpoints/"), step)
		assert.Empty(t, nw.Endpoints(), step)
	}
	cnm.SetFaultHook(h1.Ctrl, nil)
	ep, err := nw.CreateEndpoint(ctx, "e")
	require.NoError(t, err)
	assert.Equal(t, netip.MustParseAddr("10.140.0.2"), ep.Info().IPv4.Addr(), "no address was kept by a failed create")

	sb, err := h1.Ctrl.NewSandbox(ctx, "rb")
	require.NoError(t, err)
	failedJoins := 0
	steps := []string{"join:driver", "join:interface", "join:routes", "join:gateway", "join:hosts", "join:external", "join:services", "join:dns", "join:commit"}
	for _, step := range steps {
		for _, nth := range []int{1, 2} { // the overlay join, then the gateway bridge's
			calls := 0
			cnm.SetFaultHook(h1.Ctrl, func(s string) error {
				if s == step {
					calls++
					if calls == nth {
						return errors.New("injected fault")
					}
				}
				return nil
			})
			err := ep.Join(ctx, sb)
			if calls < nth {
				continue // the step runs once only (no gateway bridge join)
			}
			require.Error(t, err, "%s #%d", step, nth)
			failedJoins++
			assert.Empty(t, sb.Endpoints(), "%s #%d", step, nth)
			require.NoError(t, h1.Ctrl.Settle(ctx))
			links, err := cnmtestLinks(ctx, sb.Key())
			require.NoError(t, err)
			assert.Equal(t, []string{"lo"}, links, "%s #%d: interfaces left in the sandbox", step, nth)
			if gw, err := h1.Ctrl.NetworkByName(cnm.GatewayBridgeNetwork); err == nil {
				assert.Empty(t, gw.Endpoints(), "%s #%d: gateway bridge endpoint left", step, nth)
			}
		}
	}
	assert.Equal(t, 2*len(steps), failedJoins, "each step failed in the overlay join and in the gateway bridge's")
	cnm.SetFaultHook(h1.Ctrl, nil)
	require.NoError(t, ep.Join(ctx, sb))
	b := ovRun(t, h2, "rb", "b")
	echoServer(t, b)
	requireReach(t, ovContainer{sb: sb, ep: ep, addr: ep.Info().IPv4.Addr()}, b)

	// A delete that fails before the network's record goes keeps it, for
	// every host, and can be made again.
	require.NoError(t, sb.Delete(ctx))
	require.NoError(t, b.sb.Delete(ctx))
	require.NoError(t, h1.Ctrl.Settle(ctx))
	hit := fail(h1.Ctrl, "network-delete:driver")
	require.Error(t, nw.Delete(ctx))
	require.True(t, *hit)
	assert.Len(t, keys("networks/"), 1)
	assert.Len(t, keys("ipam/global/pools/"), 1)
	assert.Len(t, keys("vxlan/ids/"), 1)
	_, err = h2.Ctrl.NetworkByName("rb")
	require.NoError(t, err)
	cnm.SetFaultHook(h1.Ctrl, nil)
	require.NoError(t, nw.Delete(ctx))
	assert.Empty(t, keys("networks/"))
	assert.Empty(t, keys("ipam/global/pools/"))
	assert.Empty(t, keys("vxlan/ids/"))
}

// cnmtestLinks lists the link names in the namespace at path.
func cnmtestLinks(ctx context.Context, path string) ([]string, error) {
	ns, err := osl.OpenNamespace(ctx, path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	links, err := ns.Links(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range links {
		out = append(out, l.Name)
	}
	return out, nil
}

// TestOverlayStaleRecordSwept: a sandbox deleted while etcd is out of
// reach, then the controller closed before its record's deletion landed:
// the next New deletes the record, so the network is not held in use
// forever by an endpoint that is gone.
func TestOverlayStaleRecordSwept(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{LeaseTTL: 30 * time.Second, Proxied: true})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	_, err := h2.Ctrl.NewNetwork(ctx, "overlay", "ov", ipv4Subnet("10.150.0.0/24"))
	require.NoError(t, err)
	x := ovRun(t, h1, "ov", "x")

	h1.Proxy.Pause()
	require.NoError(t, x.sb.Delete(ctx), "a sandbox's deletion does not wait for etcd")
	h1.Kill(t)
	h1.Proxy.Resume()
	n := waitNetwork(t, h2.Ctrl, "ov")
	require.ErrorIs(t, n.Delete(ctx), cnm.ErrInUse, "the record of x outlived its controller")

	h1.Start(t)
	require.Eventually(t, func() bool { return n.Delete(ctx) == nil }, 5*time.Second, 20*time.Millisecond,
		"the restarted controller never removed the record of its deleted endpoint")
	require.Eventually(t, func() bool { _, err := h1.Ctrl.NetworkByName("ov"); return err != nil }, 5*time.Second, 10*time.Millisecond)
}

// TestOverlayLeaseLost: a host cut off etcd for longer than its lease's
// TTL loses its peers on the others; once it is back, it takes a new lease,
// claims its addresses again and publishes its endpoints again, without a
// restart.
func TestOverlayLeaseLost(t *testing.T) {
	ctx := context.Background()
	cl, a, b := overlayPair(t, cnmtest.ClusterOptions{LeaseTTL: 2 * time.Second, Proxied: true}, "10.160.0.0/24")
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	r := cnmtest.Resolver(a.sb.Key())

	h2.Proxy.Pause()
	waitName(t, r, "b", false, 10*time.Second, "h2's lease never ended")
	h2.Proxy.Resume()
	waitName(t, r, "b", true, 15*time.Second, "h2 never published its endpoint again")
	requireReach(t, a, b)
	// Its address is its own again: h1 cannot take it.
	n := waitNetwork(t, h1.Ctrl, "ov")
	_, err := n.CreateEndpoint(ctx, "taker", cnm.WithIPv4Address(b.addr))
	require.ErrorIs(t, err, cnm.ErrExists)
}

// TestOverlayCommitAnswerLost: a new network's transaction gets no answer.
// Lost on its way, it is fenced off and NewNetwork fails. Applied, with
// etcd still there, the fence finds the record and the network is made (it
// used to fail and release the subnet and VXLAN ID of a network every host
// then took). With etcd gone too, NewNetwork fails, saying the outcome is
// not known; the record and the name go once etcd is back (unless a host
// has an endpoint on the network by then), and the subnet and VXLAN ID
// stay reserved until the host's next start, which also drops its fences.
func TestOverlayCommitAnswerLost(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{Proxied: true, LeaseTTL: 10 * time.Second})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	kv := cl.Store(t)
	count := func(prefix string) int { return countKeys(t, kv, prefix) }
	loseAnswer := func(cut bool) {
		cnm.SetFaultHook(h1.Ctrl, func(s string) error {
			if s != "network:global-answer" {
				return nil
			}
			if cut {
				h1.Proxy.Pause()
			}
			return errors.New("injected: answer lost")
		})
	}

	// The request is lost on its way: the fence goes in, so it can never
	// be applied, and the network fails for good, leaving nothing but the
	// fence (under the lease).
	cnm.SetFaultHook(h1.Ctrl, func(s string) error {
		if s == "network:global-send" {
			return errors.New("injected: request lost")
		}
		return nil
	})
	_, err := h1.Ctrl.NewNetwork(ctx, "overlay", "lost", ipv4Subnet("10.140.0.0/24"))
	require.ErrorContains(t, err, "request lost")
	require.NotContains(t, err.Error(), "not known")
	for _, p := range []string{"networks/", "network-names/", "vxlan/ids/", "ipam/global/"} {
		assert.Zero(t, count(p), p)
	}
	assert.Equal(t, 1, count("network-fences/"))

	loseAnswer(false)
	nw, err := h1.Ctrl.NewNetwork(ctx, "overlay", "landed", ipv4Subnet("10.141.0.0/24"))
	require.NoError(t, err, "the record is read back")
	cnm.SetFaultHook(h1.Ctrl, nil)
	a, b := ovRun(t, h1, "landed", "a"), ovRun(t, h2, "landed", "b")
	echoServer(t, b)
	requireReach(t, a, b)
	require.Equal(t, 1, count("vxlan/ids/"))
	require.Equal(t, 1, count("ipam/global/pools/"))
	require.NoError(t, a.sb.Delete(ctx))
	require.NoError(t, b.sb.Delete(ctx))
	require.NoError(t, nw.Delete(ctx))

	loseAnswer(true)
	_, err = h1.Ctrl.NewNetwork(ctx, "overlay", "unknown", ipv4Subnet("10.142.0.0/24"))
	require.ErrorContains(t, err, "whether it was recorded is not known")
	cnm.SetFaultHook(h1.Ctrl, nil)
	_, err = h1.Ctrl.NetworkByName("unknown")
	require.ErrorIs(t, err, cnm.ErrNotFound)
	require.Equal(t, 1, count("networks/"), "the record landed")
	h1.Proxy.Resume()
	require.Eventually(t, func() bool { return count("networks/") == 0 && count("network-names/") == 0 }, 10*time.Second, 10*time.Millisecond,
		"the record and the name are deleted once etcd answers")
	require.Eventually(t, func() bool {
		_, err := h2.Ctrl.NetworkByName("unknown")
		return errors.Is(err, cnm.ErrNotFound)
	}, 5*time.Second, 10*time.Millisecond, "host 2 drops the network it took")
	assert.Equal(t, 1, count("vxlan/ids/"), "the VXLAN ID stays reserved")
	assert.Equal(t, 1, count("ipam/global/pools/"), "the subnet stays reserved")

	require.Eventually(t, func() bool { return cnm.Retracting(h1.Ctrl) == 0 }, 5*time.Second, 10*time.Millisecond)

	// Unknown again, and while host 1 is cut off, host 2 takes the network
	// and runs a container on it: it stays, on every host, host 1 too.
	loseAnswer(true)
	_, err = h1.Ctrl.NewNetwork(ctx, "overlay", "used", ipv4Subnet("10.144.0.0/24"))
	require.ErrorContains(t, err, "whether it was recorded is not known")
	cnm.SetFaultHook(h1.Ctrl, nil)
	c := ovRun(t, h2, "used", "c")
	h1.Proxy.Resume()
	require.Eventually(t, func() bool { return cnm.Retracting(h1.Ctrl) == 0 }, 15*time.Second, 10*time.Millisecond)
	used := waitNetwork(t, h1.Ctrl, "used")
	d := ovRun(t, h1, "used", "d")
	echoServer(t, c)
	requireReach(t, d, c)
	require.NoError(t, c.sb.Delete(ctx))
	require.NoError(t, d.sb.Delete(ctx))
	require.NoError(t, used.Delete(ctx))
	assert.Equal(t, 1, count("vxlan/ids/"), "only the first unknown network's VXLAN ID")

	// The name is free again; host 1's next start releases what it kept.
	again, err := h2.Ctrl.NewNetwork(ctx, "overlay", "unknown", ipv4Subnet("10.143.0.0/24"))
	require.NoError(t, err)
	h1.Kill(t)
	h1.Start(t)
	assert.Equal(t, 1, count("vxlan/ids/"), "only the new network's VXLAN ID")
	assert.Equal(t, 1, count("ipam/global/pools/"), "only the new network's subnet")
	require.Eventually(t, func() bool { return count("network-fences/") == 0 }, 5*time.Second, 10*time.Millisecond,
		"the last run's fences go")
	require.NoError(t, again.Delete(ctx))
	for _, p := range []string{"networks/", "network-names/", "vxlan/ids/", "ipam/global/"} {
		assert.Zero(t, count(p), p)
	}
}

// TestOverlayVNIReusedAtOnce: a network deleted and another made at once
// get the same VXLAN ID. A host still removing the first (its container's
// interface is still going) takes the second as soon as the first is gone.
func TestOverlayVNIReusedAtOnce(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{LeaseTTL: 10 * time.Second})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	vnis := map[string]bool{}
	for i := range 3 {
		nw, err := h1.Ctrl.NewNetwork(ctx, "overlay", fmt.Sprintf("n%d", i), cnm.WithInternal(),
			cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(fmt.Sprintf("10.170.%d.0/24", i))}))
		require.NoError(t, err)
		vnis[nw.DriverOptions()["com.docker.network.driver.overlay.vxlanid_list"]] = true
		c := ovRun(t, h2, nw.Name(), fmt.Sprintf("c%d", i))
		require.NoError(t, c.sb.Delete(ctx))
		require.Eventually(t, func() bool { return nw.Delete(ctx) == nil }, 5*time.Second, 5*time.Millisecond)
	}
	assert.Len(t, vnis, 1, "the test needs the VXLAN ID reused")
}

// TestOverlaySmallSubnetManyHosts: Docker's usual overlay /24 serves more
// hosts than a /24 has /26 blocks.
func TestOverlaySmallSubnetManyHosts(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 6, cnmtest.ClusterOptions{LeaseTTL: 10 * time.Second})
	_, err := cl.Hosts[0].Ctrl.NewNetwork(ctx, "overlay", "ov", ipv4Subnet("10.180.0.0/24"))
	require.NoError(t, err)
	var cs []ovContainer
	for i, h := range cl.Hosts {
		n := waitNetwork(t, h.Ctrl, "ov")
		ep, err := n.CreateEndpoint(ctx, fmt.Sprintf("c%d", i))
		require.NoError(t, err, "host %d", i+1)
		sb, err := h.Ctrl.NewSandbox(ctx, fmt.Sprintf("c%d", i))
		require.NoError(t, err)
		require.NoError(t, ep.Join(ctx, sb))
		c := ovContainer{sb: sb, ep: ep, addr: ep.Info().IPv4.Addr()}
		echoServer(t, c)
		cs = append(cs, c)
	}
	requireReach(t, cs[0], cs[len(cs)-1])
}

// TestOverlayCrashLeftReservations: a pool and a VXLAN ID reserved by a
// NewNetwork that crashed before recording its network are released when
// the controller starts again; those of networks are kept.
func TestOverlayCrashLeftReservations(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 1, cnmtest.ClusterOptions{})
	h := cl.Hosts[0]
	kv := cl.Store(t)
	count := func(prefix string) int { return countKeys(t, kv, prefix) }
	_, err := h.Ctrl.NewNetwork(ctx, "overlay", "kept", ipv4Subnet("10.190.0.0/24"))
	require.NoError(t, err)
	require.NoError(t, cnm.LeakGlobalReservations(h.Ctrl, netip.MustParsePrefix("10.191.0.0/24")))
	require.Equal(t, 2, count("ipam/global/pools/"))
	require.Equal(t, 2, count("vxlan/ids/"))

	h.Kill(t)
	h.Start(t)
	assert.Equal(t, 1, count("ipam/global/pools/"), "the crash's pool is released, the network's kept")
	assert.Equal(t, 1, count("vxlan/ids/"), "the crash's VXLAN ID is released, the network's kept")
	n, err := h.Ctrl.NetworkByName("kept")
	require.NoError(t, err)
	c := ovRun(t, h, n.Name(), "c")
	assert.True(t, c.addr.IsValid())
}

// Services on an overlay network have no VIP: the service's name answers
// with the addresses of its joined backends on every host, the first one
// rotating from one answer to the next for each family (DNS round robin),
// as tasks.<service> does; clients that take the first address reach
// every backend the same number of times, whether they ask for A, AAAA or
// both, and a backend named like its service takes one turn, not two; a
// backend that leaves drops out, on every host.
func TestOverlayServiceRoundRobin(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 3, cnmtest.ClusterOptions{})
	h1, h2, h3 := cl.Hosts[0], cl.Hosts[1], cl.Hosts[2]
	_, err := h1.Ctrl.NewNetwork(ctx, "overlay", "svc", ipv4Subnet("10.57.0.0/24"),
		cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd57::/64")}))
	require.NoError(t, err)
	tags := map[netip.Addr]string{} // backend address (either family) → name
	backend := func(h *cnmtest.ClusterHost, name string) ovContainer {
		n := waitNetwork(t, h.Ctrl, "svc")
		sb, err := h.Ctrl.NewSandbox(ctx, name)
		require.NoError(t, err)
		ep, err := n.CreateEndpoint(ctx, name, cnm.WithService("web"))
		require.NoError(t, err)
		require.NoError(t, ep.Join(ctx, sb))
		assert.False(t, ep.Info().ServiceIPv4.IsValid(), "no VIP on an overlay network")
		tags[ep.Info().IPv4.Addr()], tags[ep.Info().IPv6.Addr()] = name, name
		return ovContainer{sb: sb, ep: ep, addr: ep.Info().IPv4.Addr()}
	}
	a, b := backend(h2, "web-a"), backend(h3, "web-b")
	backend(h1, "web") // named like its service
	backend(h2, "web-d")
	client := ovRun(t, h1, "svc", "client")
	want := func(v6 bool) []netip.Addr {
		var out []netip.Addr
		for a := range tags {
			if a.Is6() == v6 {
				out = append(out, a)
			}
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return out
	}
	for _, name := range []string{"web", "tasks.web"} {
		for _, v6 := range []bool{false, true} {
			require.Eventually(t, func() bool {
				got := query(t, client.sb.Key(), name, v6)
				slices.SortFunc(got, netip.Addr.Compare)
				return slices.Equal(want(v6), got)
			}, 5*time.Second, 10*time.Millisecond, "%s (IPv6 %v): %v, want %v", name, v6, query(t, client.sb.Key(), name, v6), want(v6))
		}
	}

	// Eight resolutions as getaddrinfo makes them, AAAA and A: the first
	// address of each family is each backend's twice.
	first := map[bool]map[string]int{false: {}, true: {}}
	for range 8 {
		for _, v6 := range []bool{true, false} {
			first[v6][tags[query(t, client.sb.Key(), "web", v6)[0]]]++
		}
	}
	even := map[string]int{"web-a": 2, "web-b": 2, "web": 2, "web-d": 2}
	assert.Equal(t, even, first[false], "first A records")
	assert.Equal(t, even, first[true], "first AAAA records")

	// A client that connects to the first address reaches the backend on
	// another host.
	echoServer(t, a)
	require.Eventually(t, func() bool {
		addrs := query(t, client.sb.Key(), "web", false)
		return addrs[0] == a.addr && echo(ctx, client, ovContainer{addr: addrs[0]}, time.Second) == nil
	}, 5*time.Second, time.Millisecond, "connect to web-a by the service's name")

	// A backend that leaves drops out of the name, on every host.
	require.NoError(t, b.ep.Leave(ctx, b.sb))
	delete(tags, b.ep.Info().IPv4.Addr())
	delete(tags, b.ep.Info().IPv6.Addr())
	client3 := ovRun(t, h3, "svc", "client3")
	for _, c := range []ovContainer{client, client3} {
		require.Eventually(t, func() bool {
			got := query(t, c.sb.Key(), "web", false)
			slices.SortFunc(got, netip.Addr.Compare)
			return slices.Equal(want(false), got)
		}, 5*time.Second, 10*time.Millisecond, "web from %s after web-b left", c.ep.Name())
	}
}

// query asks the embedded DNS server of the sandbox at path for the A (or
// AAAA) records of name and returns them in the answer's order (Go's
// resolver would sort them).
func query(t *testing.T, path, name string, v6 bool) []netip.Addr {
	t.Helper()
	qtype := dns.TypeA
	if v6 {
		qtype = dns.TypeAAAA
	}
	var in *dns.Msg
	err := cnmtest.Do(context.Background(), path, func() error {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		var err error
		in, _, err = (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, "127.0.0.11:53")
		return err
	})
	require.NoError(t, err)
	var out []netip.Addr
	for _, rr := range in.Answer {
		var ip net.IP
		switch r := rr.(type) {
		case *dns.A:
			ip = r.A
		case *dns.AAAA:
			ip = r.AAAA
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// The gateway bridge network is cnm's: its label is refused to users, and
// a user network that took its name makes a join that needs egress fail,
// naming the name, with nothing left of the join.
func TestOverlayEgressNameTaken(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 1, cnmtest.ClusterOptions{})
	c := cl.Hosts[0].Ctrl
	_, err := c.NewNetwork(ctx, "bridge", "mine", cnm.WithLabels(map[string]string{"cnm.egress": "true"}),
		ipv4Subnet("10.58.0.0/24"))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, `label "cnm.egress"`)

	_, err = c.NewNetwork(ctx, "bridge", cnm.GatewayBridgeNetwork, ipv4Subnet("10.58.0.0/24"))
	require.NoError(t, err)
	ov, err := c.NewNetwork(ctx, "overlay", "ov", ipv4Subnet("10.59.0.0/24"))
	require.NoError(t, err)
	sb, err := c.NewSandbox(ctx, "c")
	require.NoError(t, err)
	ep, err := ov.CreateEndpoint(ctx, "c")
	require.NoError(t, err)
	err = ep.Join(ctx, sb)
	require.ErrorIs(t, err, cnm.ErrExists)
	assert.ErrorContains(t, err, cnm.GatewayBridgeNetwork)
	assert.Empty(t, sb.Endpoints(), "the join is undone")
	gw, err := c.NetworkByName(cnm.GatewayBridgeNetwork)
	require.NoError(t, err)
	assert.Empty(t, gw.Endpoints(), "the user's network is left alone")
}

// A global network whose name a local network of this host holds is not
// taken here until that network goes, or its creation fails; then it is,
// without a restart.
func TestOverlayNameTakenLocally(t *testing.T) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	local, err := h2.Ctrl.NewNetwork(ctx, "bridge", "shared", ipv4Subnet("10.62.0.0/24"))
	require.NoError(t, err)
	ov, err := h1.Ctrl.NewNetwork(ctx, "overlay", "shared", ipv4Subnet("10.63.0.0/24"))
	require.NoError(t, err, "the name is free in the cluster: host 2's network is local")
	time.Sleep(200 * time.Millisecond) // the watch has seen it by now
	n, err := h2.Ctrl.NetworkByName("shared")
	require.NoError(t, err)
	assert.Equal(t, local.ID(), n.ID(), "host 2 keeps its own network under the name")

	require.NoError(t, local.Delete(ctx))
	n = waitNetwork(t, h2.Ctrl, "shared")
	assert.Equal(t, ov.ID(), n.ID(), "the overlay network is taken once the name is free")
	c := ovRun(t, h2, "shared", "c")
	assert.True(t, netip.MustParsePrefix("10.63.0.0/24").Contains(c.addr))

	// The name held by a local network being made when the overlay network
	// arrives, whose creation then fails: the overlay network, which
	// waited for the name, is taken then.
	var racy *cnm.Network
	fired := false
	cnm.SetFaultHook(h2.Ctrl, func(s string) error {
		if s != "network:driver" || fired {
			return nil
		}
		fired = true
		var err error
		if racy, err = h1.Ctrl.NewNetwork(ctx, "overlay", "racy", ipv4Subnet("10.65.0.0/24")); err != nil {
			return err
		}
		for start := time.Now(); cnm.PendingGlobalNetworks(h2.Ctrl) == 0; time.Sleep(time.Millisecond) {
			if time.Since(start) > 5*time.Second {
				return errors.New("host 2 never saw the overlay network")
			}
		}
		return errors.New("injected fault")
	})
	_, err = h2.Ctrl.NewNetwork(ctx, "bridge", "racy", ipv4Subnet("10.64.0.0/24"))
	require.ErrorContains(t, err, "injected fault")
	cnm.SetFaultHook(h2.Ctrl, nil)
	n = waitNetwork(t, h2.Ctrl, "racy")
	assert.Equal(t, racy.ID(), n.ID())
}
