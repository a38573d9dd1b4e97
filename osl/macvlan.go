package osl

import (
	"errors"
	"fmt"
	"net"
)

// ErrKindNotSupported reports that the kernel has no driver for a link type
// (for example no 8021q module for VLAN links, or no ipvlan). Errors that
// wrap it also wrap the kernel's unix.EOPNOTSUPP.
var ErrKindNotSupported = errors.New("link type not supported by this kernel")

// MacvlanMode is how a macvlan link forwards between itself and the other
// macvlan links of the same parent (MACVLAN_MODE_* in <linux/if_link.h>;
// Documentation/networking/macvlan.rst).
type MacvlanMode uint32

// Macvlan modes.
const (
	// MacvlanPrivate: no frame between macvlan links of one parent, not even
	// one the external switch sends back (hairpin).
	MacvlanPrivate MacvlanMode = 1
	// MacvlanVEPA: every frame goes out of the parent; links of one parent
	// reach each other only if the external switch sends frames back
	// (802.1Qbg reflective relay, "hairpin").
	MacvlanVEPA MacvlanMode = 2
	// MacvlanBridge: links of one parent reach each other directly, inside
	// the kernel; everything else goes out of the parent.
	MacvlanBridge MacvlanMode = 4
	// MacvlanPassthru: one macvlan link takes the parent over (the parent
	// goes promiscuous, the link takes the parent's MAC). A second link on
	// the same parent is refused by the kernel.
	MacvlanPassthru MacvlanMode = 8
)

// String returns the mode's name as iproute2 spells it ("bridge").
func (m MacvlanMode) String() string {
	switch m {
	case MacvlanPrivate:
		return "private"
	case MacvlanVEPA:
		return "vepa"
	case MacvlanBridge:
		return "bridge"
	case MacvlanPassthru:
		return "passthru"
	}
	return fmt.Sprintf("macvlan-mode(%d)", uint32(m))
}

// MacvlanSpec describes a macvlan link to make with [Namespace.AddMacvlan].
type MacvlanSpec struct {
	Name        string           // name of the new link, inside NS
	ParentIndex int              // index of the parent (lower) link in the namespace the request is sent on
	NS          *Namespace       // namespace the link is made in; nil: the receiving namespace itself
	Mode        MacvlanMode      // required: the zero value is not a mode
	MAC         net.HardwareAddr // nil: the kernel picks a random one; ignored in passthru mode (the link takes the parent's)
	MTU         int              // 0: the parent's MTU; above the parent's MTU the kernel refuses with EINVAL
}

// IPvlanMode is an ipvlan link's mode (IPVLAN_MODE_* in <linux/if_link.h>;
// Documentation/networking/ipvlan.rst).
type IPvlanMode uint16

// IPvlan modes.
const (
	// IPvlanL2: the links switch at layer 2 (ARP and broadcasts work), all
	// sharing the parent's MAC.
	IPvlanL2 IPvlanMode = 0
	// IPvlanL3: the parent routes at layer 3: no broadcast, no ARP; the
	// links reach the world through a device route, not a gateway.
	IPvlanL3 IPvlanMode = 1
)

// String returns the mode's name as iproute2 spells it ("l2").
func (m IPvlanMode) String() string {
	switch m {
	case IPvlanL2:
		return "l2"
	case IPvlanL3:
		return "l3"
	}
	return fmt.Sprintf("ipvlan-mode(%d)", uint16(m))
}

// IPvlanSpec describes an ipvlan link to make with [Namespace.AddIPvlan].
type IPvlanSpec struct {
	Name        string     // name of the new link, inside NS
	ParentIndex int        // index of the parent link in the namespace the request is sent on
	NS          *Namespace // namespace the link is made in; nil: the receiving namespace itself
	Mode        IPvlanMode // the zero value is l2
	MTU         int        // 0: the parent's MTU
}

// VLANSpec describes an 802.1Q sub-interface to make with [Namespace.AddVLAN].
type VLANSpec struct {
	Name        string // for example "eth1.50"
	ParentIndex int    // the link that carries the tagged frames
	ID          int    // VLAN ID, 1-4094
	Alias       string // free text (IFLA_IFALIAS), used to mark links as cnm's; "": none
}
