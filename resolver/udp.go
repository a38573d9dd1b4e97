package resolver

import (
	"errors"
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// serveUDP reads queries from the UDP socket until it is closed. Local
// names are answered right here; a query that goes upstream gets a
// goroutine of its own, if a slot is free.
func (s *Server) serveUDP() {
	defer s.wg.Done()
	r, err := newPacketReader(s.udp)
	if err != nil {
		return // cannot happen: the socket is open
	}
	for {
		buf, n, from, trunc, err := r.read()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // a transient error on one datagram
		}
		s.handleUDP((*buf)[:n], from, trunc)
		bufPool.Put(buf)
	}
}

// handleUDP answers one datagram. trunc reports that the datagram was
// longer than maxQuerySize and was cut.
func (s *Server) handleUDP(raw []byte, from netip.AddrPort, trunc bool) {
	out := bufPool.Get().(*[]byte)
	defer bufPool.Put(out)
	var reply []byte
	if trunc {
		if raw[2]&0x80 != 0 {
			return
		}
		reply = headerOnly(raw, dns.RcodeFormatError, *out)
	} else {
		cfg := s.cfg.Load()
		var fwd *request
		reply, fwd = handle(cfg, raw, false, *out)
		if fwd != nil {
			if s.acquire(cfg) {
				fwd.raw = append([]byte(nil), raw...) // raw goes back to the pool
				s.wg.Add(1)
				go s.forwardUDP(cfg, fwd, from)
				return
			}
			reply = rcodeReply(cfg, fwd.msg, dns.RcodeServerFailure, *out)
		}
	}
	if reply != nil {
		_, _ = s.udp.WriteToUDPAddrPort(reply, from)
	}
}

// forwardUDP forwards one query that came over UDP and relays the answer.
func (s *Server) forwardUDP(cfg *config, req *request, to netip.AddrPort) {
	defer s.wg.Done()
	defer s.release()
	reply := s.forward(cfg, req)
	if reply == nil {
		if s.ctx.Err() != nil {
			return // closed: drop
		}
		out := bufPool.Get().(*[]byte)
		defer bufPool.Put(out)
		reply = rcodeReply(cfg, req.msg, dns.RcodeServerFailure, *out)
	}
	_, _ = s.udp.WriteToUDPAddrPort(reply, to)
}
