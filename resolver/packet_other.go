//go:build !linux

package resolver

import (
	"net"
	"net/netip"
)

// packetReader reads datagrams from a UDP socket. Off Linux no server ever
// starts (there are no network namespaces); this keeps the package
// building.
type packetReader struct{ c *net.UDPConn }

func newPacketReader(c *net.UDPConn) (*packetReader, error) { return &packetReader{c}, nil }

// read returns the next datagram, in a buffer from bufPool that the caller
// puts back.
func (r *packetReader) read() (buf *[]byte, n int, from netip.AddrPort, trunc bool, err error) {
	buf = bufPool.Get().(*[]byte)
	n, from, err = r.c.ReadFromUDPAddrPort(*buf)
	if err != nil {
		bufPool.Put(buf)
		return nil, 0, from, false, err
	}
	return buf, n, from, n == len(*buf), nil
}
