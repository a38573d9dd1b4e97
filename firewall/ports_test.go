//go:build linux

package firewall

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
)

// testPorts returns one port of each kind of network n1 on br-a: TCP, UDP
// and SCTP, IPv4 and IPv6, on a specific host address and on every one.
func testPorts() []Port {
	p := func(proto, host string, hostPort uint16, ctr string, ctrPort uint16) Port {
		return Port{NetworkID: "n1", Bridge: "br-a", Proto: proto,
			HostIP: ip(host), HostPort: hostPort, ContainerIP: ip(ctr), ContainerPort: ctrPort}
	}
	return []Port{
		p("tcp", "0.0.0.0", 8080, "198.18.1.2", 80),
		p("udp", "0.0.0.0", 5353, "198.18.1.2", 53),
		p("tcp", "198.19.0.1", 8443, "198.18.1.3", 443),
		p("sctp", "198.19.0.1", 9999, "198.18.1.3", 9999),
		p("tcp", "127.0.0.1", 8081, "198.18.1.2", 81),
		p("tcp", "::", 8080, "2001:db8:1::2", 80),
		p("udp", "2001:db8:ff::1", 5353, "2001:db8:1::3", 53),
	}
}

// sorted returns ports in the order Ports returns them.
func sorted(ports []Port) []Port {
	out := slices.Clone(ports)
	slices.SortFunc(out, func(a, b Port) int {
		return cmp.Or(strings.Compare(a.Proto, b.Proto), a.HostIP.Compare(b.HostIP), cmp.Compare(a.HostPort, b.HostPort))
	})
	return out
}

func listPorts(t testing.TB, f *Firewall) []Port {
	t.Helper()
	ports, err := f.Ports(context.Background())
	require.NoError(t, err)
	return ports
}

// TestPortsRules reads the maps and rules back from the kernel and compares
// them with a golden file, and Ports with what was added; removing the
// ports and the network leaves the empty table.
func TestPortsRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	require.NoError(t, f.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24", "2001:db8:1::/64")))
	networkRules := ruleCount(t, f)
	ports := testPorts()
	require.NoError(t, f.AddPorts(ctx, ports...))
	checkGolden(t, "ports", dump(t, fd, "cnm"))
	assert.Equal(t, sorted(ports), listPorts(t, f))
	assert.Equal(t, networkRules+len(ports), ruleCount(t, f), "one element per port")

	require.NoError(t, f.RemovePorts(ctx, ports...))
	assert.Empty(t, listPorts(t, f))
	require.NoError(t, f.RemoveNetwork(ctx, "n1"))
	assert.Zero(t, ruleCount(t, f))
	checkGolden(t, "empty", dump(t, fd, "cnm"))
}

func TestPortsInvalid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	ok := testPorts()[0]
	with := func(mod func(*Port)) Port {
		p := ok
		mod(&p)
		return p
	}
	for _, tc := range []struct {
		name    string
		p       Port
		mention string
		keyOnly bool // RemovePorts refuses it too
	}{
		{"protocol", with(func(p *Port) { p.Proto = "icmp" }), `protocol "icmp"`, true},
		{"upper-case protocol", with(func(p *Port) { p.Proto = "TCP" }), `protocol "TCP"`, true},
		{"no host ip", with(func(p *Port) { p.HostIP = netip.Addr{} }), "host ip invalid IP", true},
		{"mapped host ip", with(func(p *Port) { p.HostIP = ip("::ffff:198.19.0.1") }), "host ip ::ffff:198.19.0.1", true},
		{"zone", with(func(p *Port) { p.HostIP = ip("fe80::1%eth0") }), "host ip fe80::1%eth0", true},
		{"ipv6 loopback", with(func(p *Port) { p.HostIP = netip.IPv6Loopback(); p.ContainerIP = ip("2001:db8:1::2") }), "host ip ::1", true},
		{"host port 0", with(func(p *Port) { p.HostPort = 0 }), "host port 0", true},
		{"network id", with(func(p *Port) { p.NetworkID = "a b" }), `network id "a b"`, false},
		{"no network id", with(func(p *Port) { p.NetworkID = "" }), `network id ""`, false},
		{"bridge", with(func(p *Port) { p.Bridge = "br/a" }), `bridge "br/a"`, false},
		{"no bridge", with(func(p *Port) { p.Bridge = "" }), `bridge ""`, false},
		{"no container ip", with(func(p *Port) { p.ContainerIP = netip.Addr{} }), "container ip invalid IP", false},
		{"family", with(func(p *Port) { p.ContainerIP = ip("2001:db8:1::2") }), "container ip 2001:db8:1::2: not of the host ip's family", false},
		{"unspecified container ip", with(func(p *Port) { p.ContainerIP = netip.IPv4Unspecified() }), "container ip 0.0.0.0", false},
		{"container port 0", with(func(p *Port) { p.ContainerPort = 0 }), "container port 0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for name, call := range map[string]func(...Port) error{
				"AddPorts": func(p ...Port) error { return f.AddPorts(ctx, p...) },
				"SetPorts": func(p ...Port) error { return f.SetPorts(ctx, p...) },
			} {
				err := call(testPorts()[1], tc.p)
				require.ErrorIs(t, err, errdefs.ErrInvalid, name)
				assert.ErrorContains(t, err, tc.mention, name)
			}
			err := f.RemovePorts(ctx, tc.p)
			if tc.keyOnly {
				require.ErrorIs(t, err, errdefs.ErrInvalid)
				assert.ErrorContains(t, err, tc.mention)
			} else {
				require.NoError(t, err, "RemovePorts needs the key only")
			}
			assert.Zero(t, ruleCount(t, f))
		})
	}

	// One host port twice in a batch, even to the same place.
	other := ok
	other.ContainerPort++
	for _, batch := range [][]Port{{ok, other}, {ok, ok}} {
		err := f.AddPorts(ctx, batch...)
		require.ErrorIs(t, err, errdefs.ErrInvalid)
		assert.ErrorContains(t, err, "host port tcp 0.0.0.0:8080 listed twice")
		require.ErrorIs(t, f.SetPorts(ctx, batch...), errdefs.ErrInvalid)
	}
	assert.Zero(t, ruleCount(t, f))
	require.NoError(t, f.RemovePorts(ctx, ok, ok), "removing a port twice in one batch")
}

// TestAddPortsAtomic checks that a batch that the kernel refuses for one
// element (its host port is published to elsewhere already) adds none of
// the others, also when it spans several netlink messages.
func TestAddPortsAtomic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	first := Port{NetworkID: "n1", Bridge: "br-a", Proto: "tcp",
		HostIP: ip("0.0.0.0"), HostPort: 8080, ContainerIP: ip("198.18.1.2"), ContainerPort: 80}
	require.NoError(t, f.AddPorts(ctx, first))
	before := dump(t, fd, "cnm")

	clash := first
	clash.NetworkID, clash.ContainerIP = "n2", ip("198.18.2.2")
	for _, size := range []int{3, 3 * elementsPerMessage} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			batch := manyPorts("n2", "br-b", size-1, 20000)
			batch = append(batch[:size/2], append([]Port{clash}, batch[size/2:]...)...)
			err := f.AddPorts(ctx, batch...)
			require.ErrorIs(t, err, errdefs.ErrExists)
			assert.ErrorContains(t, err, "host port tcp 0.0.0.0:8080 is published already, to 198.18.1.2:80 (network n1)")
			assert.Equal(t, before, dump(t, fd, "cnm"), "a failed batch changed the table")
		})
	}

	// The same port again, exactly so, is no change; the connection works
	// after the failures.
	require.NoError(t, f.AddPorts(ctx, first))
	assert.Equal(t, []Port{first}, listPorts(t, f))
	require.NoError(t, f.RemovePorts(ctx, first))
	assert.Zero(t, ruleCount(t, f))
}

// manyPorts returns n TCP ports on every IPv4 address, host ports from
// base on, to n containers of network id on bridge.
func manyPorts(id, bridge string, n int, base uint16) []Port {
	ports := make([]Port, n)
	for i := range ports {
		ports[i] = Port{NetworkID: id, Bridge: bridge, Proto: "tcp", HostIP: netip.IPv4Unspecified(), HostPort: base + uint16(i),
			ContainerIP: netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(2 + i%250)}), ContainerPort: 80}
	}
	return ports
}

// TestPortsThousand publishes 1,000 ports in one batch and one by one, and
// removes them the same ways: nothing is left.
func TestPortsThousand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	require.NoError(t, f.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.0.0/16")))
	networkRules := ruleCount(t, f)
	want := dump(t, fd, "cnm")
	ports := manyPorts("n1", "br-a", 1000, 10000)

	require.NoError(t, f.AddPorts(ctx, ports...))
	assert.Equal(t, networkRules+1000, ruleCount(t, f))
	assert.Equal(t, ports, listPorts(t, f))
	require.NoError(t, f.RemovePorts(ctx, ports...))
	assert.Equal(t, want, dump(t, fd, "cnm"))

	for _, p := range ports {
		require.NoError(t, f.AddPorts(ctx, p))
	}
	assert.Equal(t, networkRules+1000, ruleCount(t, f))
	for _, p := range ports {
		require.NoError(t, f.RemovePorts(ctx, p))
	}
	assert.Equal(t, want, dump(t, fd, "cnm"))

	require.NoError(t, f.AddPorts(ctx, ports...))
	require.NoError(t, f.RemoveNetwork(ctx, "n1"), "removing the network removes its ports")
	assert.Zero(t, ruleCount(t, f))
	checkGolden(t, "empty", dump(t, fd, "cnm"))
}

// TestRemovePortsIdempotent removes ports that are not there, alone and
// with ones that are.
func TestRemovePortsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	ports := testPorts()
	require.NoError(t, f.RemovePorts(ctx, ports...), "nothing published")
	require.NoError(t, f.AddPorts(ctx, ports[:3]...))
	require.NoError(t, f.RemovePorts(ctx, ports[1:]...), "some published")
	assert.Equal(t, []Port{ports[0]}, listPorts(t, f))

	// Found by the key alone.
	key := Port{Proto: ports[0].Proto, HostIP: ports[0].HostIP, HostPort: ports[0].HostPort}
	require.NoError(t, f.RemovePorts(ctx, key))
	require.NoError(t, f.RemovePorts(ctx, key), "second removal")
	assert.Zero(t, ruleCount(t, f))
	require.NoError(t, f.RemovePorts(ctx), "no ports")
}

// TestSetPorts replaces the whole set, and nothing when the batch fails.
func TestSetPorts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	ports := testPorts()
	require.NoError(t, f.SetPorts(ctx, ports[:4]...))
	assert.Equal(t, sorted(ports[:4]), listPorts(t, f))
	moved := ports[2]
	moved.ContainerIP = ip("198.18.1.9")
	require.NoError(t, f.SetPorts(ctx, append([]Port{moved}, ports[3:]...)...))
	assert.Equal(t, sorted(append([]Port{moved}, ports[3:]...)), listPorts(t, f))

	// A batch the kernel refuses (a map is gone) changes nothing.
	before := dump(t, fd, "cnm")
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	require.NoError(t, err)
	c.DelTable(f.table)
	require.NoError(t, c.Flush())
	require.Error(t, f.SetPorts(ctx, ports...))
	f2, err := New(ctx, fd, "cnm") // makes the table again, empty
	require.NoError(t, err)
	require.NoError(t, f2.Close())
	assert.Empty(t, listPorts(t, f))
	require.NoError(t, f.SetPorts(ctx, append([]Port{moved}, ports[3:]...)...))
	assert.Equal(t, before, dump(t, fd, "cnm"))

	require.NoError(t, f.SetPorts(ctx))
	assert.Zero(t, ruleCount(t, f))
}

// TestPortsAfterRestart: a new Firewall on the table finds the ports with
// their network and bridge, NetworkIDs names the networks of ports, and
// RemoveNetwork removes a network's ports only.
func TestPortsAfterRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f1, err := New(ctx, fd, "cnm")
	require.NoError(t, err)
	ports := testPorts()
	long := Port{NetworkID: strings.Repeat("n", maxIDLen), Bridge: "br-0123456789ab", Proto: "udp",
		HostIP: ip("2001:db8:ff::1"), HostPort: 65535, ContainerIP: ip("2001:db8:2::2"), ContainerPort: 65535}
	require.NoError(t, f1.AddPorts(ctx, append(ports, long)...))
	require.NoError(t, f1.Close())

	f := openFirewall(t, fd)
	assert.Equal(t, sorted(append(ports, long)), listPorts(t, f))
	ids, err := f.NetworkIDs(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"n1", long.NetworkID}, ids)

	require.NoError(t, f.RemoveNetwork(ctx, "n1"))
	assert.Equal(t, []Port{long}, listPorts(t, f))
	require.NoError(t, f.RemoveNetwork(ctx, long.NetworkID))
	assert.Zero(t, ruleCount(t, f))
}

func TestPortsClosedAndDeleted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f, err := New(ctx, fd, "cnm")
	require.NoError(t, err)
	p := testPorts()[0]
	require.NoError(t, f.Delete(ctx))
	require.ErrorIs(t, f.AddPorts(ctx, p), errdefs.ErrNotFound)
	require.ErrorIs(t, f.SetPorts(ctx, p), errdefs.ErrNotFound)
	require.NoError(t, f.RemovePorts(ctx, p))
	n, err := CountRules(ctx, fd, "cnm")
	require.NoError(t, err, "count without a table")
	assert.Zero(t, n)
	require.NoError(t, f.Close())
	require.ErrorIs(t, f.AddPorts(ctx, p), net.ErrClosed)
	require.ErrorIs(t, f.RemovePorts(ctx, p), net.ErrClosed)
	_, err = f.Ports(ctx)
	require.ErrorIs(t, err, net.ErrClosed)

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, f.AddPorts(canceled, p), context.Canceled)
	assertNoTables(t, fd)
}
