package osl

import (
	"net"
	"net/netip"
)

// Neighbour is one static neighbour (ARP or NDP) entry.
type Neighbour struct {
	LinkIndex int
	IP        netip.Addr
	MAC       net.HardwareAddr
}
