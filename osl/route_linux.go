package osl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func (r Route) nl() *netlink.Route {
	nr := &netlink.Route{LinkIndex: r.LinkIndex, Dst: ipNet(r.Dst)}
	if r.Gateway.IsValid() {
		nr.Gw = r.Gateway.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	return nr
}

// AddRoute adds a route. One that exists already is an error wrapping
// unix.EEXIST.
//
// Equivalent to: `ip route add $dst [via $gw] dev $link`.
func (ns *Namespace) AddRoute(ctx context.Context, r Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.RouteAdd(r.nl()); err != nil {
		return fmt.Errorf("add route %s: %w", r, err)
	}
	return nil
}

// ReplaceRoute adds the route or atomically replaces the one with the same
// destination (and metric), so a sandbox never goes without a default route
// while its gateway moves from one endpoint to another.
//
// Equivalent to: `ip route replace $dst [via $gw] dev $link`.
func (ns *Namespace) ReplaceRoute(ctx context.Context, r Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.RouteReplace(r.nl()); err != nil {
		return fmt.Errorf("replace route %s: %w", r, err)
	}
	return nil
}

// DeleteRoute deletes a route. A route that is not there is not an error.
//
// Equivalent to: `ip route del $dst [via $gw] dev $link`.
func (ns *Namespace) DeleteRoute(ctx context.Context, r Route) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.RouteDel(r.nl()); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

// Routes lists the main table's routes of one family (4 or 6), local and
// kernel-made link routes included.
//
// Equivalent to: `ip -4 route show` / `ip -6 route show`.
func (ns *Namespace) Routes(ctx context.Context, family int) ([]Route, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := ns.h()
	if err != nil {
		return nil, err
	}
	fam := netlink.FAMILY_V4
	if family == 6 {
		fam = netlink.FAMILY_V6
	}
	rs, err := retryDump("list routes", func() ([]netlink.Route, error) { return h.RouteList(nil, fam) })
	if err != nil {
		return nil, err
	}
	out := make([]Route, 0, len(rs))
	for _, r := range rs {
		dst := prefixFrom(r.Dst)
		if !dst.IsValid() { // netlink reports the default route with a nil Dst
			if fam == netlink.FAMILY_V4 {
				dst = netip.MustParsePrefix("0.0.0.0/0")
			} else {
				dst = netip.MustParsePrefix("::/0")
			}
		}
		out = append(out, Route{Dst: dst, Gateway: addrFrom(r.Gw), LinkIndex: r.LinkIndex})
	}
	return out, nil
}
