package resolver

import (
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// packetReader reads datagrams from a UDP socket without holding a buffer
// while it waits: it waits for the socket to be readable, and only then
// takes a buffer from the pool and reads. An idle server (most of them,
// most of the time) so holds no buffer, where ReadFrom would keep one
// parked under every idle socket.
type packetReader struct {
	rc syscall.RawConn
	fn func(fd uintptr) bool

	// Set by fn for read.
	buf   *[]byte
	n     int
	from  netip.AddrPort
	trunc bool
	err   error
}

func newPacketReader(c *net.UDPConn) (*packetReader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &packetReader{rc: rc}
	r.fn = r.recv
	return r, nil
}

// read returns the next datagram, in a buffer from bufPool that the caller
// puts back: its length, its sender, and whether it was cut to the
// buffer's length.
func (r *packetReader) read() (buf *[]byte, n int, from netip.AddrPort, trunc bool, err error) {
	r.buf, r.err = nil, nil
	if err := r.rc.Read(r.fn); err != nil {
		if r.buf != nil {
			bufPool.Put(r.buf)
		}
		return nil, 0, netip.AddrPort{}, false, err
	}
	buf, r.buf = r.buf, nil
	if r.err != nil {
		bufPool.Put(buf)
		err, r.err = r.err, nil
		return nil, 0, netip.AddrPort{}, false, err
	}
	return buf, r.n, r.from, r.trunc, nil
}

// recv is called by the runtime's poller with the socket's descriptor
// (non-blocking). It returns false to wait for the socket to be readable.
func (r *packetReader) recv(fd uintptr) bool {
	buf := bufPool.Get().(*[]byte)
	for {
		n, _, flags, from, err := unix.Recvmsg(int(fd), *buf, nil, 0)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			bufPool.Put(buf)
			return false
		case nil:
			sa, ok := from.(*unix.SockaddrInet4)
			if !ok {
				r.err = unix.EAFNOSUPPORT
				r.buf = buf
				return true
			}
			r.buf, r.n, r.trunc = buf, n, flags&unix.MSG_TRUNC != 0
			r.from = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
			return true
		default:
			r.buf, r.err = buf, err
			return true
		}
	}
}
