package resolver_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/resolver"
)

// TestLocalNames resolves local names from inside the sandbox with Go's
// own resolver: both families, a name with two addresses, case variants.
func TestLocalNames(t *testing.T) {
	ns := newNS(t)
	start(t, ns, resolver.Config{Names: testNames()})
	r := goResolver(ns)
	ctx := context.Background()

	for _, tc := range []struct {
		name, network string
		want          []string
	}{
		{"web.", "ip", []string{"172.18.0.2", "fd00::2"}},
		{"WEB.", "ip", []string{"172.18.0.2", "fd00::2"}},
		{"wEb.FrontEnd.", "ip4", []string{"172.18.0.2"}},
		{"web.", "ip6", []string{"fd00::2"}},
		{"db.", "ip4", []string{"172.18.0.3", "172.19.0.3"}},
		{"db.", "ip", []string{"172.18.0.3", "172.19.0.3"}}, // AAAA: NOERROR, no answer
	} {
		t.Run(tc.name+tc.network, func(t *testing.T) {
			addrs, err := r.LookupNetIP(ctx, tc.network, tc.name)
			require.NoError(t, err)
			var got []string
			for _, a := range addrs {
				got = append(got, a.String())
			}
			slices.Sort(got)
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestLocalAnswers checks the answers' bits on the wire: the question and
// the records' names spelled exactly as asked (0x20), AA, TTL, both
// addresses of a name on two networks, and NOERROR without records for a
// type a local name does not have, over UDP and TCP.
func TestLocalAnswers(t *testing.T) {
	ns := newNS(t)
	start(t, ns, resolver.Config{Names: testNames()})
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			r := ask(t, ns, network, resolverAddr, question("wEB.", dns.TypeA))
			assert.Equal(t, dns.RcodeSuccess, r.Rcode)
			assert.True(t, r.Authoritative)
			assert.Equal(t, "wEB.", r.Question[0].Name)
			assert.Equal(t, []string{"wEB. 600 IN A 172.18.0.2"}, rrStrings(r))

			r = ask(t, ns, network, resolverAddr, question("Db.", dns.TypeA))
			assert.ElementsMatch(t, []string{"Db. 600 IN A 172.18.0.3", "Db. 600 IN A 172.19.0.3"}, rrStrings(r))

			r = ask(t, ns, network, resolverAddr, question("web.", dns.TypeAAAA))
			assert.Equal(t, []string{"web. 600 IN AAAA fd00::2"}, rrStrings(r))

			for _, qt := range []uint16{dns.TypeMX, dns.TypeTXT, dns.TypeANY, dns.TypeSRV} {
				r = ask(t, ns, network, resolverAddr, question("web.", qt))
				assert.Equal(t, dns.RcodeSuccess, r.Rcode, dns.TypeToString[qt])
				assert.Empty(t, r.Answer, dns.TypeToString[qt])
			}
			r = ask(t, ns, network, resolverAddr, question("db.", dns.TypeAAAA))
			assert.Equal(t, dns.RcodeSuccess, r.Rcode)
			assert.Empty(t, r.Answer)

			// With EDNS0: an OPT record back, the DO bit copied.
			q := question("web.", dns.TypeA)
			q.SetEdns0(1232, true)
			r = ask(t, ns, network, resolverAddr, q)
			require.NotNil(t, r.IsEdns0())
			assert.True(t, r.IsEdns0().Do())
			assert.Len(t, r.Answer, 1)
		})
	}
}

// TestPTR resolves local addresses back to names, IPv4 and IPv6, with
// Go's resolver and on the wire.
func TestPTR(t *testing.T) {
	ns := newNS(t)
	start(t, ns, resolver.Config{Names: testNames()})
	r := goResolver(ns)
	ctx := context.Background()

	got, err := r.LookupAddr(ctx, "172.18.0.2")
	require.NoError(t, err)
	assert.Equal(t, []string{"web.", "web.frontend."}, got)
	got, err = r.LookupAddr(ctx, "fd00::2")
	require.NoError(t, err)
	assert.Equal(t, []string{"web."}, got)

	m := ask(t, ns, "udp", resolverAddr, question("2.0.18.172.IN-ADDR.ARPA.", dns.TypePTR))
	assert.Equal(t, []string{"2.0.18.172.IN-ADDR.ARPA. 600 IN PTR web.", "2.0.18.172.IN-ADDR.ARPA. 600 IN PTR web.frontend."}, rrStrings(m))
	// A local address asked for another type: NOERROR, no answer.
	m = ask(t, ns, "udp", resolverAddr, question("2.0.18.172.in-addr.arpa.", dns.TypeA))
	assert.Equal(t, dns.RcodeSuccess, m.Rcode)
	assert.Empty(t, m.Answer)
	// Not local, and no forwarding: REFUSED.
	m = ask(t, ns, "udp", resolverAddr, question("9.0.18.172.in-addr.arpa.", dns.TypePTR))
	assert.Equal(t, dns.RcodeRefused, m.Rcode)
}

// TestLocalTruncated answers a name with more addresses than fit in 512
// bytes: over UDP the records that fit and TC, over TCP all of them.
func TestLocalTruncated(t *testing.T) {
	ns := newNS(t)
	n := &names{v4: map[string][]netip.Addr{}}
	for i := range 100 {
		n.v4["tasks.api"] = append(n.v4["tasks.api"], netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)}))
	}
	start(t, ns, resolver.Config{Names: n})

	r := ask(t, ns, "udp", resolverAddr, question("tasks.api.", dns.TypeA))
	assert.True(t, r.Truncated)
	assert.NotEmpty(t, r.Answer)
	assert.Less(t, len(r.Answer), 100)
	r.Compress = true
	packed, _ := r.Pack()
	assert.LessOrEqual(t, len(packed), 512)

	r = ask(t, ns, "tcp", resolverAddr, question("tasks.api.", dns.TypeA))
	assert.False(t, r.Truncated)
	assert.Len(t, r.Answer, 100)

	// Go's resolver retries over TCP by itself.
	addrs, err := goResolver(ns).LookupNetIP(context.Background(), "ip4", "tasks.api.")
	require.NoError(t, err)
	assert.Len(t, addrs, 100)
}

// TestUpdate changes the names and the forwarding of a running server.
func TestUpdate(t *testing.T) {
	w := newWorld(t)
	newUpstream(t, w.out, up1, answer("192.0.2.7"))
	s := start(t, w.sb, resolver.Config{Names: testNames()})

	m := ask(t, w.sb, "udp", resolverAddr, question("example.com.", dns.TypeA))
	assert.Equal(t, dns.RcodeRefused, m.Rcode)
	m = ask(t, w.sb, "udp", resolverAddr, question("web.", dns.TypeA))
	assert.Len(t, m.Answer, 1)

	s.Update(resolver.Config{
		Names:     &names{v4: map[string][]netip.Addr{"api": {netip.MustParseAddr("172.18.0.9")}}},
		Upstreams: []netip.AddrPort{netip.AddrPortFrom(up1, 53)},
		Forward:   true,
	})
	m = ask(t, w.sb, "udp", resolverAddr, question("example.com.", dns.TypeA))
	assert.Equal(t, []string{"example.com. 30 IN A 192.0.2.7"}, rrStrings(m))
	m = ask(t, w.sb, "udp", resolverAddr, question("api.", dns.TypeA))
	assert.Equal(t, []string{"api. 600 IN A 172.18.0.9"}, rrStrings(m))
	m = ask(t, w.sb, "udp", resolverAddr, question("web.", dns.TypeA))
	assert.Equal(t, []string{"web. 30 IN A 192.0.2.7"}, rrStrings(m), "web is no longer local: forwarded")
}

// TestStartTwice fails to start a second server in the same namespace,
// and leaves the first one serving; Close can be called twice.
func TestStartTwice(t *testing.T) {
	ns := newNS(t)
	s := start(t, ns, resolver.Config{Names: testNames()})
	_, err := resolver.Start(ns, resolver.Config{})
	require.Error(t, err)
	m := ask(t, ns, "udp", resolverAddr, question("web.", dns.TypeA))
	assert.Len(t, m.Answer, 1)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close())
	// The address is free again.
	s2, err := resolver.Start(ns, resolver.Config{Names: testNames()})
	require.NoError(t, err)
	require.NoError(t, s2.Close())
}
