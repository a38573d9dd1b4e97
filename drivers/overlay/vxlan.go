package overlay

import (
	"context"
	"net"
	"net/netip"

	"github.com/seed53641549/cnm/osl"
)

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

// setFDB adds or replaces the static FDB entry mac → vtep on sb's vxlan0.
func (sb *sandbox) setFDB(ctx context.Context, mac net.HardwareAddr, vtep netip.Addr) error {
	return sb.ns.SetFDB(ctx, osl.FDBEntry{LinkIndex: sb.vxlan, MAC: mac, VTEP: vtep})
}

// delFDB removes the FDB entry of mac on sb's vxlan0; one that is not
// there is not an error.
func (sb *sandbox) delFDB(ctx context.Context, mac net.HardwareAddr, vtep netip.Addr) error {
	return sb.ns.DeleteFDB(ctx, osl.FDBEntry{LinkIndex: sb.vxlan, MAC: mac, VTEP: vtep})
}

// listFDB returns the permanent FDB entries of sb's vxlan0 with a remote
// VTEP, in the kernel's order.
func (sb *sandbox) listFDB(ctx context.Context) ([]fdbRecord, error) {
	entries, err := sb.ns.FDB(ctx, sb.vxlan)
	if err != nil {
		return nil, err
	}
	out := make([]fdbRecord, 0, len(entries))
	for _, e := range entries {
		out = append(out, fdbRecord{MAC: e.MAC.String(), VTEP: e.VTEP})
	}
	return out, nil
}
