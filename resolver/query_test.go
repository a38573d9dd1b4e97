package resolver

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReverseAddr(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // "" for not an address
	}{
		{"4.3.2.1.in-addr.arpa", "1.2.3.4"},
		{"0.0.0.0.in-addr.arpa", "0.0.0.0"},
		{"255.255.255.255.in-addr.arpa", "255.255.255.255"},
		{"2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", "fd00::2"},
		{"b.a.9.8.7.6.5.4.3.2.1.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.0.8.b.d.0.ip6.arpa", "db8:123:4567:89ab:cdef:123:4567:89ab"},
		{"3.2.1.in-addr.arpa", ""},           // a zone, not an address
		{"5.4.3.2.1.in-addr.arpa", ""},       // too many labels
		{"256.3.2.1.in-addr.arpa", ""},       // out of range
		{"04.3.2.1.in-addr.arpa", ""},        // leading zero
		{"-1.3.2.1.in-addr.arpa", ""},        // sign
		{"+1.3.2.1.in-addr.arpa", ""},        // sign
		{"4.3..1.in-addr.arpa", ""},          // empty label
		{"4.3.2.1.in-addr.arpa.example", ""}, // another zone
		{"in-addr.arpa", ""},
		{"2.0.0.ip6.arpa", ""},
		{"g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", ""},
		{"20.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", ""},
		{"web", ""},
	} {
		got, ok := reverseAddr(tc.name)
		if tc.want == "" {
			assert.False(t, ok, tc.name)
			continue
		}
		if assert.True(t, ok, tc.name) {
			assert.Equal(t, netip.MustParseAddr(tc.want), got, tc.name)
			// And back: the name miekg/dns makes for the address.
			back, err := dns.ReverseAddr(got.String())
			require.NoError(t, err)
			assert.Equal(t, tc.name+".", back)
		}
	}
}

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"web.": "web", "WeB.": "web", "web": "web", "Web.FrontEnd.": "web.frontend",
		".": "", "": "", `we\.b.`: "", `w\000b.`: "",
	} {
		got, ok := canonical(in)
		assert.Equal(t, want, got, in)
		assert.Equal(t, want != "", ok, in)
	}
}

// testNames is a Names for the tests of this file.
type testNames struct{}

func (testNames) Lookup(name string, ipv6 bool) ([]netip.Addr, bool) {
	switch {
	case name == "web" && !ipv6:
		return []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("::ffff:10.0.0.3")}, true
	case name == "web":
		return []netip.Addr{netip.MustParseAddr("fd00::2"), netip.MustParseAddr("10.0.0.9")}, true
	case name == "many":
		var a []netip.Addr
		for i := range 200 {
			a = append(a, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
		}
		return a, true
	}
	return nil, false
}

func (testNames) Reverse(a netip.Addr) ([]string, bool) {
	if a == netip.MustParseAddr("10.0.0.2") {
		return []string{"web", "bad name with spaces"}, true
	}
	return nil, false
}

// TestHandleFamilies: A answers only IPv4 addresses (mapped ones
// unmapped), AAAA only IPv6 ones.
func TestHandleFamilies(t *testing.T) {
	cfg := newConfig(Config{Names: testNames{}})
	for qt, want := range map[uint16][]string{
		dns.TypeA:    {"web.\t600\tIN\tA\t10.0.0.2", "web.\t600\tIN\tA\t10.0.0.3"},
		dns.TypeAAAA: {"web.\t600\tIN\tAAAA\tfd00::2"},
	} {
		q := new(dns.Msg).SetQuestion("web.", qt)
		raw, _ := q.Pack()
		reply, fwd := handle(cfg, raw, false, make([]byte, 512))
		require.Nil(t, fwd)
		var m dns.Msg
		require.NoError(t, m.Unpack(reply))
		var got []string
		for _, rr := range m.Answer {
			got = append(got, rr.String())
		}
		assert.Equal(t, want, got)
	}
}

// FuzzHandle feeds arbitrary bytes to the query path without sockets and
// checks what it decides: silence only for what is no query, otherwise
// an answer that parses, carries the query's ID and fits the client's
// size, or a request to forward with one question.
func FuzzHandle(f *testing.F) {
	for _, name := range []string{"web.", "many.", "2.0.0.10.in-addr.arpa.", "example.com."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeMX} {
			q := new(dns.Msg).SetQuestion(name, qt)
			b, _ := q.Pack()
			f.Add(b, false, true)
			q.SetEdns0(1232, true)
			b, _ = q.Pack()
			f.Add(b, true, false)
		}
	}
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}, false, true)
	f.Fuzz(func(t *testing.T, raw []byte, tcp, forward bool) {
		c := Config{Names: testNames{}}
		if forward {
			c.Forward, c.Upstreams = true, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:53")}
		}
		reply, fwd := handle(newConfig(c), raw, tcp, make([]byte, 512))
		if len(raw) < headerLen || raw[2]&0x80 != 0 {
			assert.Nil(t, reply)
			assert.Nil(t, fwd)
			return
		}
		if fwd != nil {
			assert.Nil(t, reply)
			assert.True(t, forward)
			assert.Len(t, fwd.msg.Question, 1)
			return
		}
		require.NotNil(t, reply)
		var m dns.Msg
		require.NoError(t, m.Unpack(reply), "%x", reply)
		assert.True(t, m.Response)
		assert.Equal(t, binary.BigEndian.Uint16(raw), m.Id)
		if !tcp {
			var q dns.Msg
			limit := 512
			if q.Unpack(raw) == nil && q.IsEdns0() != nil {
				limit = max(limit, int(q.IsEdns0().UDPSize()))
			}
			assert.LessOrEqual(t, len(reply), limit)
		}
	})
}
