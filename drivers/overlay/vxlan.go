package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/seed53641549/cnm/driverapi"
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

// addVXLAN makes the VXLAN device spec describes directly inside target,
// up, a port of spec.master, with its UDP socket in host (the underlay),
// in one request. It is what libnetwork does by making the device in the host
// namespace and moving it, without the move. Learning is off (the peer
// table gives every remote MAC) and the device answers ARP and neighbour
// solicitations from its neighbour table (proxy). It returns the device's
// index in target; on error no device is left.
//
// Equivalent to: `ip link add $name mtu $mtu netns $target master $br up
// type vxlan id $vni local $local dstport $port nolearning proxy` in host.
func addVXLAN(ctx context.Context, host, target *osl.Namespace, spec vxlanSpec) (int, error) {
	err := host.AddVXLAN(ctx, osl.VXLANSpec{Name: spec.name, VNI: spec.vni, Local: spec.local, Port: spec.port, MTU: spec.mtu,
		NS: target, MasterIndex: spec.master, Proxy: true})
	if errors.Is(err, syscall.EEXIST) {
		return 0, fmt.Errorf("%w: vxlan device with VNI %d (or port %d) in host namespace %s: %w", driverapi.ErrExists, spec.vni, spec.port, host, err)
	}
	if err != nil {
		return 0, err
	}
	l, err := target.LinkByName(ctx, spec.name)
	if err != nil {
		return 0, errors.Join(err, target.DeleteLink(context.WithoutCancel(ctx), spec.name))
	}
	return l.Index, nil
}

// vxlanMatches reports whether the listed link l is a VXLAN device as spec
// (and addVXLAN) describe it: VNI, local address, port, no learning,
// proxy. Its MTU and master are not compared: the caller handles those.
func vxlanMatches(l osl.Link, spec vxlanSpec) bool {
	vx := l.VXLAN
	return vx != nil && vx.VNI == spec.vni && vx.Local == spec.local && vx.Port == spec.port && !vx.Learning && vx.Proxy
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
