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
