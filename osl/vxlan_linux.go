package osl

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// AddVXLAN makes a VXLAN device, up, directly inside spec.NS, with one
// RTM_NEWLINK request sent on ns's socket: the kernel opens the device's
// UDP socket in ns (the underlay, where spec.Local is) and makes the device
// in spec.NS, as [Namespace.AddMacvlan] does for its links. Nothing is made
// and then moved (a move costs ~20 times a creation). With
// spec.MasterIndex it is born a port of that bridge: the kernel looks
// IFLA_MASTER up in the namespace the device is made in.
//
// The request is atomic: on error no device exists. A name taken in
// spec.NS, or a device with the same VNI, local address and port in ns's
// underlay, is an error wrapping unix.EEXIST.
//
// Equivalent to: `ip link add $name mtu $mtu netns $ns up type vxlan id
// $vni local $local dstport $port [no]learning [no]proxy`.
func (ns *Namespace) AddVXLAN(ctx context.Context, spec VXLANSpec) error {
	if spec.VNI == 0 || spec.VNI >= 1<<24 {
		return fmt.Errorf("add vxlan %s: VNI %d out of range 1-16777215", spec.Name, spec.VNI)
	}
	if !spec.Local.IsValid() {
		return fmt.Errorf("add vxlan %s: no local address", spec.Name)
	}
	return ns.addLowerLink(ctx, lowerLink{
		kind: "vxlan", name: spec.Name, target: spec.NS, mtu: spec.MTU, master: spec.MasterIndex, up: true,
		data: func(d *nl.RtAttr) {
			d.AddRtAttr(nl.IFLA_VXLAN_ID, nl.Uint32Attr(spec.VNI))
			local := nl.IFLA_VXLAN_LOCAL
			if spec.Local.Unmap().Is6() {
				local = nl.IFLA_VXLAN_LOCAL6
			}
			d.AddRtAttr(local, spec.Local.Unmap().AsSlice())
			d.AddRtAttr(nl.IFLA_VXLAN_LEARNING, boolAttr(spec.Learning))
			d.AddRtAttr(nl.IFLA_VXLAN_PROXY, boolAttr(spec.Proxy))
			if spec.Port != 0 {
				d.AddRtAttr(nl.IFLA_VXLAN_PORT, binary.BigEndian.AppendUint16(nil, spec.Port))
			}
		},
	})
}

// boolAttr is a netlink flag attribute's payload.
func boolAttr(b bool) []byte {
	if b {
		return []byte{1}
	}
	return []byte{0}
}

// vxlanOf returns the settings of l if it is a VXLAN device, else nil.
func vxlanOf(l netlink.Link) *VXLANSpec {
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		return nil
	}
	return &VXLANSpec{
		VNI:      uint32(vx.VxlanId),
		Local:    addrFrom(vx.SrcAddr),
		Port:     uint16(vx.Port),
		Learning: vx.Learning,
		Proxy:    vx.Proxy,
	}
}
