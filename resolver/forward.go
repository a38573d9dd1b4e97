package resolver

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// errMismatch reports an upstream answer over TCP that does not answer the
// query sent: another ID or another question.
var errMismatch = errors.New("answer does not match the query")

// forward asks the upstreams for req, in order, and returns the answer to
// relay to the client: the upstream's message as it came, with the
// client's ID, fitted to the client's UDP size. nil: no upstream answered,
// or the server is closing.
//
// An upstream that fails, times out, or answers SERVFAIL or REFUSED passes
// the query on to the next one, as Docker's resolver does: one broken
// server in resolv.conf must not break the sandbox's lookups. When all of
// them answered with an error, the last error answer is relayed.
func (s *Server) forward(cfg *config, req *request) []byte {
	var resp []byte
	for _, up := range cfg.upstreams {
		if s.ctx.Err() != nil {
			return nil
		}
		r, err := s.exchange(cfg, up, req, req.tcp)
		if err != nil {
			continue
		}
		// A truncated answer, or one larger than the client takes: ask
		// again over TCP. If that fails, the truncated answer stands and
		// the client may retry over TCP itself.
		if !req.tcp && (r[2]&0x02 != 0 || len(r) > req.limit) {
			if full, err := s.exchange(cfg, up, req, true); err == nil {
				r = full
			}
		}
		resp = r
		if rc := r[3] & 0x0f; rc != dns.RcodeServerFailure && rc != dns.RcodeRefused {
			break
		}
	}
	if resp == nil {
		return nil
	}
	binary.BigEndian.PutUint16(resp, req.msg.Id)
	if !req.tcp && len(resp) > req.limit {
		return fit(resp, req.limit)
	}
	return resp
}

// fit cuts an answer down to limit bytes the way an upstream cuts a UDP
// answer: the records that fit, and TC set. nil if it cannot be parsed.
func fit(resp []byte, limit int) []byte {
	var m dns.Msg
	if err := m.Unpack(resp); err != nil {
		return nil
	}
	m.Truncate(limit)
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

// exchange sends req to one upstream over UDP or TCP, from a socket opened
// inside the server's namespace, and returns the answer (with the
// upstream-side ID). The whole attempt, connect included, is bounded by
// cfg.timeout, and Close cuts it short.
func (s *Server) exchange(cfg *config, up netip.AddrPort, req *request, tcp bool) ([]byte, error) {
	network := "udp"
	if tcp {
		network = "tcp"
	}
	deadline := time.Now().Add(cfg.timeout)
	var c net.Conn
	err := s.ns.Do(func() error {
		// A UDP dial only binds and connects. A TCP dial also waits for
		// the handshake with this thread held in the namespace: TCP
		// forwarding is rare (truncated answers, TCP clients), and the
		// wait is bounded by the deadline and by Close.
		d := net.Dialer{Deadline: deadline}
		var err error
		c, err = d.DialContext(s.ctx, network, up.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	// Set after the deadline above, so that a Close racing with it wins.
	stop := context.AfterFunc(s.ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	// A random ID on a fresh socket with a random source port: an
	// off-path attacker has to guess both to slip in a forged answer.
	id := uint16(rand.Uint32())
	if tcp {
		return exchangeTCP(c, req, id)
	}
	return exchangeUDP(c, req, id)
}

// exchangeUDP sends the query with id over the connected UDP socket c and
// reads until the answer comes, ignoring datagrams that are not it.
func exchangeUDP(c net.Conn, req *request, id uint16) ([]byte, error) {
	q := append([]byte(nil), req.raw...)
	binary.BigEndian.PutUint16(q, id)
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	// One byte more than the client takes, to see an answer that is
	// longer than it should be (an upstream ignoring the client's size).
	buf := make([]byte, min(req.limit, dns.MaxMsgSize)+1)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if answers(buf[:n], id, req.msg) {
			return buf[:n], nil
		}
	}
}

// exchangeTCP sends the query with id over the TCP connection c and reads
// the answer.
func exchangeTCP(c net.Conn, req *request, id uint16) ([]byte, error) {
	q := make([]byte, 2+len(req.raw))
	binary.BigEndian.PutUint16(q, uint16(len(req.raw)))
	copy(q[2:], req.raw)
	binary.BigEndian.PutUint16(q[2:], id)
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	resp := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, resp); err != nil {
		return nil, err
	}
	if !answers(resp, id, req.msg) {
		return nil, errMismatch
	}
	return resp, nil
}

// answers reports whether resp answers the query q sent with id: the ID,
// the QR bit, the opcode and the question (name compared without regard to
// case: some servers do not keep the client's 0x20 spelling). An error
// answer without a question section counts too: servers that do not
// understand a query send FORMERR without one (RFC 6891 7).
func answers(resp []byte, id uint16, q *dns.Msg) bool {
	if len(resp) < headerLen || binary.BigEndian.Uint16(resp) != id || resp[2]&0x80 == 0 ||
		int(resp[2]>>3&0x0f) != dns.OpcodeQuery {
		return false
	}
	switch binary.BigEndian.Uint16(resp[4:]) {
	case 0:
		return resp[3]&0x0f != dns.RcodeSuccess
	case 1:
	default:
		return false
	}
	name, off, err := dns.UnpackDomainName(resp, headerLen)
	if err != nil || off+4 > len(resp) {
		return false
	}
	want := q.Question[0]
	return strings.EqualFold(name, want.Name) &&
		binary.BigEndian.Uint16(resp[off:]) == want.Qtype &&
		binary.BigEndian.Uint16(resp[off+2:]) == want.Qclass
}
