package overlay

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/acceptloop"
	"github.com/seed53641549/cnm/osl"
)

// These tests make two "hosts": two namespaces joined by a veth pair, the
// underlay (ul0, 192.0.2.1/24 and 192.0.2.2/24), each with its own driver.
// Every kernel object is made inside namespaces the test made, and every
// packet travels between them.

// testHost is one host of the test cluster.
type testHost struct {
	ns     *osl.Namespace
	vtep   netip.Addr
	runDir string
	d      *Driver
}

// newHosts makes two hosts whose underlay link has MTU ulMTU.
func newHosts(t testing.TB, ulMTU int) (*testHost, *testHost) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces and links")
	}
	ctx := context.Background()
	dir := t.TempDir()
	var hosts [2]*testHost
	for i := range hosts {
		ns, err := osl.NewNamespace(ctx, filepath.Join(dir, fmt.Sprintf("host%d", i+1)))
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, ns.Delete()) })
		hosts[i] = &testHost{ns: ns, vtep: netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), runDir: filepath.Join(dir, fmt.Sprintf("run%d", i+1))}
	}
	h1, h2 := hosts[0], hosts[1]
	// A test that fails halfway leaves network namespaces mounted in the
	// run dirs: unmount them before the temporary directory goes.
	t.Cleanup(func() {
		for _, h := range hosts {
			entries, _ := os.ReadDir(h.runDir)
			for _, e := range entries {
				_ = osl.RemoveNamespaceFile(filepath.Join(h.runDir, e.Name()))
			}
		}
	})
	require.NoError(t, h1.ns.AddVeth(ctx, osl.VethSpec{HostName: "ul0", PeerName: "ul0", PeerNS: h2.ns, MTU: ulMTU}))
	for _, h := range hosts {
		l, err := h.ns.LinkByName(ctx, "ul0")
		require.NoError(t, err)
		require.NoError(t, h.ns.AddAddress(ctx, l.Index, netip.PrefixFrom(h.vtep, 24)))
		require.NoError(t, h.ns.LinkUp(ctx, l.Index, false))
		d, err := New(Config{HostNS: h.ns, AdvertiseAddress: h.vtep, RunDir: h.runDir})
		require.NoError(t, err)
		h.d = d
	}
	return h1, h2
}

// testNet is an overlay network's request.
func testNet(id string, vni uint32, subnet string) driverapi.NetworkRequest {
	p := netip.MustParsePrefix(subnet)
	return driverapi.NetworkRequest{
		ID:      id,
		Options: map[string]string{OptionVNI: fmt.Sprint(vni)},
		IPv4:    &driverapi.IPAMData{Pool: p, Gateway: netip.PrefixFrom(p.Addr().Next(), p.Bits())},
	}
}

// testEP is an endpoint joined to a sandbox of its own.
type testEP struct {
	h   *testHost
	nid string
	id  string
	sb  *osl.Namespace
	ip  netip.Prefix
	mac net.HardwareAddr
}

// join makes a sandbox on h, an endpoint of network nid with ip and mac,
// joins it and configures eth0 as the controller would (address, up).
func join(t testing.TB, h *testHost, nid, id, ip, mac string) *testEP {
	t.Helper()
	ep, err := joinE(t, h, nid, id, ip, mac)
	require.NoError(t, err)
	return ep
}

// joinE is join for other goroutines than the test's: it reports errors.
func joinE(t testing.TB, h *testHost, nid, id, ip, mac string) (*testEP, error) {
	ctx := context.Background()
	sb, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "sb-"+id))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = sb.Delete() })
	ep := &testEP{h: h, nid: nid, id: id, sb: sb, ip: netip.MustParsePrefix(ip), mac: mustMAC(mac)}
	if err := h.d.CreateEndpoint(ctx, driverapi.EndpointRequest{NetworkID: nid, EndpointID: id, MAC: ep.mac, IPv4: ep.ip}); err != nil {
		return nil, err
	}
	if _, err := h.d.Join(ctx, driverapi.JoinRequest{NetworkID: nid, EndpointID: id, Sandbox: sb, InterfaceName: "eth0", MAC: ep.mac, IPv4: ep.ip}); err != nil {
		return nil, err
	}
	l, err := sb.LinkByName(ctx, "eth0")
	if err != nil {
		return nil, err
	}
	if err := sb.AddAddress(ctx, l.Index, ep.ip); err != nil {
		return nil, err
	}
	return ep, sb.LinkUp(ctx, l.Index, false)
}

// leaveE is leave for other goroutines than the test's.
func (ep *testEP) leaveE() error {
	ctx := context.Background()
	if err := ep.h.d.Leave(ctx, driverapi.LeaveRequest{NetworkID: ep.nid, EndpointID: ep.id, Sandbox: ep.sb}); err != nil {
		return err
	}
	if err := ep.h.d.DeleteEndpoint(ctx, ep.nid, ep.id); err != nil {
		return err
	}
	return ep.sb.Delete()
}

// peer returns ep as a peer for other hosts.
func (ep *testEP) peer() Peer {
	return Peer{NetworkID: ep.nid, IP: ep.ip.Addr(), MAC: ep.mac, VTEP: ep.h.vtep}
}

// leave undoes join on the driver's side and deletes the sandbox.
func (ep *testEP) leave(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, ep.h.d.Leave(ctx, driverapi.LeaveRequest{NetworkID: ep.nid, EndpointID: ep.id, Sandbox: ep.sb}))
	require.NoError(t, ep.h.d.DeleteEndpoint(ctx, ep.nid, ep.id))
	assert.Equal(t, []string{"lo"}, sandboxLinks(t, ep.sb), "eth0 is gone when Leave returns")
	require.NoError(t, ep.sb.Delete())
}

// serve listens on port inside ns and answers every connection with name.
func serve(t testing.TB, ns *osl.Namespace, port int, name string) {
	t.Helper()
	serveConns(t, ns, port, func(c net.Conn) { _, _ = c.Write([]byte(name)) })
}

// serveConns listens on port inside ns until the test ends and serves each
// connection with handle (acceptloop.Run). (cnmtest.Serve does this for
// the root package; it cannot be imported here: cnmtest imports cnm, which
// imports this driver.)
func serveConns(t testing.TB, ns *osl.Namespace, port int, handle func(net.Conn)) {
	t.Helper()
	var l net.Listener
	require.NoError(t, ns.Do(func() (err error) {
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}))
	t.Cleanup(func() { l.Close() })
	go acceptloop.Run(l, handle)
}

// ask connects from ns to to and returns what the server said.
func ask(ns *osl.Namespace, to netip.AddrPort, timeout time.Duration) (string, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", to.String(), timeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

// assertClean checks that h holds nothing of the driver's: no link but lo
// and ul0, no namespace file or mount under its run dir.
func assertClean(t testing.TB, h *testHost) {
	t.Helper()
	links, err := h.ns.Links(context.Background())
	require.NoError(t, err)
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	slices.Sort(names)
	assert.Equal(t, []string{"lo", "ul0"}, names, "links left in host namespace %s", h.ns)
	entries, _ := os.ReadDir(h.runDir)
	for _, e := range entries {
		t.Errorf("left in run dir: %s", e.Name())
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], h.runDir+"/") {
			t.Errorf("mount left: %s", f[4])
		}
	}
}

// sandboxLinks returns the names of the links in ns.
func sandboxLinks(t testing.TB, ns *osl.Namespace) []string {
	t.Helper()
	links, err := ns.Links(context.Background())
	require.NoError(t, err)
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	slices.Sort(names)
	return names
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}
