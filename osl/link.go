package osl

import (
	"errors"
	"net"
)

// MaxNameLen is the longest interface name the kernel accepts (IFNAMSIZ - 1).
const MaxNameLen = 15

// Link describes one network interface.
type Link struct {
	Index       int
	Name        string
	Kind        string // "veth", "bridge", "device" for loopback, ...
	MAC         net.HardwareAddr
	MTU         int
	Up          bool // administratively up (IFF_UP)
	MasterIndex int  // index of the bridge it is a port of, 0 if none
	// PeerIndex is, for one end of a veth pair, the index of the other end
	// in the other end's namespace (IFLA_LINK); 0 if unknown.
	PeerIndex int
	Alias     string
	// VXLAN is, for a VXLAN device, its settings (VNI, local address,
	// port, learning, proxy); nil for other links.
	VXLAN *VXLANSpec
}

// ErrLinkNotFound reports that no link has the given name.
var ErrLinkNotFound = errors.New("link not found")

// BridgeSpec describes a bridge to make with [Namespace.AddBridge].
type BridgeSpec struct {
	Name  string
	MTU   int              // 0: the kernel's default (1500)
	MAC   net.HardwareAddr // nil: the kernel picks one; set one so the bridge's MAC does not change as ports come and go
	Alias string           // free text (IFLA_IFALIAS), used to mark links as cnm's
}

// VethSpec describes a veth pair to make with [Namespace.AddVeth].
type VethSpec struct {
	HostName    string     // name of the end that stays in the receiving namespace
	PeerName    string     // name of the other end, made directly inside PeerNS
	PeerNS      *Namespace // namespace of the peer end
	MasterIndex int        // bridge the host end is attached to; 0: none
	MTU         int        // of both ends; 0: the kernel's default
	PeerMAC     net.HardwareAddr
}
