package resolver_test

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/resolver"
)

func upstreams(addrs ...netip.Addr) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(a, 53))
	}
	return out
}

// TestForward forwards a name that is not local to a fake upstream in the
// outside namespace, reached through the sandbox's route: the upstream
// gets the client's query as sent (its 0x20 spelling, EDNS0 size, DO bit
// and options) under another ID, and the client gets the upstream's answer
// byte for byte (its compression too) under its own ID.
func TestForward(t *testing.T) {
	w := newWorld(t)
	var mu sync.Mutex
	var sent []byte // the upstream's last answer
	up := newUpstream(t, w.out, up1, func(q *dns.Msg, tcp bool) []byte {
		b := answer("192.0.2.7")(q, tcp)
		mu.Lock()
		sent = append([]byte(nil), b...)
		mu.Unlock()
		return b
	})
	start(t, w.sb, resolver.Config{Names: testNames(), Upstreams: upstreams(up1), Forward: true})

	q := question("ExAmPle.CoM.", dns.TypeA)
	q.SetEdns0(1232, true)
	q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"})
	raw, err := q.Pack()
	require.NoError(t, err)

	upIDs := map[uint16]bool{}
	for i := range 4 {
		id := uint16(1000 + i)
		binary.BigEndian.PutUint16(raw, id)
		c := dialIn(t, w.sb, "udp", resolverAddr)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Write(raw)
		require.NoError(t, err)
		buf := make([]byte, 65535)
		n, err := c.Read(buf)
		require.NoError(t, err)
		got := buf[:n]

		assert.Equal(t, id, binary.BigEndian.Uint16(got), "the client's own ID")
		mu.Lock()
		assert.Equal(t, sent[2:], got[2:], "the upstream's answer as it was sent")
		mu.Unlock()
		last := up.lastQuery()
		require.NotNil(t, last)
		upIDs[last.Id] = true
		assert.Equal(t, "ExAmPle.CoM.", last.Question[0].Name)
		require.NotNil(t, last.IsEdns0())
		assert.Equal(t, uint16(1232), last.IsEdns0().UDPSize())
		assert.True(t, last.IsEdns0().Do())
		assert.Len(t, last.IsEdns0().Option, 1)
	}
	assert.NotEqual(t, map[uint16]bool{1000: true, 1001: true, 1002: true, 1003: true}, upIDs, "upstream IDs are not the client's")

	// Go's resolver, through the same path.
	addrs, err := goResolver(w.sb).LookupNetIP(context.Background(), "ip4", "example.com.")
	require.NoError(t, err)
	assert.Equal(t, []netip.Addr{netip.MustParseAddr("192.0.2.7")}, addrs)
}

// TestForwardTruncated: an upstream that truncates over UDP is asked again
// over TCP, and the full answer reaches the UDP client if it fits; if it
// does not, the client gets what fits, with TC.
func TestForwardTruncated(t *testing.T) {
	w := newWorld(t)
	records := 3
	up := newUpstream(t, w.out, up1, func(q *dns.Msg, tcp bool) []byte {
		r := new(dns.Msg)
		r.SetReply(q)
		if !tcp {
			r.Truncated = true
		} else {
			for i := range records {
				rr, _ := dns.NewRR(q.Question[0].Name + " 30 IN A 192.0.2." + string(rune('0'+i%10)))
				rr.(*dns.A).A[3] = byte(i)
				r.Answer = append(r.Answer, rr)
			}
		}
		r.Compress = true
		b, _ := r.Pack()
		return b
	})
	start(t, w.sb, resolver.Config{Upstreams: upstreams(up1), Forward: true})

	m := ask(t, w.sb, "udp", resolverAddr, question("big.example.", dns.TypeA))
	assert.False(t, m.Truncated)
	assert.Len(t, m.Answer, 3)
	assert.Equal(t, int64(1), up.udpSeen.Load())
	assert.Equal(t, int64(1), up.tcpSeen.Load())

	records = 100 // about 1.6 kB: more than the client's 512 bytes
	m = ask(t, w.sb, "udp", resolverAddr, question("bigger.example.", dns.TypeA))
	assert.True(t, m.Truncated)
	assert.NotEmpty(t, m.Answer)
	assert.Less(t, len(m.Answer), 100)
	// With EDNS0 room for it, the whole answer.
	q := question("bigger.example.", dns.TypeA)
	q.SetEdns0(4096, false)
	m = ask(t, w.sb, "udp", resolverAddr, q)
	assert.False(t, m.Truncated)
	assert.Len(t, m.Answer, 100)
}

// TestForwardTCPClient forwards a query that came over TCP over TCP.
func TestForwardTCPClient(t *testing.T) {
	w := newWorld(t)
	up := newUpstream(t, w.out, up1, answer("192.0.2.8"))
	start(t, w.sb, resolver.Config{Upstreams: upstreams(up1), Forward: true})
	m := ask(t, w.sb, "tcp", resolverAddr, question("example.org.", dns.TypeA))
	assert.Equal(t, []string{"example.org. 30 IN A 192.0.2.8"}, rrStrings(m))
	assert.Equal(t, int64(0), up.udpSeen.Load())
	assert.Equal(t, int64(1), up.tcpSeen.Load())
}

// TestForwardFailover: upstreams are tried in order; a silent one costs
// its timeout, a refusing port, SERVFAIL or REFUSED pass on at once, and
// with none left the client gets SERVFAIL (or the last error answer).
func TestForwardFailover(t *testing.T) {
	w := newWorld(t)
	newUpstream(t, w.out, up1, never)
	newUpstream(t, w.out, up2, answer("192.0.2.9"))
	servfail := func(q *dns.Msg, tcp bool) []byte {
		r := new(dns.Msg)
		r.SetRcode(q, dns.RcodeServerFailure)
		b, _ := r.Pack()
		return b
	}
	newUpstream(t, w.out, up3, servfail)
	closedPort := netip.AddrPortFrom(up2, 5353) // nothing listens: ICMP port unreachable
	const timeout = 300 * time.Millisecond

	for _, tc := range []struct {
		name      string
		upstreams []netip.AddrPort
		rcode     int
		answers   int
		min, max  time.Duration
	}{
		{"silent", upstreams(up1), dns.RcodeServerFailure, 0, timeout, timeout + time.Second},
		{"silent then good", upstreams(up1, up2), dns.RcodeSuccess, 1, timeout, timeout + time.Second},
		{"closed port then good", []netip.AddrPort{closedPort, netip.AddrPortFrom(up2, 53)}, dns.RcodeSuccess, 1, 0, timeout},
		{"servfail then good", upstreams(up3, up2), dns.RcodeSuccess, 1, 0, timeout},
		{"servfail only", upstreams(up3), dns.RcodeServerFailure, 0, 0, timeout},
		{"silent twice", upstreams(up1, up1), dns.RcodeServerFailure, 0, 2 * timeout, 2*timeout + time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := w.sb
			s := start(t, ns, resolver.Config{Upstreams: tc.upstreams, Forward: true, Timeout: timeout})
			for _, network := range []string{"udp", "tcp"} {
				begin := time.Now()
				m := ask(t, ns, network, resolverAddr, question("example.net.", dns.TypeA))
				took := time.Since(begin)
				assert.Equal(t, tc.rcode, m.Rcode, network)
				assert.Len(t, m.Answer, tc.answers, network)
				assert.GreaterOrEqual(t, took, tc.min, network)
				assert.Less(t, took, tc.max, network)
			}
			require.NoError(t, s.Close())
		})
	}
}

// TestForwardOff: a server that does not forward (internal networks, no
// usable upstream) answers REFUSED for names that are not local, and the
// upstream hears nothing.
func TestForwardOff(t *testing.T) {
	w := newWorld(t)
	up := newUpstream(t, w.out, up1, answer("192.0.2.7"))
	for _, cfg := range []resolver.Config{
		{Names: testNames(), Upstreams: upstreams(up1), Forward: false},
		{Names: testNames(), Forward: true},
		{Names: testNames(), Forward: true, Upstreams: []netip.AddrPort{netip.AddrPortFrom(resolver.Addr, 53), {}}},
	} {
		s := start(t, w.sb, cfg)
		m := ask(t, w.sb, "udp", resolverAddr, question("example.com.", dns.TypeA))
		assert.Equal(t, dns.RcodeRefused, m.Rcode)
		assert.False(t, m.RecursionAvailable)
		m = ask(t, w.sb, "udp", resolverAddr, question("web.", dns.TypeA))
		assert.Len(t, m.Answer, 1)
		require.NoError(t, s.Close())
	}
	assert.Equal(t, int64(0), up.udpSeen.Load()+up.tcpSeen.Load())
}

// TestForwardIgnoresForgeries: datagrams that do not answer the query
// sent upstream (another ID, another question, not an answer) are
// ignored, and the real answer that follows them is taken.
func TestForwardIgnoresForgeries(t *testing.T) {
	w := newWorld(t)
	newUpstreamW(t, w.out, up1, func(rw dns.ResponseWriter, q *dns.Msg, tcp bool) {
		wrongID := answer("192.0.2.66")(q, tcp)
		binary.BigEndian.PutUint16(wrongID, q.Id+1)
		other := q.Copy()
		other.Question[0].Name = "evil.example."
		wrongName := answer("192.0.2.66")(other, tcp)
		notAnswer, _ := q.Pack()
		if !tcp {
			for _, b := range [][]byte{wrongID, wrongName, notAnswer} {
				_, _ = rw.Write(b)
			}
		}
		_, _ = rw.Write(answer("192.0.2.7")(q, tcp))
	})
	start(t, w.sb, resolver.Config{Upstreams: upstreams(up1), Forward: true})
	m := ask(t, w.sb, "udp", resolverAddr, question("example.com.", dns.TypeA))
	assert.Equal(t, []string{"example.com. 30 IN A 192.0.2.7"}, rrStrings(m))
}

// TestMaxInFlight: with every slot taken by queries waiting for a silent
// upstream, the next forwarded query gets SERVFAIL at once, and local
// names are still answered at once.
func TestMaxInFlight(t *testing.T) {
	w := newWorld(t)
	newUpstream(t, w.out, up1, never)
	start(t, w.sb, resolver.Config{Names: testNames(), Upstreams: upstreams(up1), Forward: true, Timeout: 2 * time.Second, MaxInFlight: 2})

	var wg sync.WaitGroup
	for range 2 {
		c := dialIn(t, w.sb, "udp", resolverAddr)
		raw, _ := question("slow.example.", dns.TypeA).Pack()
		_, err := c.Write(raw)
		require.NoError(t, err)
		wg.Go(func() {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 512)
			_, _ = c.Read(buf) // the SERVFAIL after the timeout
		})
	}
	time.Sleep(100 * time.Millisecond) // both in flight
	begin := time.Now()
	m := ask(t, w.sb, "udp", resolverAddr, question("third.example.", dns.TypeA))
	assert.Equal(t, dns.RcodeServerFailure, m.Rcode)
	m = ask(t, w.sb, "tcp", resolverAddr, question("fourth.example.", dns.TypeA))
	assert.Equal(t, dns.RcodeServerFailure, m.Rcode)
	m = ask(t, w.sb, "udp", resolverAddr, question("web.", dns.TypeA))
	assert.Len(t, m.Answer, 1)
	assert.Less(t, time.Since(begin), time.Second)
	wg.Wait()
}
