package osl

import "net/netip"

// VXLANSpec describes a VXLAN device to make with [Namespace.AddVXLAN].
// [Link.VXLAN] reports a listed device's settings in the same type (with
// Name, MTU, NS and MasterIndex left zero).
type VXLANSpec struct {
	Name string
	VNI  uint32 // VXLAN network identifier, 24 bits
	// Local is the local VTEP address (IPv4 or IPv6): the device's UDP
	// socket is bound to it in the namespace the request is sent on.
	Local netip.Addr
	Port  uint16     // UDP destination port; 0: the kernel's default (8472)
	MTU   int        // 0: the kernel's default, 1500 less the overhead (no lower device is named)
	NS    *Namespace // namespace the device is made in; nil: the receiving namespace
	// MasterIndex is the bridge, in NS, the device is a port of; 0: none.
	MasterIndex int
	// Learning makes the device learn remote MACs from what it receives;
	// off, it knows only the FDB entries it is given.
	Learning bool
	// Proxy makes the device answer ARP and neighbour solicitations from
	// its namespace's neighbour table instead of sending them to the VTEPs.
	Proxy bool
}
