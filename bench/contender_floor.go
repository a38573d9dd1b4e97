//go:build linux

package main

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/seed53641549/cnm/internal/floor"
	"github.com/seed53641549/cnm/osl"
)

// floorContender is the least kernel work with the same result, straight
// on netlink (internal/floor).
type floorContender struct {
	nw  *floor.Network
	dir string // where namespaces are bind-mounted
}

func newFloor(ctx context.Context, host *osl.Namespace, bridge string, gw netip.Prefix, dir string) (*floorContender, error) {
	nw, err := floor.NewNetwork(ctx, host, bridge, gw, dir)
	if err != nil {
		return nil, err
	}
	return &floorContender{nw: nw, dir: dir}, nil
}

func (f *floorContender) name() string { return "floor" }

// setup makes container i. Its leave is one RTM_DELLINK of the veth, sent
// on the container's own netlink socket (the peer, eth0, deleted from
// inside takes the host end with it): the least work, and nothing shared
// between containers, so parallel leaves wait only on the kernel. A
// netlink socket serves one request at a time (vishvananda/netlink holds
// it from send to acknowledgement), so deletions through the host
// namespace's one socket wait on each other; leaveOnHost does that.
func (f *floorContender) setup(ctx context.Context, i int) (*box, error) {
	c, err := f.nw.Setup(ctx, i)
	if err != nil {
		return nil, err
	}
	return &box{
		key:         c.NS.Path(),
		addr:        c.Addr,
		teardown:    func(context.Context) error { return c.Teardown() },
		leave:       func(ctx context.Context) error { return c.NS.DeleteLink(ctx, "eth0") },
		afterLeave:  func(context.Context) error { return c.Teardown() },
		leaveOnHost: func(ctx context.Context) error { return f.nw.Host.DeleteLink(ctx, c.HostIf) },
	}, nil
}

// sandbox makes namespace i alone: unshare, bind mount, loopback up (what
// floor.Network.Setup begins with).
func (f *floorContender) sandbox(ctx context.Context, i int) (func(context.Context) error, error) {
	ns, err := osl.NewNamespace(ctx, filepath.Join(f.dir, fmt.Sprintf("floor-%d", i)))
	if err != nil {
		return nil, err
	}
	return func(context.Context) error { return ns.Delete() }, nil
}

func (f *floorContender) close(ctx context.Context) error { return f.nw.Delete(ctx) }
