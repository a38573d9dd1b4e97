//go:build linux

package plugintest

import (
	"context"
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/drivers/bridge"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin/server"
)

// StartBridge serves cnm's bridge driver and an IPAM allocator on a unix
// socket at socket, making its bridges and veth pairs in host.
func StartBridge(ctx context.Context, socket string, host *osl.Namespace) (*BridgePlugin, error) {
	fd, err := host.FD()
	if err != nil {
		return nil, err
	}
	owner := mark.NewOwner()
	fw, err := firewall.New(ctx, fd, owner.Table())
	unix.Close(fd)
	if err != nil {
		return nil, err
	}
	drv, err := bridge.New(bridge.Config{HostNS: host, Firewall: fw, Owner: owner})
	if err != nil {
		fw.Close()
		return nil, err
	}
	alloc, err := ipam.New(ipam.Config{DefaultPools: []ipam.DefaultPool{{Base: netip.MustParsePrefix("10.150.0.0/16"), Size: 24}}})
	if err != nil {
		fw.Close()
		return nil, err
	}
	srv, err := server.New(ctx, server.Config{Driver: drv, Allocator: alloc, HostNS: host})
	if err != nil {
		fw.Close()
		return nil, err
	}
	p := &BridgePlugin{closeFW: func() error {
		return errors.Join(fw.Delete(context.Background()), fw.Close())
	}}
	if p.Server, err = serve(socket, (&httpServer{h: srv}).serve); err != nil {
		fw.Close()
		return nil, err
	}
	return p, nil
}
