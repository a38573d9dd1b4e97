package resolver

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"time"

	"github.com/miekg/dns"
)

const (
	// tcpIdleTimeout closes a client connection that sends no query for
	// this long (RFC 7766 6.2.3 asks for idle timeouts of seconds).
	tcpIdleTimeout = 8 * time.Second
	// tcpIOTimeout bounds reading the rest of a query once its length
	// arrived, and writing an answer.
	tcpIOTimeout = 2 * time.Second
)

// serveTCP accepts TCP clients until the listener is closed, each served
// by a goroutine of its own, at most MaxTCPConns at once.
func (s *Server) serveTCP() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := s.tcp.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of descriptors or memory: wait a little, as net/http
			// does, rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		if !s.track(c) {
			c.Close()
			continue
		}
		s.wg.Add(1)
		go s.serveConn(c)
	}
}

// track records a new client connection; false when the server already
// has MaxTCPConns or is closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.conns) >= MaxTCPConns {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// serveConn answers the queries of one TCP client, one after the other,
// until the client closes, idles, or sends something that is not a query.
// A query that goes upstream goes over TCP, from this goroutine.
func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer s.untrack(c)
	defer c.Close()
	var l [2]byte
	for {
		if c.SetReadDeadline(time.Now().Add(tcpIdleTimeout)) != nil {
			return
		}
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(l[:]))
		if n < headerLen || n > maxQuerySize {
			return
		}
		buf := bufPool.Get().(*[]byte)
		raw := (*buf)[:n]
		_ = c.SetReadDeadline(time.Now().Add(tcpIOTimeout))
		if _, err := io.ReadFull(c, raw); err != nil {
			bufPool.Put(buf)
			return
		}
		ok := s.answerTCP(c, raw)
		bufPool.Put(buf)
		if !ok {
			return
		}
	}
}

// answerTCP answers one query read from c, and reports whether the
// connection goes on.
func (s *Server) answerTCP(c net.Conn, raw []byte) bool {
	out := bufPool.Get().(*[]byte)
	defer bufPool.Put(out)
	cfg := s.cfg.Load()
	reply, fwd := handle(cfg, raw, true, (*out)[2:])
	if fwd != nil {
		if s.acquire(cfg) {
			reply = s.forward(cfg, fwd)
			s.release()
			if reply == nil && s.ctx.Err() != nil {
				return false
			}
		}
		if reply == nil {
			reply = rcodeReply(cfg, fwd.msg, dns.RcodeServerFailure, (*out)[2:])
		}
	}
	if reply == nil {
		return false // not a query
	}
	// One write for length and message: two would cost two segments.
	var msg []byte
	if len(reply) <= len(*out)-2 && &reply[0] == &(*out)[2] {
		msg = (*out)[:2+len(reply)]
	} else {
		msg = make([]byte, 2+len(reply))
		copy(msg[2:], reply)
	}
	binary.BigEndian.PutUint16(msg, uint16(len(reply)))
	_ = c.SetWriteDeadline(time.Now().Add(tcpIOTimeout))
	_, err := c.Write(msg)
	return err == nil
}
