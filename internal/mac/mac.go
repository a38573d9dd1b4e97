// Package mac makes MAC addresses.
package mac

import (
	"crypto/rand"
	"net"
	"net/netip"
)

// Random returns a random locally administered unicast MAC address (the
// first octet has bit 1 set and bit 0 clear), as Docker gives containers.
func Random() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	_, _ = rand.Read(m)
	m[0] = m[0]&0xfe | 0x02
	return m
}

// FromIPv4 returns the MAC Docker gives a container with the IPv4 address
// a: 02:42 followed by a's four bytes (locally administered, unicast). An
// address handed out again thus comes back with the same MAC, so the
// neighbour caches of other containers stay right.
func FromIPv4(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}
}
