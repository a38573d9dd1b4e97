// Package mac makes MAC addresses.
package mac

import (
	"crypto/rand"
	"net"
)

// Random returns a random locally administered unicast MAC address (the
// first octet has bit 1 set and bit 0 clear), as Docker gives containers.
func Random() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	_, _ = rand.Read(m)
	m[0] = m[0]&0xfe | 0x02
	return m
}
