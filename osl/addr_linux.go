package osl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ipNet converts a prefix, keeping its host bits (an interface address).
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixFrom(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func addrFrom(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

// AddAddress adds addr (address and prefix length, e.g. 10.0.0.2/24) to the
// link with the given index. IPv6 addresses skip duplicate address detection
// (IFA_F_NODAD): cnm's IPAM already guarantees uniqueness, and DAD would keep
// the address unusable for about a second after the join.
//
// Equivalent to: `ip addr add $addr dev $link [nodad]`.
func (ns *Namespace) AddAddress(ctx context.Context, index int, addr netip.Prefix) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: ipNet(addr)}
	if addr.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}, a); err != nil {
		return fmt.Errorf("add address %s to link %d: %w", addr, index, err)
	}
	return nil
}

// DeleteAddress removes addr from the link. An address that is not there is
// not an error.
//
// Equivalent to: `ip addr del $addr dev $link`.
func (ns *Namespace) DeleteAddress(ctx context.Context, index int, addr netip.Prefix) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	err = h.AddrDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}, &netlink.Addr{IPNet: ipNet(addr)})
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete address %s from link %d: %w", addr, index, err)
	}
	return nil
}

// Addresses lists the addresses of the link with the given index (0: of every
// link), link-local ones included.
//
// Equivalent to: `ip addr show dev $link`.
func (ns *Namespace) Addresses(ctx context.Context, index int) ([]netip.Prefix, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := ns.h()
	if err != nil {
		return nil, err
	}
	var link netlink.Link
	if index > 0 {
		link = &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}
	}
	as, err := retryDump("list addresses", func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(as))
	for _, a := range as {
		out = append(out, prefixFrom(a.IPNet))
	}
	return out, nil
}
