package resolver_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/resolver"
)

// FuzzServeDNS sends arbitrary bytes to a running server, as a datagram
// and as a TCP message, and then checks that it still answers a good
// query. Names that are not local are forwarded to a fake upstream, so the
// relay path is fuzzed too. A plain `go test` runs the seeds only; fuzz
// with ./scripts/test.sh -run '^$' -fuzz FuzzServeDNS -fuzztime 1m ./resolver
func FuzzServeDNS(f *testing.F) {
	w := newWorld(f)
	newUpstream(f, w.out, up1, answer("192.0.2.7"))
	start(f, w.sb, resolver.Config{Names: testNames(), Upstreams: upstreams(up1), Forward: true, Timeout: 500 * time.Millisecond})

	for _, tc := range badQueries(f) {
		f.Add(tc.raw)
	}
	for _, q := range []*dns.Msg{
		question("web.", dns.TypeA),
		question("WeB.", dns.TypeAAAA),
		question("example.com.", dns.TypeA),
		question("2.0.18.172.in-addr.arpa.", dns.TypePTR),
		question("db.", dns.TypeMX),
	} {
		b, err := q.Pack()
		require.NoError(f, err)
		f.Add(b)
		q.SetEdns0(4096, true)
		b, err = q.Pack()
		require.NoError(f, err)
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) <= 65507 {
			c := dialIn(t, w.sb, "udp", resolverAddr)
			_, _ = c.Write(b)
		}
		if len(b) <= 65535 {
			c := dialIn(t, w.sb, "tcp", resolverAddr)
			_, _ = c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...))
		}
		m := ask(t, w.sb, "udp", resolverAddr, question("web.", dns.TypeA))
		assert.Len(t, m.Answer, 1)
	})
}
