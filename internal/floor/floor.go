// Package floor is the baseline that cnm's benchmarks measure against: the
// least kernel work that gives a container the same network as a cnm bridge
// join, written straight on osl with no bookkeeping. It is not part of the
// library; benchmarks and the bench harness use it.
package floor

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/seed53641549/cnm/internal/mac"
	"github.com/seed53641549/cnm/osl"
)

// Network is one bridge with its gateway address, in a host namespace.
type Network struct {
	Host    *osl.Namespace
	Bridge  string
	index   int
	Gateway netip.Prefix // gateway address with the subnet's length
	dir     string

	mu   sync.Mutex // guards next
	next netip.Addr
}

// Container is one container made by [Network.Setup].
type Container struct {
	NS     *osl.Namespace
	HostIf string
	Addr   netip.Prefix
}

// NewNetwork makes a bridge called name with the gateway address gw (for
// example 10.128.0.1/16) in host. Namespaces are bind-mounted under dir.
func NewNetwork(ctx context.Context, host *osl.Namespace, name string, gw netip.Prefix, dir string) (*Network, error) {
	// A fixed MAC, as cnm's bridge driver gives: without one the kernel
	// recomputes the bridge's address (and announces the change) whenever a
	// port comes or goes, which is not work a container needs.
	idx, err := host.AddBridge(ctx, osl.BridgeSpec{Name: name, MAC: mac.Random()})
	if err != nil {
		return nil, err
	}
	if err := host.AddAddress(ctx, idx, gw); err != nil {
		return nil, err
	}
	if err := host.SetLinkUp(ctx, idx); err != nil {
		return nil, err
	}
	return &Network{Host: host, Bridge: name, index: idx, Gateway: gw, dir: dir, next: gw.Addr()}, nil
}

// Delete removes the bridge.
func (n *Network) Delete(ctx context.Context) error { return n.Host.DeleteLink(ctx, n.Bridge) }

// Setup makes container number i: a namespace, one RTM_NEWLINK for the veth
// pair (peer made inside, named eth0; host end on the bridge and up), the
// address, link up and the default route. Addresses are handed out in
// order, with no reuse. Safe for concurrent use with distinct i.
func (n *Network) Setup(ctx context.Context, i int) (*Container, error) {
	n.mu.Lock()
	n.next = n.next.Next()
	addr := netip.PrefixFrom(n.next, n.Gateway.Bits())
	n.mu.Unlock()
	ns, err := osl.NewNamespace(ctx, filepath.Join(n.dir, fmt.Sprintf("floor-%d", i)))
	if err != nil {
		return nil, err
	}
	c := &Container{NS: ns, HostIf: fmt.Sprintf("vf%d", i), Addr: addr}
	err = n.Host.AddVeth(ctx, osl.VethSpec{HostName: c.HostIf, PeerName: "eth0", PeerNS: ns, MasterIndex: n.index})
	if err != nil {
		ns.Delete()
		return nil, err
	}
	l, err := ns.LinkByName(ctx, "eth0")
	if err == nil {
		err = ns.AddAddress(ctx, l.Index, addr)
	}
	if err == nil {
		err = ns.LinkUp(ctx, l.Index, false) // as cnm: no IPv6, no link-local
	}
	if err == nil {
		err = ns.AddRoute(ctx, osl.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: n.Gateway.Addr(), LinkIndex: l.Index})
	}
	if err != nil {
		ns.Delete()
		return nil, err
	}
	return c, nil
}

// Teardown drops the container's namespace; the kernel then destroys it
// with its links, asynchronously.
func (c *Container) Teardown() error { return c.NS.Delete() }
