package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
	"github.com/seed53641549/cnm/osl"
)

// Peer is an endpoint of an overlay network on another host: what the
// control plane's peer table holds.
type Peer struct {
	NetworkID string
	IP        netip.Addr       // the endpoint's address on the overlay network
	MAC       net.HardwareAddr // its interface's MAC
	VTEP      netip.Addr       // the underlay address of its host
}

// peerEntry is where a peer's IP is, as stored in the peer table.
type peerEntry struct {
	mac  string // net.HardwareAddr as a string of its 6 bytes
	vtep netip.Addr
}

func (p Peer) entry() peerEntry { return peerEntry{mac: string(p.MAC), vtep: p.VTEP} }

// check validates every field of p, naming the field and value.
func (p Peer) check(own netip.Addr) error {
	switch {
	case p.NetworkID == "":
		return fmt.Errorf("%w: overlay peer: NetworkID: missing", driverapi.ErrInvalid)
	case !p.IP.IsValid() || p.IP.IsUnspecified() || p.IP.IsMulticast() || p.IP.Zone() != "":
		return fmt.Errorf("%w: overlay peer on network %s: IP=%s: want a unicast address", driverapi.ErrInvalid, p.NetworkID, p.IP)
	case p.IP.Is4In6():
		// The kernel would keep it as an IPv6 neighbour, which lists as
		// the IPv4 address: SyncPeers could not tell it from one.
		return fmt.Errorf("%w: overlay peer on network %s: IP=%s: an IPv4-mapped IPv6 address: give the IPv4 address", driverapi.ErrInvalid, p.NetworkID, p.IP)
	}
	if err := linkrules.CheckMAC(p.MAC); err != nil {
		return fmt.Errorf("overlay peer %s on network %s: MAC=%q: %w", p.IP, p.NetworkID, p.MAC, err)
	}
	if err := checkVTEP("peer VTEP", p.VTEP); err != nil {
		return fmt.Errorf("peer %s on network %s: %w", p.IP, p.NetworkID, err)
	}
	if p.VTEP.Is4In6() {
		return fmt.Errorf("%w: overlay peer %s on network %s: VTEP=%s: an IPv4-mapped IPv6 address: give the IPv4 address", driverapi.ErrInvalid, p.IP, p.NetworkID, p.VTEP)
	}
	if p.VTEP.Is4() != own.Is4() {
		return fmt.Errorf("%w: overlay peer %s on network %s: VTEP=%s: not of the family of this host's AdvertiseAddress %s",
			driverapi.ErrInvalid, p.IP, p.NetworkID, p.VTEP, own)
	}
	return nil
}

// AddPeer tells the driver where an endpoint of another host is: a static
// FDB entry on the network's VXLAN device sends its MAC to its VTEP, and a
// permanent neighbour entry answers ARP (or neighbour solicitations) for
// its IP with its MAC. A peer is keyed by network and IP: adding the same
// peer again does nothing, adding one with a new MAC or VTEP replaces the
// old. Peers of a network that has no namespace on this host (not created,
// or no endpoint joined) are remembered and programmed when it gets one. A
// peer whose VTEP is this host's own address is an endpoint of this host,
// reached through the bridge: it is ignored.
//
// On error the peer table and the kernel are as they were.
func (d *Driver) AddPeer(ctx context.Context, p Peer) error {
	if err := p.check(d.cfg.AdvertiseAddress); err != nil {
		return err
	}
	if p.VTEP == d.cfg.AdvertiseAddress {
		return nil
	}
	p.MAC = append(net.HardwareAddr(nil), p.MAC...)
	d.peerMu.Lock()
	defer d.peerMu.Unlock()
	table := d.peers[p.NetworkID]
	if table == nil {
		table = map[netip.Addr]peerEntry{}
		d.peers[p.NetworkID] = table
	}
	old, had := table[p.IP]
	if had && old == p.entry() {
		return nil
	}
	table[p.IP] = p.entry()
	sb := d.liveSandbox(p.NetworkID)
	if sb == nil {
		return nil
	}
	err := func() error {
		if had {
			if err := sb.unprogram(ctx, p.IP, old, d.macUsed(p.NetworkID, old.mac, p.IP)); err != nil {
				return err
			}
		}
		return sb.program(ctx, p.IP, p.entry())
	}()
	if err == nil {
		return nil
	}
	// Put back what was.
	bg := context.WithoutCancel(ctx)
	undo := sb.unprogram(bg, p.IP, p.entry(), d.macUsed(p.NetworkID, string(p.MAC), p.IP))
	if had {
		table[p.IP] = old
		undo = errors.Join(undo, sb.program(bg, p.IP, old))
	} else {
		delete(table, p.IP)
	}
	return errors.Join(fmt.Errorf("overlay add peer %s (%s at %s) on network %s: %w", p.IP, p.MAC, p.VTEP, p.NetworkID, err), undo)
}

// RemovePeer undoes AddPeer: it removes the peer's neighbour entry, and its
// FDB entry unless another peer of the network has the same MAC (the IPv4
// and IPv6 addresses of one endpoint). A peer that is not known is not an
// error; nor is one whose MAC or VTEP (when given) differ from those
// known, which a later AddPeer replaced: that one stays.
func (d *Driver) RemovePeer(ctx context.Context, p Peer) error {
	if p.NetworkID == "" {
		return fmt.Errorf("%w: overlay peer: NetworkID: missing", driverapi.ErrInvalid)
	}
	if !p.IP.IsValid() {
		return fmt.Errorf("%w: overlay peer on network %s: IP: missing", driverapi.ErrInvalid, p.NetworkID)
	}
	d.peerMu.Lock()
	defer d.peerMu.Unlock()
	table := d.peers[p.NetworkID]
	e, ok := table[p.IP]
	if !ok || (p.MAC != nil && e.mac != string(p.MAC)) || (p.VTEP.IsValid() && e.vtep != p.VTEP) {
		return nil
	}
	if sb := d.liveSandbox(p.NetworkID); sb != nil {
		if err := sb.unprogram(ctx, p.IP, e, d.macUsed(p.NetworkID, e.mac, p.IP)); err != nil {
			return fmt.Errorf("overlay remove peer %s on network %s: %w", p.IP, p.NetworkID, err)
		}
	}
	delete(table, p.IP)
	if len(table) == 0 {
		delete(d.peers, p.NetworkID)
	}
	return nil
}

// liveSandbox returns network id's namespace, nil if it has none. The
// caller holds peerMu.
func (d *Driver) liveSandbox(id string) *sandbox {
	d.mu.Lock()
	n := d.networks[id]
	d.mu.Unlock()
	if n == nil {
		return nil
	}
	return n.sb
}

// macUsed reports whether a peer of network id other than the one at ip
// has the MAC mac (an FDB entry is keyed by MAC alone). The caller holds
// peerMu.
func (d *Driver) macUsed(id, mac string, ip netip.Addr) bool {
	for other, e := range d.peers[id] {
		if other != ip && e.mac == mac {
			return true
		}
	}
	return false
}

// program installs a peer's FDB and neighbour entries in sb.
func (sb *sandbox) program(ctx context.Context, ip netip.Addr, e peerEntry) error {
	mac := net.HardwareAddr(e.mac)
	if err := sb.setFDB(ctx, mac, e.vtep); err != nil {
		return err
	}
	return sb.setNeighbour(ctx, ip, mac)
}

// unprogram removes a peer's neighbour entry from sb, and its FDB entry
// unless keepFDB.
func (sb *sandbox) unprogram(ctx context.Context, ip netip.Addr, e peerEntry, keepFDB bool) error {
	mac := net.HardwareAddr(e.mac)
	if err := sb.deleteNeighbour(ctx, ip, mac); err != nil {
		return err
	}
	if keepFDB {
		return nil
	}
	return sb.delFDB(ctx, mac, e.vtep)
}

// setNeighbour installs the permanent neighbour entry ip → mac on vxlan0,
// from which the device answers ARP and neighbour solicitations (proxy).
func (sb *sandbox) setNeighbour(ctx context.Context, ip netip.Addr, mac net.HardwareAddr) error {
	return sb.ns.SetNeighbour(ctx, osl.Neighbour{LinkIndex: sb.vxlan, IP: ip, MAC: mac})
}

// deleteNeighbour removes it; one that is not there is not an error.
func (sb *sandbox) deleteNeighbour(ctx context.Context, ip netip.Addr, mac net.HardwareAddr) error {
	return sb.ns.DeleteNeighbour(ctx, osl.Neighbour{LinkIndex: sb.vxlan, IP: ip, MAC: mac})
}
