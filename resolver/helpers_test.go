package resolver_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/resolver"
)

// The tests run servers, clients and fake upstreams in throwaway network
// namespaces made in t.TempDir(): a "sandbox" namespace where the resolver
// listens and the clients ask, and an "outside" namespace behind a veth
// and a default route, where the fake upstreams listen on addresses of
// their own loopback. No test sends a packet beyond those namespaces.

var (
	sbAddr = netip.MustParsePrefix("10.99.0.2/24") // the sandbox's end of the veth
	gwAddr = netip.MustParsePrefix("10.99.0.1/24") // the outside end, the sandbox's gateway
	// Upstream addresses, on the outside namespace's loopback (TEST-NET-2),
	// reached through the sandbox's default route.
	up1 = netip.MustParseAddr("198.51.100.1")
	up2 = netip.MustParseAddr("198.51.100.2")
	up3 = netip.MustParseAddr("198.51.100.3")
)

// newNS makes a throwaway network namespace (loopback up) and deletes it
// when the test ends. It skips the test unless run as root.
func newNS(t testing.TB) *osl.Namespace {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces")
	}
	ns, err := osl.NewNamespace(context.Background(), filepath.Join(t.TempDir(), "netns"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = ns.Delete() })
	return ns
}

// world is a sandbox namespace with a route to an outside namespace.
type world struct {
	sb, out *osl.Namespace
}

// newWorld makes the sandbox and outside namespaces, a veth between them,
// the sandbox's default route through it, and the upstream addresses on
// the outside's loopback.
func newWorld(t testing.TB) *world {
	t.Helper()
	ctx := context.Background()
	w := &world{sb: newNS(t), out: newNS(t)}
	require.NoError(t, w.sb.AddVeth(ctx, osl.VethSpec{HostName: "eth0", PeerName: "up0", PeerNS: w.out}))
	eth0, err := w.sb.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	up0, err := w.out.LinkByName(ctx, "up0")
	require.NoError(t, err)
	require.NoError(t, w.out.SetLinkUp(ctx, up0.Index))
	require.NoError(t, w.sb.AddAddress(ctx, eth0.Index, sbAddr))
	require.NoError(t, w.out.AddAddress(ctx, up0.Index, gwAddr))
	require.NoError(t, w.sb.AddRoute(ctx, osl.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: gwAddr.Addr(), LinkIndex: eth0.Index}))
	for _, a := range []netip.Addr{up1, up2, up3} {
		require.NoError(t, w.out.AddAddress(ctx, 1, netip.PrefixFrom(a, 32)))
	}
	return w
}

// names is a fixed Names.
type names struct {
	v4, v6 map[string][]netip.Addr
	rev    map[netip.Addr][]string
}

func (n *names) Lookup(name string, ipv6 bool) ([]netip.Addr, bool) {
	a4, ok4 := n.v4[name]
	a6, ok6 := n.v6[name]
	if ipv6 {
		return a6, ok4 || ok6
	}
	return a4, ok4 || ok6
}

func (n *names) Reverse(a netip.Addr) ([]string, bool) {
	h, ok := n.rev[a]
	return h, ok
}

// testNames: web has an IPv4 and an IPv6 address; db has two IPv4
// addresses (two shared networks) and no IPv6 one.
func testNames() *names {
	return &names{
		v4: map[string][]netip.Addr{
			"web":          {netip.MustParseAddr("172.18.0.2")},
			"db":           {netip.MustParseAddr("172.18.0.3"), netip.MustParseAddr("172.19.0.3")},
			"web.frontend": {netip.MustParseAddr("172.18.0.2")},
		},
		v6: map[string][]netip.Addr{
			"web": {netip.MustParseAddr("fd00::2")},
		},
		rev: map[netip.Addr][]string{
			netip.MustParseAddr("172.18.0.2"): {"web", "web.frontend"},
			netip.MustParseAddr("fd00::2"):    {"web"},
		},
	}
}

// start starts a resolver in ns and closes it when the test ends.
func start(t testing.TB, ns *osl.Namespace, cfg resolver.Config) *resolver.Server {
	t.Helper()
	s, err := resolver.Start(ns, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// dialIn opens a socket to addr from inside ns.
func dialIn(t testing.TB, ns *osl.Namespace, network string, addr netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	require.NoError(t, ns.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, addr.String(), 5*time.Second)
		return err
	}))
	t.Cleanup(func() { c.Close() })
	return c
}

var resolverAddr = netip.AddrPortFrom(resolver.Addr, 53)

// ask sends m to addr from inside ns over network ("udp" or "tcp") and
// returns the answer.
func ask(t testing.TB, ns *osl.Namespace, network string, addr netip.AddrPort, m *dns.Msg) *dns.Msg {
	t.Helper()
	r, err := exchange(t, ns, network, addr, m, 5*time.Second)
	require.NoError(t, err)
	return r
}

func exchange(t testing.TB, ns *osl.Namespace, network string, addr netip.AddrPort, m *dns.Msg, timeout time.Duration) (*dns.Msg, error) {
	t.Helper()
	c := &dns.Conn{Conn: dialIn(t, ns, network, addr), UDPSize: 65535}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if err := c.WriteMsg(m); err != nil {
		return nil, err
	}
	for {
		r, err := c.ReadMsg()
		if err != nil || r.Id == m.Id {
			return r, err
		}
	}
}

// question returns a query for name and type, with RD set.
func question(name string, t uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, t)
	return m
}

// goResolver is Go's own resolver, asking the resolver from inside ns.
func goResolver(ns *osl.Namespace) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, resolverAddr.String())
			return err
		})
		return c, err
	}}
}

// upstream is a fake upstream DNS server (miekg/dns) in the outside
// namespace, UDP and TCP on one address.
type upstream struct {
	addr    netip.AddrPort
	udpSeen atomic.Int64
	tcpSeen atomic.Int64

	mu   sync.Mutex
	last *dns.Msg // the last query, as it arrived
}

// handler answers one query; a nil answer means: never answer (over TCP
// the connection stays open, waiting for the next query).
type handler func(q *dns.Msg, tcp bool) []byte

// newUpstream starts a fake upstream on addr:53 inside ns, answering with h.
func newUpstream(t testing.TB, ns *osl.Namespace, addr netip.Addr, h handler) *upstream {
	t.Helper()
	return newUpstreamW(t, ns, addr, func(w dns.ResponseWriter, q *dns.Msg, tcp bool) {
		if b := h(q, tcp); b != nil {
			_, _ = w.Write(b)
		}
	})
}

// newUpstreamW starts a fake upstream on addr:53 inside ns that answers
// through w itself.
func newUpstreamW(t testing.TB, ns *osl.Namespace, addr netip.Addr, h func(w dns.ResponseWriter, q *dns.Msg, tcp bool)) *upstream {
	t.Helper()
	u := &upstream{addr: netip.AddrPortFrom(addr, 53)}
	var pc net.PacketConn
	var l net.Listener
	require.NoError(t, ns.Do(func() error {
		var err error
		if pc, err = net.ListenPacket("udp", u.addr.String()); err != nil {
			return err
		}
		l, err = net.Listen("tcp", u.addr.String())
		return err
	}))
	serve := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		_, tcp := w.RemoteAddr().(*net.TCPAddr)
		if tcp {
			u.tcpSeen.Add(1)
		} else {
			u.udpSeen.Add(1)
		}
		u.mu.Lock()
		u.last = q.Copy()
		u.mu.Unlock()
		h(w, q, tcp)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: serve}, {Listener: l, Handler: serve}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

func (u *upstream) lastQuery() *dns.Msg {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

// answer returns a handler that answers every A query with addr, packed
// with compression.
func answer(addr string) handler {
	return func(q *dns.Msg, tcp bool) []byte {
		r := new(dns.Msg)
		r.SetReply(q)
		r.RecursionAvailable = true
		r.Compress = true
		if q.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Question[0].Name + " 30 IN A " + addr)
			r.Answer = append(r.Answer, rr)
		}
		b, _ := r.Pack()
		return b
	}
}

// never is a handler that never answers.
func never(*dns.Msg, bool) []byte { return nil }

// waitGoroutines waits until the number of goroutines is back to at most
// n, and fails the test with a dump if it is not within a few seconds.
func waitGoroutines(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d, want at most %d\n%s", runtime.NumGoroutine(), n, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rrStrings renders the answer section, one record per string.
func rrStrings(m *dns.Msg) []string {
	var s []string
	for _, rr := range m.Answer {
		s = append(s, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	return s
}
