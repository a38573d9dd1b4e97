package cnm_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
)

func TestParsePortMapping(t *testing.T) {
	ip := netip.MustParseAddr
	for _, tc := range []struct {
		in   string
		want cnm.PortMapping
	}{
		{"80", cnm.PortMapping{Proto: "tcp", ContainerPort: 80}},
		{"8080:80", cnm.PortMapping{Proto: "tcp", HostPort: 8080, ContainerPort: 80}},
		{"8080-8090:80/udp", cnm.PortMapping{Proto: "udp", HostPort: 8080, HostPortEnd: 8090, ContainerPort: 80}},
		{"127.0.0.1:8080:80", cnm.PortMapping{Proto: "tcp", HostIP: ip("127.0.0.1"), HostPort: 8080, ContainerPort: 80}},
		{"127.0.0.1::80/sctp", cnm.PortMapping{Proto: "sctp", HostIP: ip("127.0.0.1"), ContainerPort: 80}},
		{"[fd00::1]:8080:80", cnm.PortMapping{Proto: "tcp", HostIP: ip("fd00::1"), HostPort: 8080, ContainerPort: 80}},
	} {
		got, err := cnm.ParsePortMapping(tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
	for _, bad := range []string{"", "0", "65536", "80/icmp", "8080:0", "9000-8000:80", "-8000:80", "x:80:80",
		"1.2.3.4:5:6:7", "[::1]8080:80", "[fe80::1%eth0]:80:80", "[::ffff:1.2.3.4]:80:80", "8080:80/"} {
		_, err := cnm.ParsePortMapping(bad)
		require.ErrorIs(t, err, cnm.ErrInvalid, "%q", bad)
		assert.ErrorContains(t, err, fmt.Sprintf("%q", bad), "the error names the input")
	}
}

// portLab is a host with one bridge network and an "outside" namespace
// routed to the host namespace through an uplink veth.
type portLab struct {
	ctrl    *cnm.Controller
	host    *cnmtest.HostNS
	nw      *cnm.Network
	outside *osl.Namespace
	hostIP  netip.Addr // the host namespace's address on the uplink
	outIP   netip.Addr // the outside namespace's
}

func newPortLab(t *testing.T, opts ...cnm.NetworkOption) *portLab {
	t.Helper()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	l := &portLab{ctrl: ctrl, host: host, hostIP: uplinkHostIP, outIP: uplinkOutIP}
	l.outside = newOutside(t, host)
	var err error
	if len(opts) == 0 {
		opts = []cnm.NetworkOption{cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.110.0.0/24")})}
	}
	l.nw, err = ctrl.NewNetwork(ctx, "bridge", "pub", opts...)
	require.NoError(t, err)
	return l
}

// The addresses of the uplink newOutside makes.
var (
	uplinkHostIP = netip.MustParseAddr("192.0.2.1") // the host namespace's, on up0
	uplinkOutIP  = netip.MustParseAddr("192.0.2.2") // the outside namespace's, on eth0
)

// newOutside makes an "outside" namespace connected to the host namespace
// by an uplink veth (up0 in the host, 192.0.2.0/24), routed to everything
// through the host, and deleted at the end of the test.
func newOutside(t *testing.T, host *cnmtest.HostNS) *osl.Namespace {
	t.Helper()
	ctx := context.Background()
	out, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "outside"))
	require.NoError(t, err)
	t.Cleanup(func() { out.Delete() })
	require.NoError(t, host.NS.AddVeth(ctx, osl.VethSpec{HostName: "up0", PeerName: "eth0", PeerNS: out}))
	up, err := host.NS.LinkByName(ctx, "up0")
	require.NoError(t, err)
	require.NoError(t, host.NS.AddAddress(ctx, up.Index, netip.PrefixFrom(uplinkHostIP, 24)))
	require.NoError(t, host.NS.SetLinkUp(ctx, up.Index))
	eth0, err := out.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	require.NoError(t, out.AddAddress(ctx, eth0.Index, netip.PrefixFrom(uplinkOutIP, 24)))
	require.NoError(t, out.SetLinkUp(ctx, eth0.Index))
	require.NoError(t, out.AddRoute(ctx, osl.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: uplinkHostIP, LinkIndex: eth0.Index}))
	return out
}

// serveTCP listens on addr inside the namespace path; each connection gets
// tag back and its client's address is sent on the returned channel.
func serveTCP(t *testing.T, path string, addr netip.AddrPort, tag string) <-chan netip.AddrPort {
	t.Helper()
	peers := make(chan netip.AddrPort, 16)
	cnmtest.Serve(t, path, addr, func(c net.Conn) {
		peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
		_, _ = c.Write([]byte(tag))
	})
	return peers
}

// tcpGet dials to from inside the namespace path and returns what the
// server sent.
func tcpGet(path string, to netip.AddrPort) (string, error) {
	c, err := cnmtest.Dial(context.Background(), path, to, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// udpEcho answers every datagram to addr inside the namespace path with tag.
func udpEcho(t *testing.T, path string, addr netip.AddrPort, tag string) {
	t.Helper()
	var pc net.PacketConn
	require.NoError(t, cnmtest.Do(context.Background(), path, func() (err error) {
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(tag), from)
		}
	}()
}

// udpClient is a UDP socket opened inside a namespace: one client, one
// source port, across several datagrams.
func udpClient(t *testing.T, ns *osl.Namespace) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	require.NoError(t, ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp", &net.UDPAddr{})
		return err
	}))
	t.Cleanup(func() { c.Close() })
	return c
}

// udpAsk sends one datagram to to and returns the answer, or an error if
// none came in time.
func udpAsk(c *net.UDPConn, to netip.AddrPort) (string, error) {
	if _, err := c.WriteToUDPAddrPort([]byte("?"), to); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 64)
	n, _, err := c.ReadFromUDPAddrPort(buf)
	return string(buf[:n]), err
}

func TestPublishedPortsReached(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newPortLab(t)
	web, err := l.ctrl.NewSandbox(ctx, "web")
	require.NoError(t, err)
	ep, err := l.nw.CreateEndpoint(ctx, "web", cnm.WithPortMappings(
		cnm.PortMapping{Proto: "tcp", HostPort: 8080, ContainerPort: 80},
		cnm.PortMapping{Proto: "udp", HostPort: 5353, ContainerPort: 53}))
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, web))
	assert.Equal(t, []cnm.PortMapping{
		{Proto: "tcp", HostIP: netip.IPv4Unspecified(), HostPort: 8080, ContainerPort: 80},
		{Proto: "udp", HostIP: netip.IPv4Unspecified(), HostPort: 5353, ContainerPort: 53},
	}, ep.Info().PortMappings, "the ports as bound")
	webIP := ep.Info().IPv4.Addr()
	peers := serveTCP(t, web.Key(), netip.AddrPortFrom(webIP, 80), "web")
	udpEcho(t, web.Key(), netip.AddrPortFrom(webIP, 53), "web")
	client, _ := container(t, l.nw, "client")

	pub := netip.AddrPortFrom(l.hostIP, 8080)
	got, err := tcpGet(l.outside.Path(), pub)
	require.NoError(t, err, "from outside")
	assert.Equal(t, "web", got)
	assert.Equal(t, l.outIP, (<-peers).Addr(), "the server sees the outside client's real address")

	got, err = tcpGet(l.host.Path, pub)
	require.NoError(t, err, "from the host, through its address")
	assert.Equal(t, "web", got)
	<-peers
	got, err = tcpGet(l.host.Path, netip.MustParseAddrPort("127.0.0.1:8080"))
	require.NoError(t, err, "from the host, through 127.0.0.1")
	assert.Equal(t, "web", got)
	<-peers
	got, err = tcpGet(client.Key(), pub)
	require.NoError(t, err, "from a neighbour on the same bridge (hairpin)")
	assert.Equal(t, "web", got)
	<-peers
	got, err = tcpGet(web.Key(), pub)
	require.NoError(t, err, "from the container itself")
	assert.Equal(t, "web", got)
	<-peers

	u := udpClient(t, l.outside)
	got, err = udpAsk(u, netip.AddrPortFrom(l.hostIP, 5353))
	require.NoError(t, err, "udp from outside")
	assert.Equal(t, "web", got)

	// Leave unpublishes: the port no longer answers, and no rule is left.
	require.NoError(t, ep.Leave(ctx, web))
	_, err = tcpGet(l.outside.Path(), pub)
	require.Error(t, err, "unpublished on leave")
	deleteAll(t, l.ctrl)
	cnmtest.AssertNoLeaks(t, l.host, "up0")
}

// A UDP port moved from one container to another: the next datagram from
// the same client socket reaches the new one (no stale conntrack entry).
func TestUDPPortMovesWithoutStaleConntrack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newPortLab(t)
	udp := cnm.WithPortMappings(cnm.PortMapping{Proto: "udp", HostPort: 5300, ContainerPort: 53})
	a, err := l.ctrl.NewSandbox(ctx, "a")
	require.NoError(t, err)
	epA, err := l.nw.CreateEndpoint(ctx, "a", udp)
	require.NoError(t, err)
	require.NoError(t, epA.Join(ctx, a))
	udpEcho(t, a.Key(), netip.AddrPortFrom(epA.Info().IPv4.Addr(), 53), "a")
	b, err := l.ctrl.NewSandbox(ctx, "b")
	require.NoError(t, err)
	epB, err := l.nw.CreateEndpoint(ctx, "b", udp)
	require.NoError(t, err)

	u := udpClient(t, l.outside)
	pub := netip.AddrPortFrom(l.hostIP, 5300)
	got, err := udpAsk(u, pub)
	require.NoError(t, err)
	require.Equal(t, "a", got)

	require.NoError(t, epA.Leave(ctx, a))
	require.NoError(t, epB.Join(ctx, b))
	udpEcho(t, b.Key(), netip.AddrPortFrom(epB.Info().IPv4.Addr(), 53), "b")
	got, err = udpAsk(u, pub)
	require.NoError(t, err, "the next datagram from the same client socket")
	assert.Equal(t, "b", got, "reaches the container that has the port now")
	deleteAll(t, l.ctrl)
	cnmtest.AssertNoLeaks(t, l.host, "up0")
}

func TestPortMappingErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newPortLab(t)
	sb, err := l.ctrl.NewSandbox(ctx, "c")
	require.NoError(t, err)
	join := func(name string, p cnm.PortMapping) error {
		ep, err := l.nw.CreateEndpoint(ctx, name, cnm.WithPortMappings(p))
		if err != nil {
			return err
		}
		if err := ep.Join(ctx, sb); err != nil {
			require.Empty(t, ep.Info().SandboxID)
			require.NoError(t, ep.Delete(ctx))
			return err
		}
		return nil
	}

	// A port a process holds in the host namespace.
	ln, err := cnmtest.Listen(ctx, l.host.Path, netip.AddrPortFrom(l.hostIP, 8081))
	require.NoError(t, err)
	defer ln.Close()
	err = join("held", cnm.PortMapping{Proto: "tcp", HostIP: l.hostIP, HostPort: 8081, ContainerPort: 80})
	require.ErrorIs(t, err, cnm.ErrInUse)
	assert.ErrorContains(t, err, "8081")

	// A host address the host does not have.
	err = join("nowhere", cnm.PortMapping{Proto: "tcp", HostIP: netip.MustParseAddr("198.51.100.7"), HostPort: 8082, ContainerPort: 80})
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, "198.51.100.7")

	// An IPv6 host address on an IPv4-only network, at CreateEndpoint.
	_, err = l.nw.CreateEndpoint(ctx, "v6", cnm.WithPortMappings(cnm.PortMapping{Proto: "tcp", HostIP: netip.MustParseAddr("::1"), ContainerPort: 80}))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, "no IPv6")

	// The same host port twice, in one endpoint and across two.
	_, err = l.nw.CreateEndpoint(ctx, "twice", cnm.WithPortMappings(
		cnm.PortMapping{Proto: "tcp", HostPort: 8083, ContainerPort: 80},
		cnm.PortMapping{Proto: "tcp", HostPort: 8083, ContainerPort: 81}))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	require.NoError(t, join("first", cnm.PortMapping{Proto: "tcp", HostPort: 8084, ContainerPort: 80}))
	sb2, err := l.ctrl.NewSandbox(ctx, "c2")
	require.NoError(t, err)
	ep2, err := l.nw.CreateEndpoint(ctx, "second", cnm.WithPortMappings(cnm.PortMapping{Proto: "tcp", HostIP: l.hostIP, HostPort: 8084, ContainerPort: 80}))
	require.NoError(t, err)
	err = ep2.Join(ctx, sb2)
	require.ErrorIs(t, err, cnm.ErrInUse, "a specific address conflicts with a wildcard mapping")
	// A range larger than what is free.
	ep3, err := l.nw.CreateEndpoint(ctx, "range", cnm.WithPortMappings(cnm.PortMapping{Proto: "tcp", HostPort: 8084, HostPortEnd: 8084, ContainerPort: 80}))
	require.NoError(t, err)
	require.ErrorIs(t, ep3.Join(ctx, sb2), cnm.ErrInUse)

	// An internal network refuses them at CreateEndpoint.
	internal, err := l.ctrl.NewNetwork(ctx, "bridge", "internal", cnm.WithInternal(),
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.111.0.0/24")}))
	require.NoError(t, err)
	_, err = internal.CreateEndpoint(ctx, "x", cnm.WithPortMappings(cnm.PortMapping{Proto: "tcp", ContainerPort: 80}))
	require.ErrorIs(t, err, cnm.ErrInvalid)
	assert.ErrorContains(t, err, "internal")

	// A driver that publishes no ports refuses them at CreateEndpoint.
	null, err := l.ctrl.NewNetwork(ctx, "null", "none")
	require.NoError(t, err)
	_, err = null.CreateEndpoint(ctx, "x", cnm.WithPortMappings(cnm.PortMapping{Proto: "tcp", ContainerPort: 80}))
	require.ErrorIs(t, err, cnm.ErrInvalid)

	require.NoError(t, ep2.Delete(ctx))
	require.NoError(t, ep3.Delete(ctx))
	deleteAll(t, l.ctrl)
	cnmtest.AssertNoLeaks(t, l.host, "up0")
}

// Published ports come back after a restart with the same host ports.
// (TestCrashRecovery kills a controller between publishing and recording.)
func TestPublishedPortsAcrossRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newPortLab(t)
	web, err := l.ctrl.NewSandbox(ctx, "web")
	require.NoError(t, err)
	ep, err := l.nw.CreateEndpoint(ctx, "web", cnm.WithExposedPorts(cnm.ExposedPort{Proto: "tcp", Port: 80}))
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, web))
	bound := ep.Info().PortMappings
	require.Len(t, bound, 1)
	assert.GreaterOrEqual(t, bound[0].HostPort, uint16(49153), "an ephemeral port")
	serveTCP(t, web.Key(), netip.AddrPortFrom(ep.Info().IPv4.Addr(), 80), "web")

	require.NoError(t, l.ctrl.Close())

	ctrl2 := reopen(t, l.host)
	nw2, err := ctrl2.NetworkByID(l.nw.ID())
	require.NoError(t, err)
	ep1, err := nw2.EndpointByName("web")
	require.NoError(t, err)
	assert.Equal(t, bound, ep1.Info().PortMappings, "the same host ports")
	got, err := tcpGet(l.outside.Path(), netip.AddrPortFrom(l.hostIP, bound[0].HostPort))
	require.NoError(t, err)
	assert.Equal(t, "web", got)
	deleteAll(t, ctrl2)
	cnmtest.AssertNoLeaks(t, l.host, "up0")
}

// On a dual-stack network a mapping without host address is bound on both
// families, with the same port, and reached over IPv6 as over IPv4.
func TestPublishedPortDualStack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newPortLab(t,
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.112.0.0/24")}),
		cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd12::/64")}))
	// An IPv6 uplink to the outside.
	hostIP6, outIP6 := netip.MustParseAddr("fd99::1"), netip.MustParseAddr("fd99::2")
	up, err := l.host.NS.LinkByName(ctx, "up0")
	require.NoError(t, err)
	require.NoError(t, l.host.NS.AddAddress(ctx, up.Index, netip.PrefixFrom(hostIP6, 64)))
	eth0, err := l.outside.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	require.NoError(t, l.outside.AddAddress(ctx, eth0.Index, netip.PrefixFrom(outIP6, 64)))
	require.NoError(t, l.outside.AddRoute(ctx, osl.Route{Dst: netip.MustParsePrefix("::/0"), Gateway: hostIP6, LinkIndex: eth0.Index}))

	web, err := l.ctrl.NewSandbox(ctx, "web")
	require.NoError(t, err)
	ep, err := l.nw.CreateEndpoint(ctx, "web", cnm.WithExposedPorts(cnm.ExposedPort{Proto: "tcp", Port: 80}))
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, web))
	bound := ep.Info().PortMappings
	require.Len(t, bound, 2)
	assert.Equal(t, netip.IPv4Unspecified(), bound[0].HostIP)
	assert.Equal(t, netip.IPv6Unspecified(), bound[1].HostIP)
	assert.Equal(t, bound[0].HostPort, bound[1].HostPort, "the same port in both families")
	serveTCP(t, web.Key(), netip.AddrPortFrom(netip.IPv6Unspecified(), 80), "web")

	// At once: the bridge needs no DAD before it can solicit the
	// container's address for a forwarded packet (the first attempt used
	// to time out, 1-2 s after the bridge's first port came up).
	got, err := tcpGet(l.outside.Path(), netip.AddrPortFrom(hostIP6, bound[1].HostPort))
	require.NoError(t, err, "over IPv6 from outside, right after Join")
	assert.Equal(t, "web", got)
	got, err = tcpGet(l.outside.Path(), netip.AddrPortFrom(l.hostIP, bound[0].HostPort))
	require.NoError(t, err, "over IPv4 from outside")
	assert.Equal(t, "web", got)
	deleteAll(t, l.ctrl)
	cnmtest.AssertNoLeaks(t, l.host, "up0")
}

// One endpoint with 1,000 exposed ports: each gets its own ephemeral port,
// and leaving removes every one of them.
func TestThousandPublishedPorts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newPortLab(t)
	exposed := make([]cnm.ExposedPort, 1000)
	for i := range exposed {
		exposed[i] = cnm.ExposedPort{Proto: "udp", Port: uint16(1000 + i)}
	}
	sb, err := l.ctrl.NewSandbox(ctx, "many")
	require.NoError(t, err)
	ep, err := l.nw.CreateEndpoint(ctx, "many", cnm.WithExposedPorts(exposed...))
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	seen := map[uint16]bool{}
	for _, b := range ep.Info().PortMappings {
		require.False(t, seen[b.HostPort], "host port %d handed out twice", b.HostPort)
		seen[b.HostPort] = true
	}
	require.Len(t, seen, 1000)
	assert.Len(t, publishedPorts(t, l.host, l.ctrl), 1000)
	require.NoError(t, ep.Leave(ctx, sb))
	assert.Empty(t, publishedPorts(t, l.host, l.ctrl), "leave removes every port")
	deleteAll(t, l.ctrl)
	cnmtest.AssertNoLeaks(t, l.host, "up0")
}
