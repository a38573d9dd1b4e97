package cnm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/overlay"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// Global networks: made on one host, recorded in etcd, taken by every
// host's controller from its watch of networks/.

// isGlobalDriver reports whether drv's networks are cnm's global ones
// (records in etcd, peers, egress): those of the overlay driver. A remote
// plugin of global scope keeps its networks' state itself, as Docker's do.
func isGlobalDriver(drv driverapi.Driver) bool {
	_, ok := drv.(*overlay.Driver)
	return ok
}

// checkGlobalConfig refuses what a global network cannot have: an IPAM
// driver other than the global one, or a family without a subnet (the
// global address space has no default pools).
func (c *Controller) checkGlobalConfig(driverName, name string, cfg *networkConfig) error {
	if cfg.ipamDriver != "" && cfg.ipamDriver != globalIPAMDriver {
		return fmt.Errorf("%w: network %q: ipam driver %q: %s networks take their addresses from the global address space (ipam driver %q)",
			ErrInvalid, name, cfg.ipamDriver, driverName, globalIPAMDriver)
	}
	if cfg.ipv4 == nil || !cfg.ipv4.Subnet.IsValid() {
		return fmt.Errorf("%w: network %q: ipv4 subnet: required for %s networks (the global address space has no default pools)", ErrInvalid, name, driverName)
	}
	if cfg.ipv6 != nil && !cfg.ipv6.Subnet.IsValid() {
		return fmt.Errorf("%w: network %q: ipv6 subnet: required for %s networks", ErrInvalid, name, driverName)
	}
	if cfg.ipv4.IPRange.IsValid() || (cfg.ipv6 != nil && cfg.ipv6.IPRange.IsValid()) {
		return fmt.Errorf("%w: network %q: ip-range: not supported on %s networks (each host allocates from blocks of the whole subnet)", ErrInvalid, name, driverName)
	}
	return nil
}

// requestVNI allocates the network's VXLAN ID (the one its options name,
// or the next free one) and writes it into its options.
func (g *globalPlane) requestVNI(ctx context.Context, n *Network) error {
	opts := maps.Clone(n.options)
	if opts == nil {
		opts = map[string]string{}
	}
	var id uint32
	if v, ok := opts[overlay.OptionVNI]; ok {
		var err error
		if id, err = overlay.ParseVNI(v); err != nil {
			return err
		}
		if err := g.vxlan().RequestID(ctx, id); err != nil {
			return fmt.Errorf("option %s=%q: %w", overlay.OptionVNI, v, err)
		}
	} else {
		var err error
		if id, err = g.vxlan().Request(ctx); err != nil {
			return fmt.Errorf("vxlan id: %w", err)
		}
	}
	opts[overlay.OptionVNI] = strconv.FormatUint(uint64(id), 10)
	n.options = opts
	return nil
}

func (g *globalPlane) releaseVNI(ctx context.Context, n *Network) {
	id, err := overlay.ParseVNI(n.options[overlay.OptionVNI])
	if err != nil {
		return
	}
	if err := g.vxlan().Release(context.WithoutCancel(ctx), id); err != nil {
		g.c.log.Warn("cnm: release vxlan id", "network", n.name, "vni", id, "err", err)
	}
}

// commitNetwork records a new global network and takes its name in the
// cluster, in one transaction.
func (g *globalPlane) commitNetwork(ctx context.Context, n *Network) error {
	val, err := json.Marshal(n.record())
	if err != nil {
		return err
	}
	// This host's own watch sees the record before NewNetwork publishes
	// the network: it skips what is being made here.
	g.making.Store(n.id, true)
	var rev uint64
	err = g.c.step(ctx, stepNetworkGlobalSend)
	if err == nil {
		rev, err = g.kv.TxnIf(ctx, []etcdstore.Cond{{Key: gNameKey(n.name)}, {Key: gNetworkKey(n.id)}, {Key: gFenceKey(n.id)}},
			etcdstore.Op{Key: gNameKey(n.name), Value: []byte(n.id)},
			etcdstore.Op{Key: gNetworkKey(n.id), Value: val})
		if err == nil {
			err = g.c.step(ctx, stepNetworkGlobalAnswer)
		}
	}
	if err == nil {
		n.globalRev = rev
		return nil
	}
	if errors.Is(err, store.ErrConflict) {
		g.making.Delete(n.id) // the step failed: its undo does not run
		return fmt.Errorf("%w: network name %q is taken in the cluster", ErrExists, n.name)
	}
	return g.settleCommit(ctx, n, err)
}

// uncommitNetwork undoes commitNetwork.
func (g *globalPlane) uncommitNetwork(ctx context.Context, n *Network) error {
	defer g.making.Delete(n.id)
	_, err := g.kv.TxnIf(ctx, nil, etcdstore.Op{Key: gNameKey(n.name), Delete: true}, etcdstore.Op{Key: gNetworkKey(n.id), Delete: true})
	return err
}

// deleteGlobal deletes a global network for every host: refused with
// ErrInUse while any host has an endpoint on it (the condition and the
// delete are one transaction, so no endpoint is made meanwhile). The
// caller has checked this host's endpoints and marked n deleting.
func (n *Network) deleteGlobal(ctx context.Context) error {
	c := n.ctrl
	g := c.global
	prefix := gEndpoints + n.id + "/"
	fail := func(err error) error {
		n.mu.Lock()
		n.deleting = false
		n.mu.Unlock()
		g.dropIfOrphan(n) // another host deleted it meanwhile
		return fmt.Errorf("delete network %q: %w", n.name, err)
	}
	// This host's deletions still on their way first: a container removed
	// a moment ago does not hold the network.
	if err := g.outbox.flushAll(ctx, g, prefix); err != nil {
		return fail(fmt.Errorf("global store: %w", err))
	}
	if err := c.step(ctx, stepNetworkDelete); err != nil {
		return fail(err)
	}
	for attempt := 1; ; attempt++ {
		_, err := g.kv.TxnIf(ctx,
			[]etcdstore.Cond{{Key: gNetworkKey(n.id), Revision: n.globalRev}, {Key: prefix, Prefix: true}},
			etcdstore.Op{Key: gNetworkKey(n.id), Delete: true},
			etcdstore.Op{Key: gNameKey(n.name), Delete: true})
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrConflict) {
			return fail(err)
		}
		// Which condition failed: endpoints on it, or the network gone?
		kvs, err := g.kv.List(ctx, prefix)
		if err != nil {
			return fail(err)
		}
		if len(kvs) > 0 {
			hosts := map[string]bool{}
			for _, kv := range kvs {
				var r peerRecord
				if json.Unmarshal(kv.Value, &r) == nil {
					hosts[r.Host] = true
				}
			}
			return fail(fmt.Errorf("%w: network %q has %d endpoints on %d hosts", ErrInUse, n.name, len(kvs), len(hosts)))
		}
		if _, err := g.kv.Get(ctx, gNetworkKey(n.id)); errors.Is(err, store.ErrNotFound) {
			// Another host deleted it, and released what it held: it
			// only goes from this host.
			c.dropGlobalNetwork(context.WithoutCancel(ctx), n)
			return nil
		} else if err != nil {
			return fail(err)
		}
		if attempt == 3 { // endpoints keep coming and going
			return fail(fmt.Errorf("%w: network %q: its endpoints changed while it was being deleted", ErrInUse, n.name))
		}
	}
	// The network is gone for every host: what follows only tidies up
	// (after a crash here, the next New releases the pool and VXLAN ID).
	c.crashPoint(stepNetworkDeleted)
	ctx = context.WithoutCancel(ctx)
	g.releaseVNI(ctx, n)
	c.releaseNetworkIPAM(ctx, n.ipv4)
	c.releaseNetworkIPAM(ctx, n.ipv6)
	c.dropGlobalNetwork(ctx, n)
	return nil
}

// dropGlobalNetwork removes a deleted global network from this host.
func (c *Controller) dropGlobalNetwork(ctx context.Context, n *Network) {
	if err := n.driver.DeleteNetwork(ctx, n.id); err != nil && !errors.Is(err, ErrNotFound) {
		c.log.Warn("cnm: delete global network in driver", "network", n.name, "err", err)
	}
	c.forgetNetwork(n)
}

// adoptGlobalNetwork makes this host's Network of a global network from
// its record. It is not published in c.networks.
func (c *Controller) adoptGlobalNetwork(ctx context.Context, r networkRecord, rev uint64, restore bool) (*Network, error) {
	drv, err := c.drivers.Driver(r.Driver)
	if err != nil {
		return nil, err
	}
	n := c.networkOf(r, drv)
	n.global, n.globalRev = true, rev
	if r.IPv4 != nil {
		n.ipv4 = recordedIPAM(r.IPv4, c.global.addrs, globalIPAMDriver)
	}
	if r.IPv6 != nil {
		n.ipv6 = recordedIPAM(r.IPv6, c.global.addrs, globalIPAMDriver)
	}
	if restore {
		err = restoreInDriver(ctx, drv, n.driverRequest())
	} else {
		err = drv.CreateNetwork(ctx, n.driverRequest())
	}
	if err != nil {
		return nil, err
	}
	return n, nil
}

// restoreNetworks takes every global network back at New, before
// the endpoints (restore.go).
func (g *globalPlane) restoreNetworks(ctx context.Context) error {
	kvs, rev, err := g.kv.Snapshot(ctx, gNetworks)
	if err != nil {
		return fmt.Errorf("global store: list networks: %w", err)
	}
	g.netsRev, g.nets = rev, kvs
	for _, kv := range kvs {
		if err := g.addNetwork(ctx, kv, true); err != nil {
			return err
		}
	}
	return nil
}

// addNetwork publishes the global network kv records on this host, unless
// it is known already.
func (g *globalPlane) addNetwork(ctx context.Context, kv store.KV, restore bool) error {
	c := g.c
	var r networkRecord
	if err := json.Unmarshal(kv.Value, &r); err != nil || r.ID == "" {
		c.log.Warn("cnm: global network record unreadable: skipped", "key", kv.Key, "err", err)
		return nil
	}
	if r.Schema > recordSchema {
		c.log.Warn("cnm: global network written by a newer cnm: not taken", "network", r.Name, "schema", r.Schema)
		return nil
	}
	if _, mine := g.making.Load(r.ID); mine {
		return nil
	}
	c.mu.Lock()
	_, known := c.networks[r.ID]
	taken := c.networkNames[r.Name]
	if !known && !taken {
		c.networkNames[r.Name] = true // held while the driver is told
	}
	c.mu.Unlock()
	if known {
		return nil
	}
	if taken {
		c.log.Warn("cnm: global network not taken yet: a network of this host has its name", "network", r.Name, "id", r.ID)
		g.setPending(kv)
		return nil
	}
	n, err := c.adoptGlobalNetwork(ctx, r, kv.Revision, restore)
	c.mu.Lock()
	if err != nil {
		delete(c.networkNames, r.Name)
	} else {
		c.networks[n.id] = n
	}
	c.mu.Unlock()
	if err != nil {
		// Another host's network this one cannot serve (an encrypted
		// network where the kernel has no ESP, say), or not yet (its
		// VXLAN ID is still a network's another host deleted, which this
		// host is still removing): not a reason to fail; it is tried
		// again whenever a network goes from this host.
		c.log.Warn("cnm: take global network", "network", r.Name, "err", err)
		g.setPending(kv)
		return nil
	}
	g.clearPending(r.ID)
	if !restore {
		c.emit(Event{Type: EventNetworkCreated, NetworkID: n.id, Detail: n.name})
	}
	return nil
}

// setPending keeps a global network's record this host could not take
// yet; clearPending forgets it (taken, or deleted).
func (g *globalPlane) setPending(kv store.KV) {
	g.pendingMu.Lock()
	defer g.pendingMu.Unlock()
	if g.pending == nil {
		g.pending = map[string]store.KV{}
	}
	g.pending[strings.TrimPrefix(kv.Key, gNetworks)] = kv
}

func (g *globalPlane) clearPending(id string) {
	g.pendingMu.Lock()
	defer g.pendingMu.Unlock()
	delete(g.pending, id)
}

// retryPending tries again to take the networks this host could not take
// yet: a network that went from this host may have been in their way.
func (g *globalPlane) retryPending() {
	g.pendingMu.Lock()
	kvs := make([]store.KV, 0, len(g.pending))
	for _, kv := range g.pending {
		kvs = append(kvs, kv)
	}
	g.pendingMu.Unlock()
	for _, kv := range kvs {
		_ = g.addNetwork(g.ctx, kv, false)
	}
}

// removeNetwork drops a global network another host deleted, unless this
// host still has endpoints on it (which etcd's transaction rules out
// unless this host's lease had ended): those keep it until they go.
func (g *globalPlane) removeNetwork(ctx context.Context, id string) {
	c := g.c
	g.clearPending(id)
	c.mu.Lock()
	n := c.networks[id]
	c.mu.Unlock()
	if n == nil || !n.global {
		return
	}
	// One critical section: an endpoint that goes meanwhile finds orphan
	// set, and its dropIfOrphan drops the network.
	n.mu.Lock()
	endpoints := len(n.epNames)
	busy := endpoints > 0 || n.deleting || n.reaping > 0
	if busy {
		n.orphan = true
	} else {
		n.deleting = true
	}
	n.mu.Unlock()
	if !busy {
		c.dropGlobalNetwork(ctx, n)
	} else if endpoints > 0 {
		c.log.Warn("cnm: global network deleted by another host while this host has endpoints on it: kept until they are deleted", "network", n.name)
	}
}

// dropIfOrphan drops a global network another host deleted while this
// host still had endpoints on it, once they are gone.
func (g *globalPlane) dropIfOrphan(n *Network) {
	n.mu.Lock()
	drop := n.orphan && !n.deleting && len(n.epNames) == 0 && n.reaping == 0
	if drop {
		n.deleting = true
	}
	n.mu.Unlock()
	if drop {
		g.c.dropGlobalNetwork(context.Background(), n)
	}
}

// watchNetworks follows networks/ from the revision restore listed.
func (g *globalPlane) watchNetworks() {
	failed := func(err error) { g.c.log.Warn("cnm: watch of global networks ended: restarting", "err", err) }
	etcdstore.Follow(g.ctx, g.kv, gNetworks, g.netsRev, time.Second, failed, func(b etcdstore.WatchBatch) bool {
		end, err := g.c.begin()
		if err != nil {
			return false // the controller is closing
		}
		g.applyNetworks(b)
		end()
		return true
	})
}

// applyNetworks applies one batch of the networks watch.
func (g *globalPlane) applyNetworks(b etcdstore.WatchBatch) {
	ctx := g.ctx
	if b.Resync {
		seen := map[string]bool{}
		for _, kv := range b.Snapshot {
			seen[strings.TrimPrefix(kv.Key, gNetworks)] = true
			_ = g.addNetwork(ctx, kv, false)
		}
		for _, n := range g.c.Networks() {
			if n.global && !seen[n.id] {
				g.removeNetwork(ctx, n.id)
			}
		}
		g.pendingMu.Lock()
		for id := range g.pending {
			if !seen[id] {
				delete(g.pending, id)
			}
		}
		g.pendingMu.Unlock()
		return
	}
	for _, ev := range b.Events {
		switch ev.Type {
		case etcdstore.EventPut:
			_ = g.addNetwork(ctx, ev.KV, false)
		case etcdstore.EventDelete:
			g.removeNetwork(ctx, strings.TrimPrefix(ev.KV.Key, gNetworks))
		}
	}
}

// requestGlobalPools reserves a global network's subnets in the global
// address space and its VXLAN ID. On error nothing stays reserved.
func (c *Controller) requestGlobalPools(ctx context.Context, n *Network, cfg networkConfig) error {
	if err := c.requestFamilies(ctx, n, poolRequest{alloc: c.global.addrs, driver: globalIPAMDriver}, *cfg.ipv4, cfg.ipv6); err != nil {
		return err
	}
	if err := c.global.requestVNI(ctx, n); err != nil {
		c.releaseNetworkIPAM(ctx, n.ipv4)
		c.releaseNetworkIPAM(ctx, n.ipv6)
		n.ipv4, n.ipv6 = nil, nil
		return err
	}
	return nil
}

// sweepOwn deletes, in the background, what this host's last run left in
// etcd under its lease, taken back: records of endpoints that no endpoint
// explains any more (deletions a crash or a Close kept from reaching
// etcd; the lease would keep them forever), and fences (unanswered.go: no
// request of that run can be in flight any more). They are read from the
// keys etcd keeps with the lease, in one request: no listing of every
// host's records.
func (g *globalPlane) sweepOwn(ctx context.Context) error {
	keys, err := g.currentLease().Keys(ctx, "")
	if errors.Is(err, etcdstore.ErrLeaseLost) {
		return nil // they went with it
	}
	if err != nil {
		return fmt.Errorf("global store: this host's records: %w", err)
	}
	for _, key := range keys {
		if strings.HasPrefix(key, gFences) || g.unexplained(key) {
			g.outbox.post(key, nil)
		}
	}
	return nil
}

// unexplained reports whether key is an endpoint record no endpoint of
// this host explains.
func (g *globalPlane) unexplained(key string) bool {
	nid, eid, ok := splitEndpointKey(key)
	if !strings.HasPrefix(key, gEndpoints) || !ok {
		return false
	}
	if n := g.network(nid); n != nil {
		if _, err := n.EndpointByID(eid); err == nil {
			return false
		}
	}
	return true
}

// sweepReservations releases the pools and VXLAN IDs this host reserved
// that no global network's record names: a crash between reserving them
// and recording the network, or between deleting a network's record and
// releasing them, left them behind, with no lease to end them. It runs in
// New, when nothing of this host's is in flight.
func (g *globalPlane) sweepReservations(ctx context.Context) error {
	// Restore's listing is enough: only this host reserves its own pools
	// and VXLAN IDs, and it makes no network before New returns.
	kvs := g.nets
	g.nets = nil
	pools, vnis := map[string]bool{}, map[uint32]bool{}
	for _, kv := range kvs {
		var r networkRecord
		if json.Unmarshal(kv.Value, &r) != nil {
			return fmt.Errorf("global network record %s: %w", kv.Key, store.ErrCorrupt)
		}
		for _, fam := range []*ipamRecord{r.IPv4, r.IPv6} {
			if fam != nil {
				pools[fam.PoolID] = true
			}
		}
		if id, err := overlay.ParseVNI(r.Options[overlay.OptionVNI]); err == nil {
			vnis[id] = true
		}
	}
	own, err := g.addrs.cur().OwnPools(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range own {
		if !pools[id] {
			g.c.log.Info("cnm: release an address pool no global network names (left by a crash)", "pool", id)
			errs = append(errs, g.addrs.ReleasePool(ctx, id))
		}
	}
	ids, err := g.vxlan().OwnIDs(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, id := range ids {
		if !vnis[id] {
			g.c.log.Info("cnm: release a VXLAN ID no global network names (left by a crash)", "vni", id)
			errs = append(errs, g.vxlan().Release(ctx, id))
		}
	}
	return errors.Join(errs...)
}
