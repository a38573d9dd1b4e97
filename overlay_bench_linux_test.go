package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// Benchmarks of overlay networks (issue 10). Each reports a ratio to a
// baseline measured in the same run; the distributions are of b.N samples,
// so run them with -benchtime=Nx:
//
//	go test -run '^$' -bench 'Overlay' -benchtime 100x .

// quantile returns the q-quantile of ds (sorted in place).
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fastNeighbours makes a sandbox retry ARP every 10 ms instead of every
// second, so that a connect tried just before a peer is programmed does not
// wait a second for its next ARP request: convergence measures the control
// plane, not the kernel's ARP retry timer.
func fastNeighbours(b *testing.B, sb *cnm.Sandbox) {
	b.Helper()
	err := cnmtest.Do(context.Background(), sb.Key(), func() error {
		return os.WriteFile("/proc/sys/net/ipv4/neigh/eth0/retrans_time_ms", []byte("10"), 0o644)
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkOverlayConvergence measures, per join on host 1, the time from
// Join returning until a TCP connect from a container on each other host
// succeeds (conv-p50/p99, one sample per other host and join; the peer
// record is written at CreateEndpoint, so create-to-conn-p50/p99 also
// reports the time from CreateEndpoint's call), and beside it the floor:
// an etcd put until a watch on another client sees it (floor-p50/p99), in
// the same run. "warm": host 1 has another container on the network, as a
// host usually has; "cold": each join is host 1's first on a network made
// for it, so its Join makes the network's namespace there.
func BenchmarkOverlayConvergence(b *testing.B) {
	for _, hosts := range []int{3, 8} {
		for _, warm := range []bool{true, false} {
			name := fmt.Sprintf("hosts=%d/cold", hosts)
			if warm {
				name = fmt.Sprintf("hosts=%d/warm", hosts)
			}
			b.Run(name, func(b *testing.B) { benchConvergence(b, hosts, warm) })
		}
	}
}

func benchConvergence(b *testing.B, hosts int, warm bool) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(b, hosts, cnmtest.ClusterOptions{LeaseTTL: 10 * time.Second})
	h1 := cl.Hosts[0]
	// network makes a network on host 1 and a client container on it on
	// every other host; done deletes them.
	network := func(i int) (nw *cnm.Network, clients []*cnm.Sandbox, done func()) {
		nw, err := h1.Ctrl.NewNetwork(ctx, "overlay", fmt.Sprintf("conv%d", i), cnm.WithInternal(),
			cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 200+i/256, i%256))}))
		if err != nil {
			b.Fatal(err)
		}
		for j, h := range cl.Hosts[1:] {
			n := waitNetworkB(b, h.Ctrl, nw.Name())
			sb := setupContainer(b, h.Ctrl, n, fmt.Sprintf("client%d-%d", i, j))
			fastNeighbours(b, sb)
			clients = append(clients, sb)
		}
		return nw, clients, func() {
			for _, sb := range clients {
				if err := sb.Delete(ctx); err != nil {
					b.Fatal(err)
				}
			}
			// The clients' records leave etcd in the background.
			for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
				err := nw.Delete(ctx)
				if err == nil {
					break
				}
				if !errors.Is(err, cnm.ErrInUse) || time.Since(start) > 5*time.Second {
					b.Fatal(err)
				}
			}
		}
	}
	var shared *cnm.Network
	var sharedClients []*cnm.Sandbox
	if warm {
		shared, sharedClients, _ = network(0)
		setupContainer(b, h1.Ctrl, shared, "neighbour")
	}
	floor := etcdFloor(b, cl.Etcd.Endpoints(), b.N)

	var conv, fromCreate []time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		nw, clients, done := shared, sharedClients, func() {}
		if !warm {
			nw, clients, done = network(i)
		}
		name := fmt.Sprintf("s%d", i)
		sb, err := h1.Ctrl.NewSandbox(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		l, err := cnmtest.Listen(ctx, sb.Key(), netip.AddrPortFrom(netip.IPv4Unspecified(), 7))
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		b.StartTimer()
		created := time.Now()
		ep, err := nw.CreateEndpoint(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		if err := ep.Join(ctx, sb); err != nil {
			b.Fatal(err)
		}
		joined := time.Now()
		to := netip.AddrPortFrom(ep.Info().IPv4.Addr(), 7)
		results := make(chan time.Duration, len(clients))
		for _, c := range clients {
			go func() { results <- connectUntil(ctx, c.Key(), to, joined) }()
		}
		for range clients {
			d := <-results
			if d < 0 {
				b.Fatalf("join %d: no connect from another host within 5s", i)
			}
			conv = append(conv, d)
			fromCreate = append(fromCreate, d+joined.Sub(created))
		}
		b.StopTimer()
		l.Close()
		if err := sb.Delete(ctx); err != nil {
			b.Fatal(err)
		}
		done()
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(ms(quantile(conv, 0.5)), "conv-p50-ms")
	b.ReportMetric(ms(quantile(conv, 0.99)), "conv-p99-ms")
	b.ReportMetric(ms(quantile(fromCreate, 0.5)), "create-to-conn-p50-ms")
	b.ReportMetric(ms(quantile(fromCreate, 0.99)), "create-to-conn-p99-ms")
	b.ReportMetric(ms(quantile(floor, 0.5)), "floor-p50-ms")
	b.ReportMetric(ms(quantile(floor, 0.99)), "floor-p99-ms")
}

// waitNetworkB waits up to 5 s for the network called name to appear on c.
func waitNetworkB(b *testing.B, c *cnm.Controller, name string) *cnm.Network {
	b.Helper()
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(time.Millisecond) {
		if n, err := c.NetworkByName(name); err == nil {
			return n
		}
	}
	b.Fatalf("network %q never appeared on controller %s", name, c.ID())
	return nil
}

// connectUntil connects to to from inside the namespace at path, again and
// again, until one connect succeeds; it returns the time since start, or
// -1 after 5 s.
func connectUntil(ctx context.Context, path string, to netip.AddrPort, start time.Time) time.Duration {
	for time.Since(start) < 5*time.Second {
		c, err := cnmtest.Dial(ctx, path, to, 5*time.Millisecond)
		if err == nil {
			d := time.Since(start)
			c.Close()
			return d
		}
		time.Sleep(500 * time.Microsecond)
	}
	return -1
}

// etcdFloor measures n times how long a put takes to reach a watch of
// another client.
func etcdFloor(b *testing.B, endpoints []string, n int) []time.Duration {
	ctx := context.Background()
	open := func() *etcdstore.Store {
		s, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: endpoints, Prefix: "floor"})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	}
	w, p := open(), open()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := w.Watch(wctx, "k/", 0)
	time.Sleep(50 * time.Millisecond) // the watch is set up
	var out []time.Duration
	for i := range n {
		start := time.Now()
		if err := p.Txn(ctx, store.Put(fmt.Sprintf("k/%d", i), []byte("x"))); err != nil {
			b.Fatal(err)
		}
		select {
		case <-events:
			out = append(out, time.Since(start))
		case <-time.After(5 * time.Second):
			b.Fatal("floor: no watch event")
		}
	}
	return out
}

// BenchmarkOverlayJoin measures, on host 1 of a cluster, CreateEndpoint and
// Join apart, on a bridge network, on an internal overlay network (the
// overlay itself) and on an overlay network with a way out (its join adds
// the gateway bridge endpoint), interleaved in one run. It reports the
// medians of Join and of CreateEndpoint + Join, and their ratios to the
// bridge's. CreateEndpoint on an overlay network writes the endpoint's
// record to etcd and waits for it (so that a network is never deleted
// while a host has endpoints on it); Join writes in the background.
func BenchmarkOverlayJoin(b *testing.B) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(b, 2, cnmtest.ClusterOptions{LeaseTTL: 10 * time.Second})
	c := cl.Hosts[0].Ctrl
	mk := func(driver, name, subnet string, opts ...cnm.NetworkOption) *cnm.Network {
		n, err := c.NewNetwork(ctx, driver, name, append(opts, cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(subnet)}))...)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	nets := []*cnm.Network{
		mk("bridge", "br", "10.201.0.0/16"),
		mk("overlay", "ov-internal", "10.202.0.0/16", cnm.WithInternal()),
		mk("overlay", "ov", "10.203.0.0/16"),
	}
	// The first join on an overlay network makes its namespace: not the
	// steady state measured here.
	setupContainer(b, c, nets[1], "keep1")
	setupContainer(b, c, nets[2], "keep2")
	join := make([][]time.Duration, len(nets))
	both := make([][]time.Duration, len(nets))
	b.ResetTimer()
	for i := range b.N {
		for k, n := range nets {
			b.StopTimer()
			name := fmt.Sprintf("j%d-%d", i, k)
			sb, err := c.NewSandbox(ctx, name)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start := time.Now()
			ep, err := n.CreateEndpoint(ctx, name)
			if err != nil {
				b.Fatal(err)
			}
			joinStart := time.Now()
			if err := ep.Join(ctx, sb); err != nil {
				b.Fatal(err)
			}
			join[k] = append(join[k], time.Since(joinStart))
			both[k] = append(both[k], time.Since(start))
			b.StopTimer()
			if err := sb.Delete(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.StopTimer()
	for k, label := range []string{"bridge", "internal", "egress"} {
		j, cj := quantile(join[k], 0.5), quantile(both[k], 0.5)
		b.ReportMetric(ms(j), label+"-join-ms")
		b.ReportMetric(ms(cj), label+"-create+join-ms")
		if k > 0 {
			b.ReportMetric(float64(j)/float64(quantile(join[0], 0.5)), label+"/bridge-join")
			b.ReportMetric(float64(cj)/float64(quantile(both[0], 0.5)), label+"/bridge-create+join")
		}
	}
}

// BenchmarkOverlayThroughput sends 64 MiB over TCP per iteration between
// containers on two hosts over the overlay, and between the same two host
// namespaces over a bare VXLAN pair made by hand (same MTU, no bridge, no
// namespace per network), interleaved; it reports both rates and the ratio.
func BenchmarkOverlayThroughput(b *testing.B) {
	ctx := context.Background()
	cl := cnmtest.NewCluster(b, 2, cnmtest.ClusterOptions{LeaseTTL: 10 * time.Second})
	h1, h2 := cl.Hosts[0], cl.Hosts[1]
	nw, err := h1.Ctrl.NewNetwork(ctx, "overlay", "tp", cnm.WithInternal(), ipv4Subnet("10.204.0.0/24"))
	if err != nil {
		b.Fatal(err)
	}
	n2 := waitNetworkB(b, h2.Ctrl, "tp")
	src := setupContainer(b, h1.Ctrl, nw, "src")
	dst := setupContainer(b, h2.Ctrl, n2, "dst")
	dstEP, _ := n2.EndpointByName("dst")
	_, bareB := barePair(b, h1, h2)

	const size = 64 << 20
	var ovRate, bareRate []float64
	b.SetBytes(2 * size)
	b.ResetTimer()
	for range b.N {
		ovRate = append(ovRate, stream(b, src.Key(), dst.Key(), netip.AddrPortFrom(dstEP.Info().IPv4.Addr(), 5001), size))
		bareRate = append(bareRate, stream(b, h1.Path, h2.Path, netip.AddrPortFrom(bareB, 5002), size))
	}
	b.StopTimer()
	slices.Sort(ovRate)
	slices.Sort(bareRate)
	ov, bare := ovRate[len(ovRate)/2], bareRate[len(bareRate)/2]
	b.ReportMetric(ov, "overlay-MB/s")
	b.ReportMetric(bare, "bare-vxlan-MB/s")
	b.ReportMetric(ov/bare, "overlay/bare")
}

// stream sends size bytes over one TCP connection from the namespace at
// from to a receiver in the namespace at to, and returns MB/s.
func stream(b *testing.B, from, to string, addr netip.AddrPort, size int64) float64 {
	ctx := context.Background()
	l, err := cnmtest.Listen(ctx, to, addr)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	conn, err := cnmtest.Dial(ctx, from, addr, 2*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := int64(0); sent < size; {
		n, err := conn.Write(buf)
		if err != nil {
			b.Fatal(err)
		}
		sent += int64(n)
	}
	conn.(*net.TCPConn).CloseWrite()
	if n := <-got; n < size {
		b.Fatalf("stream: %d of %d bytes arrived", n, size)
	}
	conn.Close()
	return float64(size) / 1e6 / time.Since(start).Seconds()
}

// barePair makes, by hand, a VXLAN device in each of two host namespaces
// (VNI 99, UDP port 4790, the overlay's MTU), with a static FDB entry to
// the other and addresses 10.250.0.1/24 and .2: the least an overlay can
// be.
func barePair(b *testing.B, h1, h2 *cnmtest.ClusterHost) (netip.Addr, netip.Addr) {
	addrs := []netip.Addr{netip.MustParseAddr("10.250.0.1"), netip.MustParseAddr("10.250.0.2")}
	hs := []*cnmtest.ClusterHost{h1, h2}
	macs := make([]net.HardwareAddr, 2)
	handles := make([]*netlink.Handle, 2)
	for i, h := range hs {
		fd, err := h.NS.FD()
		if err != nil {
			b.Fatal(err)
		}
		hd, err := netlink.NewHandleAt(netns.NsHandle(fd))
		unix.Close(fd)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(hd.Close)
		handles[i] = hd
		ul, err := hd.LinkByName("ul0")
		if err != nil {
			b.Fatal(err)
		}
		vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vxbare", MTU: ul.Attrs().MTU - 50}, VxlanId: 99, SrcAddr: h.VTEP.AsSlice(), Port: 4790, Learning: false}
		if err := hd.LinkAdd(vx); err != nil {
			b.Fatal(err)
		}
		l, err := hd.LinkByName("vxbare")
		if err != nil {
			b.Fatal(err)
		}
		macs[i] = l.Attrs().HardwareAddr
		if err := hd.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: addrs[i].AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			b.Fatal(err)
		}
		if err := hd.LinkSetUp(l); err != nil {
			b.Fatal(err)
		}
	}
	for i, hd := range handles {
		o := 1 - i
		l, _ := hd.LinkByName("vxbare")
		idx := l.Attrs().Index
		if err := hd.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT | netlink.NUD_NOARP,
			IP: hs[o].VTEP.AsSlice(), HardwareAddr: macs[o]}); err != nil {
			b.Fatal(err)
		}
		if err := hd.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: addrs[o].AsSlice(), HardwareAddr: macs[o]}); err != nil {
			b.Fatal(err)
		}
	}
	return addrs[0], addrs[1]
}
