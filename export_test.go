package cnm

import (
	"context"
	"net/netip"

	"github.com/seed53641549/cnm/ipam"

	"github.com/seed53641549/cnm/store"
)

// SetFaultHook makes step fail the named steps of multi-step operations.
// Tests only.
func SetFaultHook(c *Controller, fn func(step string) error) {
	if fn == nil {
		c.faultHook.Store(nil)
		return
	}
	c.faultHook.Store(&fn)
}

// Steps lists the names of the steps a fault hook can fail, by operation.
var Steps = map[string][]string{
	"network":  {stepNetworkIPAM, stepNetworkDriver, stepNetworkGlobal, stepNetworkCommit},
	"endpoint": {stepEndpointIPv4, stepEndpointIPv6, stepEndpointService, stepEndpointDriver, stepEndpointGlobal, stepEndpointCommit},
	"join":     {stepJoinDriver, stepJoinInterface, stepJoinRoutes, stepJoinGateway, stepGatewayIPv6, stepJoinHosts, stepJoinExternal, stepJoinServices, stepJoinDNS, stepJoinCommit},
	"sandbox":  {stepSandboxNamespace, stepSandboxFiles, stepSandboxCommit},
	"leave":    {stepLeave},
	"delete":   {stepNetworkDelete, stepSandboxDetach},
}

// Retracting returns how many global networks whose creation was not
// answered the controller is still retracting. Tests only.
func Retracting(c *Controller) int { return int(c.global.retracting.Load()) }

// HealPendingLinks returns how many links' changes the healer has
// gathered and not yet handed to a heal. Tests only.
func HealPendingLinks(c *Controller) int {
	c.healer.mu.Lock()
	defer c.healer.mu.Unlock()
	return len(c.healer.links)
}

// IsOrphan reports whether another host deleted global network n while
// this host had endpoints on it (being made included). Tests only.
func IsOrphan(n *Network) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.orphan
}

// RetiredPrefix starts the name of an interface a leave took out of use,
// until the background removal deletes it. Tests only.
const RetiredPrefix = retiredPrefix

// PeerWatches returns how many watches of global networks' peers the
// controller runs and has started in all. Tests only.
func PeerWatches(c *Controller) (running int, started int64) {
	t := &c.global.peers
	t.watchMu.Lock()
	defer t.watchMu.Unlock()
	return len(t.watches), t.started.Load()
}

// PendingGlobalNetworks returns how many global networks the controller
// has seen and not taken yet. Tests only.
func PendingGlobalNetworks(c *Controller) int {
	c.global.pendingMu.Lock()
	defer c.global.pendingMu.Unlock()
	return len(c.global.pending)
}

// WrapStores replaces the controller's stores with wrap(store). Tests only.
func WrapStores(c *Controller, wrap func(store.Store) store.Store) {
	c.store, c.runtime = wrap(c.store), wrap(c.runtime)
}

// SandboxDNS returns the name servers a sandbox's configuration holds.
// Tests only.
func SandboxDNS(sb *Sandbox) []netip.Addr { return sb.cfg.dns }

// SetHealFault makes the controller's heals fail with what fn returns
// (nil: heal). Tests only.
func SetHealFault(c *Controller, fn func() error) {
	c.healer.mu.Lock()
	c.healer.fault = fn
	c.healer.mu.Unlock()
}

// WithWatchBuffer sets the receive buffer of the controller's watchers.
// Tests only: a small one provokes overruns.
func WithWatchBuffer(n int) Option {
	return func(c *config) error {
		c.watchBuffer = n
		return nil
	}
}

// LeakGlobalReservations reserves a pool of subnet and a VXLAN ID in the
// global store as a NewNetwork that crashed before recording its network
// would have.
func LeakGlobalReservations(c *Controller, subnet netip.Prefix) error {
	ctx := context.Background()
	if _, err := c.global.addrs.RequestPool(ctx, ipam.PoolRequest{Subnet: subnet}); err != nil {
		return err
	}
	_, err := c.global.vxlan().Request(ctx)
	return err
}
