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

// FDBEntry is one static forwarding entry of a VXLAN device: frames for
// MAC go to the remote tunnel end VTEP.
type FDBEntry struct {
	LinkIndex int
	MAC       net.HardwareAddr
	VTEP      netip.Addr
}
