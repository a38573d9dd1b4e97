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

func linkFrom(l netlink.Link) Link {
	a := l.Attrs()
	return Link{
		Index:       a.Index,
		Name:        a.Name,
		Kind:        l.Type(),
		MAC:         a.HardwareAddr,
		MTU:         a.MTU,
		Up:          a.Flags&net.FlagUp != 0,
		MasterIndex: a.MasterIndex,
		PeerIndex:   a.ParentIndex,
		Alias:       a.Alias,
		VXLAN:       vxlanOf(l),
	}
}

// LinkByName returns the link called name. A missing link is reported with
// an error wrapping [ErrLinkNotFound].
//
// Equivalent to: `ip link show $name`.
func (ns *Namespace) LinkByName(ctx context.Context, name string) (Link, error) {
	if err := ctx.Err(); err != nil {
		return Link{}, err
	}
	h, err := ns.h()
	if err != nil {
		return Link{}, err
	}
	l, err := retryDump("get link "+name, func() (netlink.Link, error) { return h.LinkByName(name) })
	if err != nil {
		if isLinkNotFound(err) {
			return Link{}, fmt.Errorf("link %q in %s: %w", name, ns.path, ErrLinkNotFound)
		}
		return Link{}, fmt.Errorf("get link %q: %w", name, err)
	}
	return linkFrom(l), nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// LinkByIndex returns the link with the given index. A missing link is
// reported with an error wrapping [ErrLinkNotFound].
//
// Equivalent to: `ip link show` filtered by index.
func (ns *Namespace) LinkByIndex(ctx context.Context, index int) (Link, error) {
	if err := ctx.Err(); err != nil {
		return Link{}, err
	}
	h, err := ns.h()
	if err != nil {
		return Link{}, err
	}
	l, err := h.LinkByIndex(index)
	if err != nil {
		if isLinkNotFound(err) {
			return Link{}, fmt.Errorf("link %d in %s: %w", index, ns.path, ErrLinkNotFound)
		}
		return Link{}, fmt.Errorf("get link %d: %w", index, err)
	}
	return linkFrom(l), nil
}

// Links lists every link of the namespace.
//
// Equivalent to: `ip link show`.
func (ns *Namespace) Links(ctx context.Context) ([]Link, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := ns.h()
	if err != nil {
		return nil, err
	}
	ls, err := retryDump("list links", h.LinkList)
	if err != nil {
		return nil, err
	}
	out := make([]Link, 0, len(ls))
	for _, l := range ls {
		out = append(out, linkFrom(l))
	}
	return out, nil
}

// AddBridge makes a bridge, down, and returns its index. The caller brings it
// up once its address is set. A bridge of that name that already exists is
// reported with an error wrapping unix.EEXIST.
//
// Equivalent to: `ip link add $name mtu $mtu address $mac type bridge`.
func (ns *Namespace) AddBridge(ctx context.Context, spec BridgeSpec) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	h, err := ns.h()
	if err != nil {
		return 0, err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = spec.Name
	attrs.MTU = spec.MTU
	attrs.HardwareAddr = spec.MAC
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := h.LinkAdd(br); err != nil {
		return 0, fmt.Errorf("add bridge %s: %w", spec.Name, err)
	}
	if spec.Alias != "" {
		if err := h.LinkSetAlias(br, spec.Alias); err != nil {
			_ = h.LinkDel(br)
			return 0, fmt.Errorf("set alias of bridge %s: %w", spec.Name, err)
		}
	}
	return br.Index, nil
}

// AddVeth makes a veth pair in one RTM_NEWLINK request: the host end in ns,
// already up and already a port of the bridge MasterIndex; the peer end
// directly inside PeerNS, already named PeerName, with its MAC, and down (the
// caller brings it up once it is configured, with [Namespace.SetLinkUp]). Nothing
// is made and then moved: moving a link between namespaces costs ~20 times as
// much as making it (DESIGN.md, "Where the time goes").
//
// Equivalent to: `ip link add $host mtu $mtu master $br up type veth peer
// name $peer address $mac netns $peerns`.
// The request is atomic: on error neither end exists.
func (ns *Namespace) AddVeth(ctx context.Context, spec VethSpec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if spec.PeerNS == nil {
		return fmt.Errorf("add veth %s: no peer namespace", spec.HostName)
	}
	peerFD, err := spec.PeerNS.FD()
	if err != nil {
		return err
	}
	defer unix.Close(peerFD)

	req, err := ns.rawRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	if err != nil {
		return err
	}
	host := nl.NewIfInfomsg(unix.AF_UNSPEC)
	host.Flags, host.Change = unix.IFF_UP, unix.IFF_UP
	req.AddData(host)
	for _, a := range (linkAttrs{name: spec.HostName, mtu: spec.MTU, master: spec.MasterIndex}).list() {
		req.AddData(a)
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	peer := info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.VETH_INFO_PEER, nil)
	// The peer cannot be made up in this request: the kernel configures it
	// before the pair is linked, and veth_open then fails with ENOTCONN.
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	for _, a := range (linkAttrs{name: spec.PeerName, mtu: spec.MTU, mac: spec.PeerMAC, inNS: true, nsFD: peerFD}).list() {
		peer.AddChild(a)
	}
	req.AddData(info)

	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("add veth %s (peer %s in %s): %w", spec.HostName, spec.PeerName, spec.PeerNS.path, err)
	}
	return nil
}

// DeleteLink deletes the link called name; for a veth pair both ends go. A
// link that does not exist is not an error.
//
// A deletion keeps the kernel busy for 20-30 ms. It runs on a socket of its
// own, so other requests on the namespace do not wait for it, and several
// deletions run side by side.
//
// Equivalent to: `ip link del $name`.
func (ns *Namespace) DeleteLink(ctx context.Context, name string) error {
	return ns.deleteLink(ctx, 0, name)
}

// DeleteLinkIndex deletes the link with the given index, if it is still
// called name (an index is not reused soon, but a name check costs nothing:
// both travel in the one request, and the kernel matches the index). A link
// that does not exist is not an error.
func (ns *Namespace) DeleteLinkIndex(ctx context.Context, index int, name string) error {
	return ns.deleteLink(ctx, index, name)
}

func (ns *Namespace) deleteLink(ctx context.Context, index int, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if index > 0 {
		// The kernel looks a link up by index first and ignores the name,
		// so check the name before: a link with this index and another
		// name is not the one meant.
		l, err := ns.LinkByIndex(ctx, index)
		if errors.Is(err, ErrLinkNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if l.Name != name {
			return nil
		}
	}
	return ns.withSpare(func(sock *nl.SocketHandle) error {
		// Delete in one request (netlink.Handle.LinkDel would first look
		// the index up, a second round trip).
		req := newRequest(sock, unix.RTM_DELLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(index)
		req.AddData(msg)
		if index == 0 {
			req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
		}
		if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !isLinkNotFound(err) {
			return fmt.Errorf("delete link %s: %w", name, err)
		}
		return nil
	})
}

// RetireLink takes a link out of use at once, so that its name is free and
// it carries no traffic, without waiting for a deletion: it brings the link
// down (which removes its routes and IPv6 addresses, and takes the carrier
// from a veth peer) and renames it to newName. The caller deletes it later.
//
// Equivalent to: `ip link set $link down`, then `ip link set $link name $newName`.
func (ns *Namespace) RetireLink(ctx context.Context, index int, newName string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// The kernel renames a link only while it is down, and applies a
	// name before flags within one request: two requests.
	for _, set := range []func(*nl.NetlinkRequest){
		func(req *nl.NetlinkRequest) {
			msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
			msg.Index, msg.Change = int32(index), unix.IFF_UP
			req.AddData(msg)
		},
		func(req *nl.NetlinkRequest) {
			msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
			msg.Index = int32(index)
			req.AddData(msg)
			req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(newName)))
		},
	} {
		req, err := ns.rawRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
		if err != nil {
			return err
		}
		set(req)
		if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
			if isLinkNotFound(err) {
				return fmt.Errorf("retire link %d in %s: %w", index, ns.path, ErrLinkNotFound)
			}
			return fmt.Errorf("retire link %d as %s: %w", index, newName, err)
		}
	}
	return nil
}

// rawRequest starts a request on the namespace's own socket, for messages
// netlink.Handle cannot build.
func (ns *Namespace) rawRequest(typ, flags int) (*nl.NetlinkRequest, error) {
	ns.mu.Lock()
	raw := ns.raw
	ns.mu.Unlock()
	if raw == nil {
		return nil, fmt.Errorf("namespace %s: %w", ns.path, ErrClosed)
	}
	return newRequest(raw, typ, flags), nil
}

// newRequest starts a request on the socket sock.
func newRequest(sock *nl.SocketHandle, typ, flags int) *nl.NetlinkRequest {
	return &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{
			Len:   unix.SizeofNlMsghdr,
			Type:  uint16(typ),
			Flags: unix.NLM_F_REQUEST | uint16(flags),
		},
		Sockets: map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: sock},
	}
}

// SetLinkUp brings the link with the given index up.
//
// Equivalent to: `ip link set $link up`.
func (ns *Namespace) SetLinkUp(ctx context.Context, index int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}); err != nil {
		return fmt.Errorf("set link %d up: %w", index, err)
	}
	return nil
}

// SetLinkDown takes the link with the given index down.
//
// Equivalent to: `ip link set $link down`.
func (ns *Namespace) SetLinkDown(ctx context.Context, index int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.LinkSetDown(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}); err != nil {
		return fmt.Errorf("set link %d down: %w", index, err)
	}
	return nil
}

// MoveLink moves the link called name from ns into the namespace to, renames
// it newName there and brings it up. It serves drivers that hand over an
// interface they made elsewhere (remote plugins); drivers of this module make
// interfaces in place instead. On error after the move, the link is moved back
// under its old name so the caller's rollback finds it where it was.
//
// Equivalent to: `ip link set $name netns $to`, then inside
// `ip link set $name name $newName up`.
func (ns *Namespace) MoveLink(ctx context.Context, name string, to *Namespace, newName string) (retErr error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	th, err := to.h()
	if err != nil {
		return err
	}
	l, err := ns.LinkByName(ctx, name)
	if err != nil {
		return err
	}
	toFD, err := to.FD()
	if err != nil {
		return err
	}
	defer unix.Close(toFD)
	if err := h.LinkSetNsFd(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: l.Index}}, toFD); err != nil {
		return fmt.Errorf("move link %s into %s: %w", name, to.path, err)
	}
	moved, err := to.LinkByName(ctx, name)
	if err != nil {
		return err
	}
	dev := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: moved.Index}}
	defer func() {
		if retErr != nil {
			if fromFD, err := ns.FD(); err == nil {
				_ = th.LinkSetName(dev, name)
				_ = th.LinkSetNsFd(dev, fromFD)
				unix.Close(fromFD)
			}
		}
	}()
	if newName != "" && newName != name {
		if err := th.LinkSetName(dev, newName); err != nil {
			return fmt.Errorf("rename link %s to %s: %w", name, newName, err)
		}
	}
	if err := th.LinkSetUp(dev); err != nil {
		return fmt.Errorf("set link %s up: %w", newName, err)
	}
	return nil
}

// SetBridgePortIsolated marks the bridge port called name isolated (or not):
// the bridge forwards no frame between two isolated ports, while both still
// reach the bridge itself and non-isolated ports. This enforces "no traffic
// between containers" at layer 2, without netfilter.
//
// Equivalent to: `bridge link set dev $name isolated on`.
func (ns *Namespace) SetBridgePortIsolated(ctx context.Context, name string, isolated bool) error {
	return ns.setBridgePort(ctx, name, "isolated", isolated, (*netlink.Handle).LinkSetIsolated)
}

// SetBridgePortHairpin lets the bridge send frames back out of the port
// called name that they came in by ("hairpin", 802.1Qbg reflective relay).
// It is the switch side of macvlan VEPA mode: with it, macvlan links in VEPA
// mode on a parent plugged into that port reach each other through the
// switch. Tests and examples use it to play the external switch.
//
// Equivalent to: `bridge link set dev $name hairpin on`.
func (ns *Namespace) SetBridgePortHairpin(ctx context.Context, name string, on bool) error {
	return ns.setBridgePort(ctx, name, "hairpin", on, (*netlink.Handle).LinkSetHairpin)
}

// setBridgePort sets one flag of the bridge port called name. The bridge
// takes port flags by index only (RTM_SETLINK for AF_BRIDGE), hence the
// lookup.
func (ns *Namespace) setBridgePort(ctx context.Context, name, flag string, on bool, set func(*netlink.Handle, netlink.Link, bool) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	l, err := ns.LinkByName(ctx, name)
	if err != nil {
		return err
	}
	if err := set(h, &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: l.Index}}, on); err != nil {
		return fmt.Errorf("set bridge port %s %s=%v: %w", name, flag, on, err)
	}
	return nil
}

// IPv6 address generation modes (IN6_ADDR_GEN_MODE_* in <linux/if_link.h>).
const (
	addrGenEUI64 = 0
	addrGenNone  = 1
)

// LinkUp brings a link up and, in the same request, says whether it gets an
// IPv6 link-local address (addrgenmode eui64 or none). An interface with no
// IPv6 addressing needs none: its duplicate address detection and multicast
// listener messages would be flooded by the bridge to every other port, work
// that grows with the number of containers on the bridge (measured: without
// it, the 1,000th container on one bridge took 14 times as long to set up as
// the 10th). Only the container's end matters: what the host end of a veth
// sends reaches its own peer alone. The mode must be set before the link
// gets carrier, which is why it travels with the up.
//
// Equivalent to: `ip link set $link addrgenmode eui64|none up`.
func (ns *Namespace) LinkUp(ctx context.Context, index int, linkLocal bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	mode := uint8(addrGenNone)
	if linkLocal {
		mode = addrGenEUI64
	}
	if err := ns.setAddrGenMode(index, mode, true); err != nil {
		return fmt.Errorf("set link %d up (link-local %v): %w", index, linkLocal, err)
	}
	return nil
}

// SetLinkMTU sets the link's MTU.
//
// Equivalent to: `ip link set $link mtu $mtu`.
func (ns *Namespace) SetLinkMTU(ctx context.Context, index, mtu int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.LinkSetMTU(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}, mtu); err != nil {
		return fmt.Errorf("set link %d mtu %d: %w", index, mtu, err)
	}
	return nil
}

// SetLinkMaster makes the link with the given index a port of the bridge
// masterIndex.
//
// Equivalent to: `ip link set $link master $bridge`.
func (ns *Namespace) SetLinkMaster(ctx context.Context, index, masterIndex int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := ns.h()
	if err != nil {
		return err
	}
	if err := h.LinkSetMasterByIndex(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}, masterIndex); err != nil {
		return fmt.Errorf("set master of link %d to %d: %w", index, masterIndex, err)
	}
	return nil
}

// linkAttrs are the attributes of a link made by an RTM_NEWLINK request.
type linkAttrs struct {
	name   string
	mtu    int              // 0: the kernel's default
	mac    net.HardwareAddr // nil: the kernel's choice
	master int              // bridge to join (IFLA_MASTER); 0: none
	parent int              // lower link (IFLA_LINK); 0: none
	inNS   bool             // make the link in the namespace nsFD (IFLA_NET_NS_FD)
	nsFD   int
}

// list returns the attributes that are set.
func (a linkAttrs) list() []*nl.RtAttr {
	attrs := []*nl.RtAttr{nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(a.name))}
	add := func(typ int, data []byte) { attrs = append(attrs, nl.NewRtAttr(typ, data)) }
	if a.parent > 0 {
		add(unix.IFLA_LINK, nl.Uint32Attr(uint32(a.parent)))
	}
	if a.mtu > 0 {
		add(unix.IFLA_MTU, nl.Uint32Attr(uint32(a.mtu)))
	}
	if a.mac != nil {
		add(unix.IFLA_ADDRESS, []byte(a.mac))
	}
	if a.master > 0 {
		add(unix.IFLA_MASTER, nl.Uint32Attr(uint32(a.master)))
	}
	if a.inNS {
		add(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(a.nsFD)))
	}
	return attrs
}

// SetNoLinkLocal sets the link's IPv6 address generation to none while it
// is down, so it never gets a link-local address. [Namespace.LinkUp] sets the
// mode together with the up, which is early enough for links whose carrier
// comes later (a veth end waits for its peer); a bridge without ports has
// carrier at once, and the kernel makes the link-local address as the up is
// applied, before the mode in the same request. Such links need this first.
//
// Equivalent to: `ip link set $link addrgenmode none`.
func (ns *Namespace) SetNoLinkLocal(ctx context.Context, index int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := ns.setAddrGenMode(index, addrGenNone, false); err != nil {
		return fmt.Errorf("set link %d addrgenmode none: %w", index, err)
	}
	return nil
}

// setAddrGenMode sets a link's IPv6 address generation mode in one
// RTM_NEWLINK (IFLA_AF_SPEC), bringing the link up in the same request if up.
func (ns *Namespace) setAddrGenMode(index int, mode uint8, up bool) error {
	req, err := ns.rawRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	if err != nil {
		return err
	}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	if up {
		msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	}
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET6, nil).AddRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, nl.Uint8Attr(mode))
	req.AddData(spec)
	_, err = req.Execute(unix.NETLINK_ROUTE, 0)
	if errors.Is(err, unix.EAFNOSUPPORT) && mode == addrGenNone {
		// A link with an MTU below 1280 has no IPv6 at all (the kernel
		// refuses IPv6 settings for it), so no link-local address either:
		// the up alone is what was asked.
		if !up {
			return nil
		}
		req, err := ns.rawRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
		if err != nil {
			return err
		}
		req.AddData(msg)
		_, err = req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	}
	return err
}
