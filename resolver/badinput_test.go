package resolver_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/resolver"
)

// drop is the rcode of a case the server answers with silence.
const drop = -1

// badQueries are messages that are not one plain query, and what the
// server answers to each.
func badQueries(t testing.TB) []struct {
	name  string
	raw   []byte
	rcode int
} {
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		require.NoError(t, err)
		return b
	}
	header := func(id uint16, flags uint16, qd uint16) []byte {
		b := make([]byte, 12)
		binary.BigEndian.PutUint16(b, id)
		binary.BigEndian.PutUint16(b[2:], flags)
		binary.BigEndian.PutUint16(b[4:], qd)
		return b
	}
	two := question("web.", dns.TypeA)
	two.Question = append(two.Question, dns.Question{Name: "db.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	notify := question("web.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	update := question("web.", dns.TypeSOA)
	update.Opcode = dns.OpcodeUpdate
	edns1 := question("web.", dns.TypeA)
	edns1.SetEdns0(1232, false)
	edns1.IsEdns0().SetVersion(1)
	resp := question("web.", dns.TypeA)
	resp.Response = true
	loop := append(header(7, 0x0100, 1), 0xc0, 12, 0, 1, 0, 1) // a name pointing at itself
	longLabel := append(header(8, 0x0100, 1), 64)              // a label longer than 63
	longLabel = append(longLabel, make([]byte, 70)...)
	big := append(pack(question("web.", dns.TypeA)), make([]byte, 5000)...) // longer than any query
	return []struct {
		name  string
		raw   []byte
		rcode int
	}{
		{"empty", nil, drop},
		{"short", []byte{1, 2, 3, 4, 5}, drop},
		{"a response", pack(resp), drop},
		{"header only", header(1, 0x0100, 0), dns.RcodeFormatError},
		{"question missing", header(2, 0x0100, 1), dns.RcodeFormatError},
		{"two questions", pack(two), dns.RcodeFormatError},
		{"notify", pack(notify), dns.RcodeNotImplemented},
		{"update", pack(update), dns.RcodeNotImplemented},
		{"edns version 1", pack(edns1), dns.RcodeBadVers},
		{"pointer loop", loop, dns.RcodeFormatError},
		{"long label", longLabel, dns.RcodeFormatError},
		{"oversized", big, dns.RcodeFormatError},
		{"truncated question", pack(question("web.", dns.TypeA))[:16], dns.RcodeFormatError},
	}
}

// TestBadQueries sends malformed and unusual messages over UDP and TCP:
// each gets its error answer or silence, and the server answers a good
// query right after.
func TestBadQueries(t *testing.T) {
	ns := newNS(t)
	start(t, ns, resolver.Config{Names: testNames()})
	stillAnswers := func(t *testing.T) {
		m := ask(t, ns, "udp", resolverAddr, question("web.", dns.TypeA))
		assert.Len(t, m.Answer, 1)
	}
	for _, tc := range badQueries(t) {
		t.Run(tc.name+"/udp", func(t *testing.T) {
			c := dialIn(t, ns, "udp", resolverAddr)
			_, err := c.Write(tc.raw)
			require.NoError(t, err)
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			buf := make([]byte, 65535)
			n, err := c.Read(buf)
			if tc.rcode == drop {
				assert.True(t, errors.Is(err, os.ErrDeadlineExceeded), "want no answer, got %v %x", err, buf[:n])
			} else {
				require.NoError(t, err)
				var m dns.Msg
				require.NoError(t, m.Unpack(buf[:n]))
				assert.Equal(t, tc.rcode, m.Rcode)
				assert.True(t, m.Response)
				if len(tc.raw) >= 2 {
					assert.Equal(t, binary.BigEndian.Uint16(tc.raw), m.Id)
				}
			}
			stillAnswers(t)
		})
		if len(tc.raw) > 4096 {
			continue // over TCP the connection is closed: see below
		}
		t.Run(tc.name+"/tcp", func(t *testing.T) {
			c := dialIn(t, ns, "tcp", resolverAddr)
			msg := binary.BigEndian.AppendUint16(nil, uint16(len(tc.raw)))
			_, err := c.Write(append(msg, tc.raw...))
			require.NoError(t, err)
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			var l [2]byte
			_, err = io.ReadFull(c, l[:])
			if tc.rcode == drop {
				assert.Error(t, err, "want the connection closed") // closed, or short
			} else {
				require.NoError(t, err)
				buf := make([]byte, binary.BigEndian.Uint16(l[:]))
				_, err = io.ReadFull(c, buf)
				require.NoError(t, err)
				var m dns.Msg
				require.NoError(t, m.Unpack(buf))
				assert.Equal(t, tc.rcode, m.Rcode)
			}
			stillAnswers(t)
		})
	}
}

// TestTCPLimits: a connection announcing a message longer than any query
// is closed; beyond MaxTCPConns, new connections are closed at once, and
// the server goes on answering.
func TestTCPLimits(t *testing.T) {
	ns := newNS(t)
	start(t, ns, resolver.Config{Names: testNames()})
	// closed reports whether the server closed c (EOF, or a reset when it
	// left bytes unread) within a time.
	closed := func(c net.Conn, within time.Duration) bool {
		_ = c.SetReadDeadline(time.Now().Add(within))
		_, err := c.Read(make([]byte, 1))
		return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
	}

	c := dialIn(t, ns, "tcp", resolverAddr)
	_, err := c.Write([]byte{0xff, 0xff, 0, 0})
	require.NoError(t, err)
	assert.True(t, closed(c, 2*time.Second))

	var conns []net.Conn
	for range resolver.MaxTCPConns {
		c := dialIn(t, ns, "tcp", resolverAddr)
		conns = append(conns, c)
	}
	// Each accepted and served: a query on each is answered.
	for _, c := range conns {
		co := &dns.Conn{Conn: c}
		require.NoError(t, co.WriteMsg(question("web.", dns.TypeA)))
		m, err := co.ReadMsg()
		require.NoError(t, err)
		assert.Len(t, m.Answer, 1)
	}
	extra := dialIn(t, ns, "tcp", resolverAddr)
	assert.True(t, closed(extra, 2*time.Second), "beyond the limit: closed")
	m := ask(t, ns, "udp", resolverAddr, question("web.", dns.TypeA))
	assert.Len(t, m.Answer, 1)

	// Closing one frees a place.
	conns[0].Close()
	time.Sleep(50 * time.Millisecond)
	m = ask(t, ns, "tcp", resolverAddr, question("web.", dns.TypeA))
	assert.Len(t, m.Answer, 1)
}
