package overlay

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/osl"
)

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
