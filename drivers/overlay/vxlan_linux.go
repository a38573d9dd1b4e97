package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// addVXLAN makes a VXLAN device with one RTM_NEWLINK request sent on a
// socket of host, carrying IFLA_NET_NS_FD of target: the kernel opens the
// device's UDP socket in the namespace the request came from (the
// underlay), and makes the device directly inside target, up; a second
// request there makes it a port of spec.master. It is what libnetwork does by making the device
// in the host namespace and moving it, without the move (a move costs ~20
// times a creation). Learning is off and the device answers ARP and
// neighbour solicitations from its neighbour table (proxy). It returns the
// device's index in target.
//
// Equivalent to: `ip link add $name mtu $mtu netns $target master $br up
// type vxlan id $vni local $local dstport $port nolearning proxy`, run in
// host.
func addVXLAN(ctx context.Context, host, target *osl.Namespace, spec vxlanSpec) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	hostH, err := handleIn(host)
	if err != nil {
		return 0, err
	}
	defer hostH.Close()
	fd, err := target.FD()
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	link := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:      spec.name,
			MTU:       spec.mtu,
			Flags:     net.FlagUp,
			Namespace: netlink.NsFd(fd),
		},
		VxlanId:  int(spec.vni),
		SrcAddr:  spec.local.AsSlice(),
		Port:     int(spec.port),
		Learning: false,
		Proxy:    true,
	}
	if err := hostH.LinkAdd(link); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return 0, fmt.Errorf("%w: vxlan device with VNI %d (or port %d) in host namespace %s: %w", driverapi.ErrExists, spec.vni, spec.port, host, err)
		}
		return 0, fmt.Errorf("add vxlan %s (VNI %d, local %s, port %d) in %s: %w", spec.name, spec.vni, spec.local, spec.port, target, err)
	}
	l, err := target.LinkByName(ctx, spec.name)
	if err != nil {
		// The caller drops target, and the device with it.
		return 0, fmt.Errorf("find vxlan %s in %s: %w", spec.name, target, err)
	}
	// IFLA_MASTER in the request above would name a link of the
	// namespace the request came from, not of target: a second request.
	if err := target.SetLinkMaster(ctx, l.Index, spec.master); err != nil {
		return 0, errors.Join(err, target.DeleteLinkIndex(context.WithoutCancel(ctx), l.Index, spec.name))
	}
	return l.Index, nil
}

// vxlanMatches reports whether the link index of ns is a VXLAN device as
// spec (and addVXLAN) describe it: VNI, local address, port, no learning,
// proxy. Its MTU and master are not compared: the caller handles those.
//
// Equivalent to: `ip -d link show $index` and a look at the vxlan line.
func vxlanMatches(ctx context.Context, ns *osl.Namespace, index int, spec vxlanSpec) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	h, err := handleIn(ns)
	if err != nil {
		return false, err
	}
	defer h.Close()
	l, err := h.LinkByIndex(index)
	if err != nil {
		return false, fmt.Errorf("get vxlan %d in %s: %w", index, ns, err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		return false, nil
	}
	src, _ := netip.AddrFromSlice(vx.SrcAddr)
	return vx.VxlanId == int(spec.vni) && src.Unmap() == spec.local && vx.Port == int(spec.port) && !vx.Learning && vx.Proxy, nil
}

// handleIn opens a netlink handle inside ns.
func handleIn(ns *osl.Namespace) (*netlink.Handle, error) {
	fd, err := ns.FD()
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	h, err := netlink.NewHandleAt(netns.NsHandle(fd), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket in %s: %w", ns, err)
	}
	return h, nil
}
