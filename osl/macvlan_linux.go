package osl

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// AddMacvlan makes a macvlan link on the parent ParentIndex of ns, directly
// inside spec.NS, already named, with its MAC and MTU, and down (the caller
// brings it up once it is configured). Like [Namespace.AddVeth] it is one
// RTM_NEWLINK request sent on ns's socket: IFLA_LINK names the parent in ns,
// IFLA_NET_NS_FD the namespace the link is born in. Nothing is made and then
// moved (DESIGN.md, "Where the time goes").
//
// The request is atomic: on error no link exists. A name taken in spec.NS
// is an error wrapping unix.EEXIST; a parent that does not exist one
// wrapping unix.ENODEV.
//
// Equivalent to: `ip link add link $parent name $name netns $ns address
// $mac mtu $mtu type macvlan mode $mode`.
func (ns *Namespace) AddMacvlan(ctx context.Context, spec MacvlanSpec) error {
	if spec.Mode == 0 {
		return fmt.Errorf("add macvlan %s: no mode", spec.Name)
	}
	return ns.addLowerLink(ctx, lowerLink{
		kind: "macvlan", name: spec.Name, parent: spec.ParentIndex, target: spec.NS, mac: spec.MAC, mtu: spec.MTU,
		data: func(d *nl.RtAttr) { d.AddRtAttr(nl.IFLA_MACVLAN_MODE, nl.Uint32Attr(uint32(spec.Mode))) },
	})
}

// AddIPvlan makes an ipvlan link on the parent ParentIndex of ns, directly
// inside spec.NS, in one request, like [Namespace.AddMacvlan]. An ipvlan link
// always has its parent's MAC, so there is no MAC to give. A kernel without
// ipvlan gives an error wrapping [ErrKindNotSupported].
//
// Equivalent to: `ip link add link $parent name $name netns $ns mtu $mtu
// type ipvlan mode $mode`.
func (ns *Namespace) AddIPvlan(ctx context.Context, spec IPvlanSpec) error {
	return ns.addLowerLink(ctx, lowerLink{
		kind: "ipvlan", name: spec.Name, parent: spec.ParentIndex, target: spec.NS, mtu: spec.MTU,
		data: func(d *nl.RtAttr) { d.AddRtAttr(nl.IFLA_IPVLAN_MODE, nl.Uint16Attr(uint16(spec.Mode))) },
	})
}

// AddVLAN makes an 802.1Q sub-interface of ParentIndex in ns, up, with its
// alias, and returns its index. Its MTU is the parent's. A kernel without 802.1Q support (no
// 8021q module) gives an error wrapping [ErrKindNotSupported]; a taken name
// one wrapping unix.EEXIST. On error no link exists.
//
// Equivalent to: `ip link add link $parent name $name up type vlan id $id`.
func (ns *Namespace) AddVLAN(ctx context.Context, spec VLANSpec) (int, error) {
	if spec.ID < 1 || spec.ID > 4094 {
		return 0, fmt.Errorf("add vlan %s: id %d out of range 1-4094", spec.Name, spec.ID)
	}
	err := ns.addLowerLink(ctx, lowerLink{
		kind: "vlan", name: spec.Name, parent: spec.ParentIndex, up: true,
		data: func(d *nl.RtAttr) { d.AddRtAttr(nl.IFLA_VLAN_ID, nl.Uint16Attr(uint16(spec.ID))) },
	})
	if err != nil {
		return 0, err
	}
	l, err := ns.LinkByName(ctx, spec.Name)
	if err == nil && spec.Alias != "" {
		err = ns.SetLinkAlias(ctx, l.Index, spec.Alias)
	}
	if err != nil {
		_ = ns.DeleteLink(context.WithoutCancel(ctx), spec.Name)
		return 0, err
	}
	return l.Index, nil
}

// SetLinkAlias sets the link's alias (IFLA_IFALIAS), the free text by which
// cnm marks the links it made so that it recognises them after a restart.
//
// Equivalent to: `ip link set $link alias $alias`.
func (ns *Namespace) SetLinkAlias(ctx context.Context, index int, alias string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.LinkSetAlias(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}, alias); err != nil {
		return fmt.Errorf("set alias of link %d: %w", index, err)
	}
	return nil
}

// lowerLink is a link made with one request, most on top of a parent:
// macvlan, ipvlan, vlan; vxlan has none.
type lowerLink struct {
	kind   string
	name   string
	parent int
	target *Namespace // nil: the receiving namespace
	mac    net.HardwareAddr
	mtu    int
	master int // bridge in target (IFLA_MASTER); 0: none
	up     bool
	data   func(*nl.RtAttr) // fills IFLA_INFO_DATA
}

// addLowerLink sends the one RTM_NEWLINK request that makes l.
func (ns *Namespace) addLowerLink(ctx context.Context, l lowerLink) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	where := ns.path
	attrs := linkAttrs{name: l.name, parent: l.parent, mtu: l.mtu, mac: l.mac, master: l.master}
	if l.target != nil && l.target != ns {
		fd, err := l.target.FD()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		attrs.inNS, attrs.nsFD, where = true, fd, l.target.path
	}
	req, err := ns.rawRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	if err != nil {
		return err
	}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	if l.up {
		msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	}
	req.AddData(msg)
	for _, a := range attrs.list() {
		req.AddData(a)
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated(l.kind))
	if l.data != nil {
		l.data(info.AddRtAttr(nl.IFLA_INFO_DATA, nil))
	}
	req.AddData(info)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			// rtnl_newlink found no driver for the kind, even after asking
			// for its module ("Unknown device type").
			return fmt.Errorf("add %s link %s: %w: %w", l.kind, l.name, ErrKindNotSupported, err)
		}
		if l.parent == 0 {
			return fmt.Errorf("add %s link %s in %s: %w", l.kind, l.name, where, err)
		}
		return fmt.Errorf("add %s link %s on parent %d in %s: %w", l.kind, l.name, l.parent, where, err)
	}
	return nil
}
