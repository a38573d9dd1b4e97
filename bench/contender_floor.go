package main

import (
	"context"
	"net/netip"

	"github.com/seed53641549/cnm/internal/floor"
	"github.com/seed53641549/cnm/osl"
)

// floorContender is the least kernel work with the same result, straight
// on netlink (internal/floor).
type floorContender struct{ nw *floor.Network }

func newFloor(ctx context.Context, host *osl.Namespace, bridge string, gw netip.Prefix, dir string) (*floorContender, error) {
	nw, err := floor.NewNetwork(ctx, host, bridge, gw, dir)
	if err != nil {
		return nil, err
	}
	return &floorContender{nw: nw}, nil
}

func (f *floorContender) name() string { return "floor" }

func (f *floorContender) setup(ctx context.Context, i int) (*box, error) {
	c, err := f.nw.Setup(ctx, i)
	if err != nil {
		return nil, err
	}
	return &box{
		key:      c.NS.Path(),
		addr:     c.Addr,
		teardown: func(context.Context) error { return c.Teardown() },
		leave:    func(ctx context.Context) error { return f.nw.Host.DeleteLink(ctx, c.HostIf) },
	}, nil
}

func (f *floorContender) close(ctx context.Context) error { return f.nw.Delete(ctx) }
