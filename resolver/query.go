package resolver

import (
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

const (
	// headerLen is the length of a DNS message header.
	headerLen = 12
	// maxQuerySize bounds a query the server reads. Real queries are a
	// few hundred bytes at most (one name of at most 255 bytes and an OPT
	// record); a larger UDP datagram is answered FORMERR, and a TCP
	// connection announcing a larger message is closed.
	maxQuerySize = 4096
	// ednsSize is the UDP payload size the server announces in the OPT
	// record of its own answers: the DNS flag day 2020 value, which fits
	// any path's MTU without fragments.
	ednsSize = 1232
)

// bufPool holds buffers of maxQuerySize bytes for reading queries and
// packing answers. It is shared by every Server of the process, so memory
// follows the queries being handled, not the number of servers.
var bufPool = sync.Pool{New: func() any { b := make([]byte, maxQuerySize); return &b }}

// request is a query that goes upstream.
type request struct {
	raw   []byte   // the query as the client sent it
	msg   *dns.Msg // the query parsed: one question
	limit int      // the largest UDP answer the client takes
	tcp   bool     // asked over TCP
}

// handle decides what to do with one query received over UDP or TCP: it
// returns the answer to send (packed into out when it fits), or a request
// to forward, or neither when the message is dropped (too short to be a
// query, or itself an answer: answering those could loop between servers).
func handle(cfg *config, raw []byte, tcp bool, out []byte) (reply []byte, fwd *request) {
	if len(raw) < headerLen || raw[2]&0x80 != 0 {
		return nil, nil
	}
	var m dns.Msg
	if err := m.Unpack(raw); err != nil {
		return headerOnly(raw, dns.RcodeFormatError, out), nil
	}
	if m.Opcode != dns.OpcodeQuery {
		return rcodeReply(cfg, &m, dns.RcodeNotImplemented, out), nil
	}
	if len(m.Question) != 1 {
		return rcodeReply(cfg, &m, dns.RcodeFormatError, out), nil
	}
	limit := dns.MinMsgSize
	if opt := m.IsEdns0(); opt != nil {
		if opt.Version() != 0 {
			return rcodeReply(cfg, &m, dns.RcodeBadVers, out), nil
		}
		limit = max(limit, int(opt.UDPSize()))
	}
	if tcp {
		limit = dns.MaxMsgSize
	}
	q := m.Question[0]
	if q.Qclass == dns.ClassINET {
		if rrs, local := lookup(cfg.names, q); local {
			return localReply(cfg, &m, rrs, limit, out), nil
		}
	}
	if !cfg.forwarding() {
		return rcodeReply(cfg, &m, dns.RcodeRefused, out), nil
	}
	return nil, &request{raw: raw, msg: &m, limit: limit, tcp: tcp}
}

// lookup returns the answer records for q from names, and whether the
// name is local at all. The records carry the name exactly as asked, so a
// client that randomises the case of its question (0x20) sees its own
// spelling back.
func lookup(names Names, q dns.Question) (rrs []dns.RR, local bool) {
	name, ok := canonical(q.Name)
	if !ok {
		return nil, false
	}
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: TTL}
	}
	if addr, ok := reverseAddr(name); ok {
		hosts, ok := names.Reverse(addr)
		if !ok {
			return nil, false
		}
		if q.Qtype == dns.TypePTR {
			for _, h := range hosts {
				rrs = append(rrs, &dns.PTR{Hdr: hdr(dns.TypePTR), Ptr: dns.Fqdn(h)})
			}
		}
		return rrs, true
	}
	ipv6 := q.Qtype == dns.TypeAAAA
	addrs, ok := names.Lookup(name, ipv6)
	if !ok {
		return nil, false
	}
	if q.Qtype != dns.TypeA && q.Qtype != dns.TypeAAAA {
		return nil, true // a local name has no records of other types
	}
	seen := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if !ipv6 {
			a = a.Unmap()
		}
		if a.Is4() == ipv6 || !a.IsValid() || slices.Contains(seen, a) {
			continue
		}
		seen = append(seen, a)
		if ipv6 {
			rrs = append(rrs, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: a.AsSlice()})
		} else {
			rrs = append(rrs, &dns.A{Hdr: hdr(dns.TypeA), A: a.AsSlice()})
		}
	}
	return rrs, true
}

// canonical returns a question name as [Names] takes it: lower case (DNS
// names compare case-insensitively in ASCII only, RFC 4343) and without
// the trailing dot. ok false for names no Names can hold: the root, and
// names with escaped bytes (dots or binary inside a label).
func canonical(name string) (string, bool) {
	name = strings.TrimSuffix(name, ".")
	if name == "" || strings.IndexByte(name, '\\') >= 0 {
		return "", false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(name), true
		}
	}
	return name, true
}

// localReply answers a local name: authoritative, the records (as many as
// fit in limit, with TC set if some did not), and an OPT record if the
// query had one.
func localReply(cfg *config, m *dns.Msg, rrs []dns.RR, limit int, out []byte) []byte {
	r := replyTo(cfg, m, dns.RcodeSuccess)
	r.Authoritative = true
	r.Answer = rrs
	r.Truncate(limit)
	b, err := r.PackBuffer(out)
	if err != nil { // a name from Names that is not a valid domain name
		return rcodeReply(cfg, m, dns.RcodeServerFailure, out)
	}
	return b
}

// rcodeReply answers m with rcode and no records.
func rcodeReply(cfg *config, m *dns.Msg, rcode int, out []byte) []byte {
	b, err := replyTo(cfg, m, rcode).PackBuffer(out)
	if err != nil {
		return headerOnly(nil, dns.RcodeServerFailure, out) // cannot happen: m was unpacked
	}
	return b
}

// replyTo starts the answer to m: its ID, opcode, RD and CD bits and
// question, RA when the server forwards,
// and an OPT record when m had one (RFC 6891 6.1.1), with its DO bit
// copied (RFC 3225 3).
func replyTo(cfg *config, m *dns.Msg, rcode int) *dns.Msg {
	r := new(dns.Msg)
	r.SetRcode(m, rcode)
	r.RecursionAvailable = cfg.forwarding()
	if opt := m.IsEdns0(); opt != nil {
		r.SetEdns0(ednsSize, opt.Do())
	}
	return r
}

// headerOnly answers a query that could not be parsed: its header's ID,
// opcode and RD bit, the rcode, and no sections. raw nil: ID zero.
func headerOnly(raw []byte, rcode int, out []byte) []byte {
	out = out[:0]
	if len(raw) >= headerLen {
		out = append(out, raw[0], raw[1], 0x80|raw[2]&0x79)
	} else {
		out = append(out, 0, 0, 0x80)
	}
	out = append(out, byte(rcode&0xf))
	return append(out, 0, 0, 0, 0, 0, 0, 0, 0)
}
