package overlay

import "net/netip"

// vxlanSpec describes a network's VXLAN device.
type vxlanSpec struct {
	name   string
	vni    uint32
	local  netip.Addr // the local VTEP
	port   uint16     // UDP destination port
	mtu    int
	master int // index of the bridge, in the target namespace, it is a port of
}

// fdbRecord is one FDB entry of a VXLAN device, as listed.
type fdbRecord struct {
	MAC  string // as net.HardwareAddr.String formats it
	VTEP netip.Addr
}

// vxlanSpec returns network n's VXLAN device, a port of the bridge of
// index bridge.
func (d *Driver) vxlanSpec(n *network, bridge int) vxlanSpec {
	return vxlanSpec{name: vxlanName, vni: n.vni, local: d.cfg.AdvertiseAddress, port: d.cfg.Port, mtu: n.mtu, master: bridge}
}
