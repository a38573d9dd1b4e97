package osl

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func (n Neighbour) nl() *netlink.Neigh {
	fam := netlink.FAMILY_V4
	if n.IP.Is6() {
		fam = netlink.FAMILY_V6
	}
	return &netlink.Neigh{
		LinkIndex:    n.LinkIndex,
		Family:       fam,
		State:        netlink.NUD_PERMANENT,
		IP:           n.IP.AsSlice(),
		HardwareAddr: n.MAC,
	}
}

// SetNeighbour adds or replaces a permanent neighbour entry.
//
// Equivalent to: `ip neigh replace $ip lladdr $mac dev $link nud permanent`.
func (ns *Namespace) SetNeighbour(ctx context.Context, n Neighbour) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.NeighSet(n.nl()); err != nil {
		return fmt.Errorf("set neighbour %s lladdr %s dev %d: %w", n.IP, n.MAC, n.LinkIndex, err)
	}
	return nil
}

// DeleteNeighbour deletes a neighbour entry. One that is not there is not an
// error.
//
// Equivalent to: `ip neigh del $ip dev $link`.
func (ns *Namespace) DeleteNeighbour(ctx context.Context, n Neighbour) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.NeighDel(n.nl()); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete neighbour %s dev %d: %w", n.IP, n.LinkIndex, err)
	}
	return nil
}

// Neighbours lists the permanent neighbour entries of one link (0: all links).
//
// Equivalent to: `ip neigh show nud permanent`.
func (ns *Namespace) Neighbours(ctx context.Context, index int) ([]Neighbour, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := ns.h()
	if err != nil {
		return nil, err
	}
	list, err := retryDump("list neighbours", func() ([]netlink.Neigh, error) { return h.NeighList(index, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	var out []Neighbour
	for _, n := range list {
		if n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		out = append(out, Neighbour{LinkIndex: n.LinkIndex, IP: addrFrom(n.IP), MAC: n.HardwareAddr})
	}
	return out, nil
}

func (e FDBEntry) nl() *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    e.LinkIndex,
		Family:       unix.AF_BRIDGE,
		Flags:        netlink.NTF_SELF,
		State:        netlink.NUD_PERMANENT | netlink.NUD_NOARP,
		IP:           e.VTEP.AsSlice(),
		HardwareAddr: e.MAC,
	}
}

// SetFDB adds or replaces a static FDB entry of a VXLAN device.
//
// Equivalent to: `bridge fdb replace $mac dev $vxlan dst $vtep self permanent`.
func (ns *Namespace) SetFDB(ctx context.Context, e FDBEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.NeighSet(e.nl()); err != nil {
		return fmt.Errorf("set fdb %s dst %s dev %d: %w", e.MAC, e.VTEP, e.LinkIndex, err)
	}
	return nil
}

// DeleteFDB deletes a static FDB entry of a VXLAN device; one that is not
// there, or whose device is gone, is not an error (as for
// [Namespace.DeleteNeighbour]).
//
// Equivalent to: `bridge fdb del $mac dev $vxlan dst $vtep self`.
func (ns *Namespace) DeleteFDB(ctx context.Context, e FDBEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.NeighDel(e.nl()); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete fdb %s dst %s dev %d: %w", e.MAC, e.VTEP, e.LinkIndex, err)
	}
	return nil
}

// FDB returns the permanent FDB entries of the VXLAN device index: its
// own (with a remote VTEP), in the kernel's order; not those of the
// bridge it is a port of (no VTEP).
//
// Equivalent to: `bridge fdb show dev $vxlan`.
func (ns *Namespace) FDB(ctx context.Context, index int) ([]FDBEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := ns.h()
	if err != nil {
		return nil, err
	}
	list, err := retryDump("list fdb", func() ([]netlink.Neigh, error) { return h.NeighList(index, unix.AF_BRIDGE) })
	if err != nil {
		return nil, fmt.Errorf("list fdb of dev %d: %w", index, err)
	}
	var out []FDBEntry
	for _, n := range list {
		if n.State&netlink.NUD_PERMANENT == 0 || n.IP == nil || n.Flags&netlink.NTF_MASTER != 0 {
			continue
		}
		out = append(out, FDBEntry{LinkIndex: index, MAC: n.HardwareAddr, VTEP: addrFrom(n.IP)})
	}
	return out, nil
}
