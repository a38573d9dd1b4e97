package cnm_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/osl"
)

func lookup(t *testing.T, r *net.Resolver, name string) ([]netip.Addr, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return r.LookupNetIP(ctx, "ip", name)
}

func TestDiscoveryNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	front, err := ctrl.NewNetwork(ctx, "bridge", "front", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.120.0.0/24")}),
		cnm.WithIPv6(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("fd20::/64")}))
	require.NoError(t, err)
	back, err := ctrl.NewNetwork(ctx, "bridge", "back", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.121.0.0/24")}))
	require.NoError(t, err)

	web, err := ctrl.NewSandbox(ctx, "web", cnm.WithHostname("webhost"))
	require.NoError(t, err)
	epWeb, err := front.CreateEndpoint(ctx, "web", cnm.WithAliases("www"))
	require.NoError(t, err)
	require.NoError(t, epWeb.Join(ctx, web))
	epWebBack, err := back.CreateEndpoint(ctx, "web-back", cnm.WithAliases("web"))
	require.NoError(t, err)
	require.NoError(t, epWebBack.Join(ctx, web))
	// Upstream 127.0.0.1 inside the sandboxes refuses at once: names that
	// are not local fail fast instead of waiting for a timeout.
	noUpstream := cnm.WithDNS(netip.MustParseAddr("127.0.0.1"))
	client, err := ctrl.NewSandbox(ctx, "client", noUpstream)
	require.NoError(t, err)
	epClient, err := front.CreateEndpoint(ctx, "client")
	require.NoError(t, err)
	require.NoError(t, epClient.Join(ctx, client))
	client2, err := ctrl.NewSandbox(ctx, "client2", noUpstream)
	require.NoError(t, err)
	ep2, err := front.CreateEndpoint(ctx, "client2")
	require.NoError(t, err)
	require.NoError(t, ep2.Join(ctx, client2))
	ep2b, err := back.CreateEndpoint(ctx, "client2-back")
	require.NoError(t, err)
	require.NoError(t, ep2b.Join(ctx, client2))
	other, err := ctrl.NewSandbox(ctx, "other", noUpstream)
	require.NoError(t, err)
	epOther, err := back.CreateEndpoint(ctx, "other")
	require.NoError(t, err)
	require.NoError(t, epOther.Join(ctx, other))

	resolv, err := os.ReadFile(client.ResolvConfPath())
	require.NoError(t, err)
	assert.Contains(t, string(resolv), "nameserver 127.0.0.11")
	assert.Contains(t, string(resolv), "options ndots:0")

	r := cnmtest.Resolver(client.Key())
	v4, v6 := epWeb.Info().IPv4.Addr(), epWeb.Info().IPv6.Addr()
	for _, name := range []string{"web", "WEB", "www", "webhost", "web."} {
		got, err := lookup(t, r, name)
		require.NoError(t, err, name)
		assert.ElementsMatch(t, []netip.Addr{v4, v6}, got, "%s: its addresses on the shared network only", name)
	}
	names, err := r.LookupAddr(ctx, v4.String())
	require.NoError(t, err, "PTR")
	assert.Contains(t, names, "web.")

	// A name on two shared networks answers both addresses.
	got, err := lookup(t, cnmtest.Resolver(client2.Key()), "web")
	require.NoError(t, err)
	assert.ElementsMatch(t, []netip.Addr{v4, v6, epWebBack.Info().IPv4.Addr()}, got)

	// No answer leaks across networks: client shares nothing with other.
	_, err = lookup(t, r, "other")
	assert.Error(t, err, "a container on another network does not resolve")
	_, err = lookup(t, cnmtest.Resolver(other.Key()), "client")
	assert.Error(t, err)

	// Names go with a leave.
	require.NoError(t, epWeb.Leave(ctx, web))
	_, err = lookup(t, r, "www")
	assert.Error(t, err, "an alias goes when its endpoint leaves")
	deleteAll(t, ctrl)
	cnmtest.AssertNoLeaks(t, host)
}

// fakeUpstream serves example.test. A 203.0.113.9 on addr:53 inside ns.
func fakeUpstream(t *testing.T, ns *osl.Namespace, addr netip.Addr) {
	t.Helper()
	var pc net.PacketConn
	require.NoError(t, ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(addr, 53).String())
		return err
	}))
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Name == "example.test." && q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.ParseIP("203.0.113.9")})
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
}

func TestDiscoveryForwardsOtherNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newPortLab(t)
	fakeUpstream(t, l.outside, l.outIP)
	sb, err := l.ctrl.NewSandbox(ctx, "c", cnm.WithDNS(l.outIP))
	require.NoError(t, err)
	ep, err := l.nw.CreateEndpoint(ctx, "c")
	require.NoError(t, err)
	require.NoError(t, ep.Join(ctx, sb))
	got, err := lookup(t, cnmtest.Resolver(sb.Key()), "example.test")
	require.NoError(t, err, "forwarded to the upstream in the outside namespace")
	assert.Equal(t, []netip.Addr{netip.MustParseAddr("203.0.113.9")}, got)

	// An internal network's sandbox does not forward.
	internal, err := l.ctrl.NewNetwork(ctx, "bridge", "internal", cnm.WithInternal(),
		cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.122.0.0/24")}))
	require.NoError(t, err)
	isb, err := l.ctrl.NewSandbox(ctx, "i", cnm.WithDNS(l.outIP))
	require.NoError(t, err)
	iep, err := internal.CreateEndpoint(ctx, "i")
	require.NoError(t, err)
	require.NoError(t, iep.Join(ctx, isb))
	_, err = lookup(t, cnmtest.Resolver(isb.Key()), "example.test")
	assert.Error(t, err, "internal networks do not forward")
	got, err = lookup(t, cnmtest.Resolver(isb.Key()), "i")
	require.NoError(t, err, "but answer their own names")
	assert.Equal(t, []netip.Addr{iep.Info().IPv4.Addr()}, got)
	deleteAll(t, l.ctrl)
	cnmtest.AssertNoLeaks(t, l.host, "up0")
}

// The names come back after a restart.
func TestDiscoveryAcrossRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t)
	nw, err := ctrl.NewNetwork(ctx, "bridge", "n", cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.123.0.0/24")}))
	require.NoError(t, err)
	a, epA := container(t, nw, "a")
	_, _ = container(t, nw, "b")
	require.NoError(t, ctrl.Close())
	ctrl2 := reopen(t, host)
	got, err := lookup(t, cnmtest.Resolver(a.Key()), "b")
	require.NoError(t, err)
	require.Len(t, got, 1)
	got, err = lookup(t, cnmtest.Resolver(a.Key()), "a")
	require.NoError(t, err)
	assert.Equal(t, []netip.Addr{epA.Info().IPv4.Addr()}, got)
	deleteAll(t, ctrl2)
	cnmtest.AssertNoLeaks(t, host)
}
