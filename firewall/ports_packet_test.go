//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"

	"github.com/seed53641549/cnm/osl"
)

// Ports of the packet tests. Every container of a topology serves TCP on
// testPort (serve); these tests add a UDP echo on udpPort where they need it.
const (
	udpPort       = 8082
	hostTCP       = 9080 // published on every address of a family, to a1:testPort
	hostUDP       = 9081 // published on every address of a family, to a1:udpPort
	hostTCPUplink = 9082 // published on the uplink address only, to a1:testPort
)

// serveUDP answers every datagram to addr:port in namespace fd with
// "<name> <the sender's address>", until the test ends.
func serveUDP(t testing.TB, fd int, addr netip.Addr, port uint16, name string) {
	t.Helper()
	var pc net.PacketConn
	require.NoError(t, inNS(fd, func() error {
		var err error
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(addr, port).String())
		return err
	}))
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
			_, _ = pc.WriteTo([]byte(name+" "+src.String()), from)
		}
	}()
}

// dialUDP returns a UDP socket in namespace fd connected to to, closed at
// the end of the test.
func dialUDP(t testing.TB, fd int, to netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	require.NoError(t, inNS(fd, func() error {
		var err error
		c, err = net.Dial("udp", to.String())
		return err
	}))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// askUDP sends a datagram on c and returns the answer, or "" if none comes.
func askUDP(t testing.TB, c net.Conn, timeout time.Duration) string {
	t.Helper()
	_, err := c.Write([]byte("?"))
	require.NoError(t, err)
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// requireRefused checks that a TCP connection from namespace fd to to is
// refused at once: nothing DNATs it, and nothing listens.
func requireRefused(t testing.TB, fd int, to netip.AddrPort, what string) {
	t.Helper()
	c, err := dialTCP(fd, to, okTimeout)
	if err == nil {
		c.Close()
	}
	require.True(t, errors.Is(err, syscall.ECONNREFUSED), "%s: expected %s to be refused, got %v", what, to, err)
}

// publishA1 returns the ports of the packet tests, for both families: TCP
// and UDP on every address, and TCP on the uplink address, all to a1.
func publishA1() []Port {
	var ports []Port
	for _, fam := range families {
		every := netip.IPv4Unspecified()
		if fam.a1.Is6() {
			every = netip.IPv6Unspecified()
		}
		p := Port{NetworkID: "A", Bridge: "brA", ContainerIP: fam.a1}
		tcp, udp, up := p, p, p
		tcp.Proto, tcp.HostIP, tcp.HostPort, tcp.ContainerPort = "tcp", every, hostTCP, testPort
		udp.Proto, udp.HostIP, udp.HostPort, udp.ContainerPort = "udp", every, hostUDP, udpPort
		up.Proto, up.HostIP, up.HostPort, up.ContainerPort = "tcp", fam.up, hostTCPUplink, testPort
		ports = append(ports, tcp, udp, up)
	}
	return ports
}

// TestPacketPorts publishes a TCP server and a UDP echo of a1 and reaches
// them, over IPv4 and IPv6, from every place the issue names: the outside
// (which the server sees as itself), the host through its own address and
// through 127.0.0.1, a1's neighbour a2 and a1 itself through the host's
// addresses (hairpin), and a container of another bridge. With
// br_netfilter, the host bridges a DNAT'ed packet back into the bridge it
// came from, so a1 reaching itself needs hairpin mode on its bridge port;
// without, the packet is routed.
func TestPacketPorts(t *testing.T) {
	for _, brNetfilter := range []string{"1", "0"} {
		t.Run("br_netfilter="+brNetfilter, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tp := newTopology(t)
			writeSysctl(t, tp.host, "net/bridge/bridge-nf-call-iptables", brNetfilter)
			writeSysctl(t, tp.host, "net/bridge/bridge-nf-call-ip6tables", brNetfilter)
			// What the bridge driver does for a bridge with published ports.
			writeSysctl(t, tp.host, "net/ipv4/conf/brA/route_localnet", "1")
			h := handle(t, tp.host)
			va1, err := h.LinkByName("va1")
			require.NoError(t, err)
			require.NoError(t, h.LinkSetHairpin(va1, true))
			for _, fam := range families {
				serveUDP(t, tp.a1, fam.a1, udpPort, "a1")
			}

			f := openFirewall(t, tp.host)
			a, b := networks()
			require.NoError(t, f.AddNetwork(ctx, a))
			require.NoError(t, f.AddNetwork(ctx, b))
			ports := publishA1()
			require.NoError(t, f.AddPorts(ctx, ports...))

			for _, fam := range families {
				t.Run(fam.name, func(t *testing.T) {
					tcp := func(from int, addr netip.Addr, port uint16, what string) string {
						t.Helper()
						src, err := dialFrom(from, addr, port, okTimeout)
						require.NoError(t, err, "%s: tcp to %s", what, netip.AddrPortFrom(addr, port))
						return src
					}
					udp := func(from int, addr netip.Addr, what string) string {
						t.Helper()
						got := askUDP(t, dialUDP(t, from, netip.AddrPortFrom(addr, hostUDP)), okTimeout)
						require.NotEmpty(t, got, "%s: udp to %s", what, netip.AddrPortFrom(addr, hostUDP))
						return got
					}

					// From outside: the server sees the client's own address.
					assert.Equal(t, fam.ext.String(), tcp(tp.ext, fam.up, hostTCP, "ext"))
					assert.Equal(t, fam.ext.String(), tcp(tp.ext, fam.up, hostTCPUplink, "ext, uplink port"))
					assert.Equal(t, "a1 "+fam.ext.String(), udp(tp.ext, fam.up, "ext"))
					requireBlocked(t, tp.ext, fam.a1, "ext -> a1 directly")
					// A port on the uplink address is not on the others.
					requireRefused(t, tp.a2, netip.AddrPortFrom(fam.gwA, hostTCPUplink), "uplink port on the gateway address")

					// From the host, through its own addresses.
					assert.Equal(t, fam.up.String(), tcp(tp.host, fam.up, hostTCP, "host"))
					assert.Equal(t, fam.up.String(), tcp(tp.host, fam.up, hostTCPUplink, "host, uplink port"))
					// brB's address is in network B's subnet, which B masquerades
					// when it leaves through another bridge.
					assert.Equal(t, fam.gwA.String(), tcp(tp.host, fam.gwB, hostTCP, "host, through brB's address"))
					assert.Equal(t, "a1 "+fam.up.String(), udp(tp.host, fam.up, "host"))

					// Hairpin: a1's neighbour and a1 itself, masqueraded to the
					// gateway so that the replies come back through the host.
					assert.Equal(t, fam.gwA.String(), tcp(tp.a2, fam.up, hostTCP, "a2 (hairpin)"))
					assert.Equal(t, fam.gwA.String(), tcp(tp.a2, fam.gwA, hostTCP, "a2 through its gateway (hairpin)"))
					assert.Equal(t, fam.gwA.String(), tcp(tp.a1, fam.up, hostTCP, "a1 itself (hairpin)"))
					assert.Equal(t, "a1 "+fam.gwA.String(), udp(tp.a2, fam.up, "a2 (hairpin)"))
					assert.Equal(t, "a1 "+fam.gwA.String(), udp(tp.a1, fam.up, "a1 itself (hairpin)"))

					// Another bridge's container, masqueraded as it leaves brB.
					assert.Equal(t, fam.gwA.String(), tcp(tp.b1, fam.up, hostTCP, "b1"))
				})
			}

			// Localhost: IPv4 only. ::1 is not published: refused at once.
			localhost := netip.MustParseAddr("127.0.0.1")
			src, err := dialFrom(tp.host, localhost, hostTCP, okTimeout)
			require.NoError(t, err, "host -> 127.0.0.1")
			assert.Equal(t, v4.gwA.String(), src, "masqueraded")
			assert.Equal(t, "a1 "+v4.gwA.String(), askUDP(t, dialUDP(t, tp.host, netip.AddrPortFrom(localhost, hostUDP)), okTimeout))
			requireRefused(t, tp.host, netip.AddrPortFrom(netip.IPv6Loopback(), hostTCP), "host -> [::1]")

			// Withdrawn: nothing answers any more.
			require.NoError(t, f.RemovePorts(ctx, ports...))
			for _, fam := range families {
				requireRefused(t, tp.ext, netip.AddrPortFrom(fam.up, hostTCP), fam.name+": ext, after RemovePorts")
				requireRefused(t, tp.a2, netip.AddrPortFrom(fam.up, hostTCP), fam.name+": a2, after RemovePorts")
			}
			require.NoError(t, f.RemoveNetwork(ctx, "A"))
			require.NoError(t, f.RemoveNetwork(ctx, "B"))
			assert.Zero(t, ruleCount(t, f))
		})
	}
}

// TestPacketPortsInternal: a port published to a container of an internal
// network is not reached: the internal stage runs before published.
func TestPacketPortsInternal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tp := newTopology(t)
	f := openFirewall(t, tp.host)
	a, b := networks()
	b.Internal = true
	require.NoError(t, f.AddNetwork(ctx, a))
	require.NoError(t, f.AddNetwork(ctx, b))
	for _, fam := range families {
		p := Port{NetworkID: "B", Bridge: "brB", Proto: "tcp", HostIP: fam.up, HostPort: hostTCP, ContainerIP: fam.b1, ContainerPort: testPort}
		require.NoError(t, f.AddPorts(ctx, p))
		requireTimeout(t, tp.ext, netip.AddrPortFrom(fam.up, hostTCP), fam.name+": ext -> b1 through a published port, internal network")
	}
	require.NoError(t, f.RemoveNetwork(ctx, "A"))
	require.NoError(t, f.RemoveNetwork(ctx, "B"))
	assert.Zero(t, ruleCount(t, f))
}

// TestPacketUDPMove moves a UDP port from a1 to a2 while a client keeps
// sending from one socket. Its conntrack entry keeps sending to a1 until
// osl.Namespace.DeleteConntrack deletes it; the next datagram reaches a2.
func TestPacketUDPMove(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tp := newTopology(t)
	hostNS, err := osl.OpenNamespace(ctx, fmt.Sprintf("/proc/self/fd/%d", tp.host))
	require.NoError(t, err)
	t.Cleanup(func() { _ = hostNS.Close() })
	f := openFirewall(t, tp.host)
	a, _ := networks()
	require.NoError(t, f.AddNetwork(ctx, a))

	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			serveUDP(t, tp.a1, fam.a1, udpPort, "a1")
			serveUDP(t, tp.a2, fam.a2, udpPort, "a2")
			every := netip.IPv4Unspecified()
			if fam.a1.Is6() {
				every = netip.IPv6Unspecified()
			}
			toA1 := Port{NetworkID: "A", Bridge: "brA", Proto: "udp", HostIP: every, HostPort: hostUDP, ContainerIP: fam.a1, ContainerPort: udpPort}
			toA2 := toA1
			toA2.ContainerIP = fam.a2
			require.NoError(t, f.AddPorts(ctx, toA1))
			client := dialUDP(t, tp.ext, netip.AddrPortFrom(fam.up, hostUDP))
			assert.Equal(t, "a1 "+fam.ext.String(), askUDP(t, client, okTimeout))

			require.NoError(t, f.RemovePorts(ctx, toA1))
			require.NoError(t, f.AddPorts(ctx, toA2))
			assert.Equal(t, "a1 "+fam.ext.String(), askUDP(t, client, okTimeout), "the conntrack entry still goes to a1")

			n, err := hostNS.DeleteConntrack(ctx, "udp", every, hostUDP)
			require.NoError(t, err)
			assert.Equal(t, 1, n, "conntrack entries deleted")
			assert.Equal(t, "a2 "+fam.ext.String(), askUDP(t, client, okTimeout), "the next datagram from the same socket")
			require.NoError(t, f.RemovePorts(ctx, toA2))
		})
	}
	require.NoError(t, f.RemoveNetwork(ctx, "A"))
	assert.Zero(t, ruleCount(t, f))
}

// TestPacketForeignLoopback: a bridge with route_localnet would route a
// container's packet for 127.0.0.1 to the host's loopback services
// (CVE-2020-8558); the firewall drops it. The container is made to send
// one: its loopback address is gone and 127.0.0.0/8 goes to its gateway.
func TestPacketForeignLoopback(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	writeSysctl(t, tp.host, "net/ipv4/conf/brA/route_localnet", "1")
	writeSysctl(t, tp.a1, "net/ipv4/conf/eth0/route_localnet", "1")
	h := handle(t, tp.a1)
	lo, err := h.LinkByName("lo")
	require.NoError(t, err)
	require.NoError(t, h.AddrDel(lo, &netlink.Addr{IPNet: ipnet(pfx("127.0.0.1/8"))}))
	eth0, err := h.LinkByName("eth0")
	require.NoError(t, err)
	require.NoError(t, h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipnet(loopback4), Gw: v4.gwA.AsSlice()}))
	localhost := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), testPort)

	require.True(t, udpArrives(t, tp.a1, localhost, tp.host, localhost.Addr()),
		"without the firewall, a1 reaches the host's 127.0.0.1")
	f := openFirewall(t, tp.host)
	assert.False(t, udpArrives(t, tp.a1, localhost, tp.host, localhost.Addr()),
		"with the firewall, a1 does not reach the host's 127.0.0.1")
	assert.Zero(t, ruleCount(t, f))
}

// BenchmarkPortsAddRemove publishes and withdraws one port, with none and
// with 1,000 others published: the cost should not grow with them.
func BenchmarkPortsAddRemove(b *testing.B) {
	for _, present := range []int{0, 1000} {
		b.Run(fmt.Sprintf("present=%d", present), func(b *testing.B) {
			ctx := context.Background()
			fd := newNS(b)
			f := openFirewall(b, fd)
			require.NoError(b, f.AddPorts(ctx, manyPorts("n1", "br-a", present, 10000)...))
			p := Port{NetworkID: "n1", Bridge: "br-a", Proto: "tcp", HostIP: netip.IPv4Unspecified(), HostPort: 9000,
				ContainerIP: netip.MustParseAddr("198.18.9.9"), ContainerPort: 80}
			for b.Loop() {
				if err := f.AddPorts(ctx, p); err != nil {
					b.Fatal(err)
				}
				if err := f.RemovePorts(ctx, p); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			require.NoError(b, f.SetPorts(ctx))
		})
	}
}

// BenchmarkPortsConnect opens TCP connections from outside to the first and
// to the 1,000th of 1,000 published ports (all to a1): with a map lookup
// per packet, the rate is the same.
func BenchmarkPortsConnect(b *testing.B) {
	ctx := context.Background()
	tp := newTopology(b)
	f := openFirewall(b, tp.host)
	a, _ := networks()
	require.NoError(b, f.AddNetwork(ctx, a))
	ports := manyPorts("A", "brA", 1000, 10000)
	for i := range ports {
		ports[i].ContainerIP, ports[i].ContainerPort = v4.a1, testPort
	}
	require.NoError(b, f.AddPorts(ctx, ports...))
	for _, bc := range []struct {
		name string
		port uint16
	}{{"1st", ports[0].HostPort}, {"1000th", ports[999].HostPort}} {
		b.Run(bc.name, func(b *testing.B) {
			to := netip.AddrPortFrom(v4.up, bc.port).String()
			// One thread in the outside namespace dials them all.
			err := inNS(tp.ext, func() error {
				d := net.Dialer{Timeout: okTimeout}
				for b.Loop() {
					c, err := d.Dial("tcp", to)
					if err != nil {
						return err
					}
					// Reset, not close: no TIME_WAIT to run out of ports.
					_ = c.(*net.TCPConn).SetLinger(0)
					_ = c.Close()
				}
				return nil
			})
			require.NoError(b, err)
		})
	}
	b.StopTimer()
	require.NoError(b, f.RemoveNetwork(ctx, "A"))
}
