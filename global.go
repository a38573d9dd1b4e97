package cnm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed53641549/cnm/drivers/overlay"
	"github.com/seed53641549/cnm/ipam/global"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// Multi-host networks: a controller given a global store (etcd) and its
// host's underlay address takes part in a cluster of hosts that share
// global-scope networks (the overlay driver). Global state lives in etcd,
// under GlobalStore.Prefix:
//
//	networks/<id>             a global network's record (as the data dir's)
//	network-names/<name>      its name, taken cluster-wide (value: the ID)
//	endpoints/<network>/<id>  an endpoint: host, VTEP, MAC, addresses,
//	                          names; written under the host's lease
//	ipam/global/..., vxlan/.. address blocks and VXLAN IDs (ipam/global)
//
// Each controller watches networks/ (networks made elsewhere appear, and
// deleted ones go, without a restart) and, for each global network it has
// endpoints on, endpoints/<network>/ (the peer table: other hosts' joined
// endpoints become static FDB and neighbour entries on the overlay's VXLAN
// devices, and names for service discovery). A host's
// lease is kept alive in the background; when the host dies, etcd drops
// its endpoints and address blocks after the lease's TTL, and every other
// host removes its peers. A controller that restarts within the TTL takes
// its lease back (its ID is kept in the data dir), so its peers never
// vanish from the others.

// GlobalStore configures the etcd cluster of multi-host networks; see
// [WithGlobalStore].
type GlobalStore struct {
	// Endpoints are the cluster's client URLs ("http://10.0.0.1:2379").
	// At least one.
	Endpoints []string
	// TLS is used for every connection when set (https endpoints need it).
	TLS *tls.Config
	// DialTimeout bounds the first connection (New fails without etcd);
	// zero: 5 s.
	DialTimeout time.Duration
	// RequestTimeout bounds every request: a global operation fails within
	// it when etcd is down. Zero: 5 s.
	RequestTimeout time.Duration
	// Prefix is put in front of every key, followed by "/", so several
	// clusters share one etcd. Empty: [DefaultGlobalPrefix].
	Prefix string
	// LeaseTTL is how long the host's peers and address blocks outlive it
	// (or its link to etcd). Zero: [DefaultLeaseTTL]. At least 1 s.
	LeaseTTL time.Duration
}

// Defaults of [GlobalStore].
const (
	// DefaultGlobalPrefix is the global store's key prefix when
	// GlobalStore.Prefix is empty.
	DefaultGlobalPrefix = "cnm"
	// DefaultLeaseTTL is the host's lease TTL when GlobalStore.LeaseTTL is
	// zero: how long its peers and address blocks outlive it.
	DefaultLeaseTTL = 10 * time.Second
)

// WithGlobalStore makes the controller a member of a multi-host cluster
// whose state lives in etcd; it needs [WithAdvertiseAddress] too. New then
// fails if etcd does not answer within the dial timeout. Without it the
// controller serves local networks only, and overlay networks are refused.
func WithGlobalStore(gs GlobalStore) Option {
	return func(c *config) error {
		if len(gs.Endpoints) == 0 {
			return fmt.Errorf("%w: global store endpoints: at least one etcd URL is needed", ErrInvalid)
		}
		if gs.LeaseTTL != 0 && gs.LeaseTTL < time.Second {
			return fmt.Errorf("%w: global store lease TTL %s: at least 1s", ErrInvalid, gs.LeaseTTL)
		}
		if gs.DialTimeout < 0 || gs.RequestTimeout < 0 {
			return fmt.Errorf("%w: global store timeouts %s, %s: negative", ErrInvalid, gs.DialTimeout, gs.RequestTimeout)
		}
		gs.Endpoints = append([]string(nil), gs.Endpoints...)
		c.global = &gs
		return nil
	}
}

// WithAdvertiseAddress sets this host's underlay address: the local end
// (VTEP) of every overlay network's VXLAN tunnels, which other hosts send
// to. It must be an address of a link of the host namespace.
func WithAdvertiseAddress(a netip.Addr) Option {
	return func(c *config) error {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a.Zone() != "" {
			return fmt.Errorf("%w: advertise address %s: want a unicast, non-loopback address without zone", ErrInvalid, a)
		}
		c.advertise = a.Unmap()
		return nil
	}
}

// minBlocks is the fewest address blocks an overlay subnet is cut into:
// the most hosts with containers on one network that a small subnet
// serves (a /24 is cut into /29s of 8 addresses; a /16 keeps /26 blocks).
const minBlocks = 32

// overlayIdle is how long an overlay network's namespace stays on a host
// after its last container there left: a container that restarts finds it.
const overlayIdle = 5 * time.Second

// errNoGlobal is the error for a global-scope network on a controller
// that is not part of a cluster.
func errNoGlobal(driver, name string) error {
	return fmt.Errorf("%w: network %q: %s networks span hosts: they need a global store (WithGlobalStore) and this host's underlay address (WithAdvertiseAddress)",
		ErrInvalid, name, driver)
}

// Keys of the global store.
const (
	gNetworks  = "networks/"
	gNames     = "network-names/"
	gEndpoints = "endpoints/"
	gFences    = "network-fences/"   // networks whose commit can no longer land (unanswered.go)
	keyLease   = "meta/global-lease" // in the data dir: the lease to take back
)

func gNetworkKey(id string) string        { return gNetworks + id }
func gNameKey(name string) string         { return gNames + name }
func gEndpointKey(nid, eid string) string { return gEndpoints + nid + "/" + eid }
func gFenceKey(id string) string          { return gFences + id }

// globalPlane is a controller's part in the cluster.
type globalPlane struct {
	c     *Controller
	kv    *etcdstore.Store
	vtep  netip.Addr
	ttl   time.Duration
	ov    *overlay.Driver
	vnis  *global.VXLANAllocator
	addrs *globalIPAM

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	leaseMu sync.RWMutex // guards lease and vnis
	lease   *etcdstore.Lease

	peers  peerTable // other hosts' endpoints, as watched (peers.go)
	making sync.Map  // IDs of global networks this host is making

	bgMu       sync.Mutex   // orders retractLater's wg.Add before stop's wg.Wait
	retracting atomic.Int32 // retract calls running (tests watch it)

	pendingMu sync.Mutex
	pending   map[string]store.KV // global networks not taken yet, by ID
	outbox    outbox              // this host's endpoint records still to write (peers.go)
	netsRev   uint64              // revision of the networks/ listing restore used
	nets      []store.KV          // that listing, until sweepReservations has used it
}

// openGlobal connects to etcd, takes back the host's lease or grants a new
// one, and registers the overlay driver. Networks are taken back by
// restore (restoreNetworks); the watches start after it (start).
func (c *Controller) openGlobal(ctx context.Context) (_ *globalPlane, retErr error) {
	gs := *c.cfg.global
	if !c.cfg.advertise.IsValid() {
		return nil, fmt.Errorf("%w: global store: this host's underlay address is missing (WithAdvertiseAddress)", ErrInvalid)
	}
	prefix := gs.Prefix
	if prefix == "" {
		prefix = DefaultGlobalPrefix
	}
	prefix = strings.TrimSuffix(prefix, "/") + "/"
	ttl := gs.LeaseTTL
	if ttl == 0 {
		ttl = DefaultLeaseTTL
	}
	kv, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: gs.Endpoints, TLS: gs.TLS, DialTimeout: gs.DialTimeout, RequestTimeout: gs.RequestTimeout, Prefix: prefix})
	if err != nil {
		return nil, fmt.Errorf("global store %v: %w", gs.Endpoints, err)
	}
	defer func() {
		if retErr != nil {
			kv.Close()
		}
	}()
	g := &globalPlane{c: c, kv: kv, vtep: c.cfg.advertise, ttl: ttl}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.outbox.init()
	if err := g.takeLease(ctx); err != nil {
		return nil, err
	}
	g.addrs = &globalIPAM{}
	if err := g.newAllocators(); err != nil {
		return nil, err
	}
	ov, err := overlay.New(overlay.Config{HostNS: c.hostNS, AdvertiseAddress: g.vtep, RunDir: filepath.Join(c.files, "overlay"), IdleTimeout: overlayIdle})
	if err != nil {
		return nil, err
	}
	if err := c.drivers.RegisterDriver(overlay.NetworkType, ov); err != nil {
		return nil, err
	}
	g.ov = ov
	return g, nil
}

// takeLease takes back the lease the data dir names, if it is still alive,
// or grants a new one and records it.
func (g *globalPlane) takeLease(ctx context.Context) error {
	var id int64
	kv, err := g.c.store.Get(ctx, keyLease)
	switch {
	case err == nil:
		id, _ = strconv.ParseInt(string(kv.Value), 16, 64) // unreadable: 0, a new lease
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	g.lease, err = g.leaseFor(ctx, id)
	return err
}

// leaseFor takes back lease id (0: none) if etcd still has it, or grants a
// new one and records its ID in the data dir.
func (g *globalPlane) leaseFor(ctx context.Context, id int64) (*etcdstore.Lease, error) {
	if id != 0 {
		l, err := g.kv.AdoptLease(ctx, id)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, etcdstore.ErrLeaseLost) {
			return nil, fmt.Errorf("global store: take back lease %x: %w", id, err)
		}
		g.c.log.Info("cnm: the host's lease ended: its peers and address blocks are claimed again", "lease", fmt.Sprintf("%x", id))
	}
	l, err := g.kv.GrantLease(ctx, g.ttl)
	if err != nil {
		return nil, fmt.Errorf("global store: grant lease: %w", err)
	}
	if err := g.c.store.Txn(ctx, store.Put(keyLease, []byte(strconv.FormatInt(l.ID(), 16)))); err != nil {
		_ = l.Revoke(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("record the global store lease: %w", err)
	}
	return l, nil
}

// newAllocators makes the address and VXLAN ID allocators on the current
// lease.
func (g *globalPlane) newAllocators() error {
	host := string(g.c.owner)
	a, err := global.New(global.Config{Store: g.kv, Lease: g.lease, Host: host, MinBlocks: minBlocks})
	if err != nil {
		return err
	}
	v, err := global.NewVXLAN(global.VXLANConfig{Store: g.kv, Lease: g.lease, Host: host})
	if err != nil {
		a.Close()
		return err
	}
	g.addrs.swap(a)
	g.leaseMu.Lock()
	g.vnis = v
	g.leaseMu.Unlock()
	return nil
}

// vxlan returns the VXLAN ID allocator on the current lease.
func (g *globalPlane) vxlan() *global.VXLANAllocator {
	g.leaseMu.RLock()
	defer g.leaseMu.RUnlock()
	return g.vnis
}

// start begins the watches of networks and peers and the outbox's writer.
func (g *globalPlane) start() {
	g.wg.Add(3)
	go func() { defer g.wg.Done(); g.watchNetworks() }()
	go func() { defer g.wg.Done(); g.outbox.run(g) }()
	go func() { defer g.wg.Done(); g.keepLease() }()
	for _, n := range g.c.Networks() {
		g.followIfUsed(n)
	}
}

// keepLease replaces the host's lease when it is lost (etcd was out of
// reach for longer than the TTL): etcd has dropped the host's endpoint
// records and address blocks by then. Once etcd answers again, a new lease
// is granted, this host's endpoints' addresses are claimed again (each
// block anew) and their records written again.
func (g *globalPlane) keepLease() {
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-g.currentLease().Lost():
		}
		g.c.log.Warn("cnm: global store: the host's lease was lost: its peers and address blocks are claimed again once etcd answers")
		for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
			err := g.renewLease()
			if err == nil {
				break
			}
			g.c.log.Warn("cnm: global store: new lease: retrying", "err", err)
			select {
			case <-g.ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}
}

// renewLease takes the lease back, or grants a new one, makes the
// allocators anew on it, claims this host's endpoints' addresses again and
// republishes their records.
func (g *globalPlane) renewLease() error {
	end, err := g.c.begin()
	if err != nil {
		return nil // closed: nothing to renew
	}
	defer end()
	ctx := g.ctx
	// Lost is the client's view: etcd may have kept the lease (it extends
	// leases when it restarts). Then its blocks and records are still this
	// host's: it is taken back.
	l, err := g.leaseFor(ctx, g.currentLease().ID())
	if err != nil {
		return err
	}
	g.leaseMu.Lock()
	g.lease = l
	g.leaseMu.Unlock()
	if err := g.newAllocators(); err != nil {
		return err
	}
	var errs []error
	for _, n := range g.c.Networks() {
		if !n.global {
			continue
		}
		for _, ep := range n.Endpoints() {
			// An error: another host took the block meanwhile, and two
			// interfaces may now have one address.
			for _, err := range ep.reserveAddresses(ctx) {
				errs = append(errs, fmt.Errorf("endpoint %q: %w", ep.name, err))
			}
		}
	}
	g.republish()
	if len(errs) > 0 {
		g.c.log.Error("cnm: global store: addresses of this host taken by another host while its lease was lost", "err", errors.Join(errs...))
	}
	return nil
}

// stop ends the watches, the outbox's writer and the lease keeper, and
// waits for them. Operations may still use the store until closeStore.
// Safe to call twice.
func (g *globalPlane) stop() {
	g.cancel()
	// A follow or a retraction that began before the cancel has added its
	// goroutine by the time these locks are taken; any later one sees the
	// cancel.
	g.peers.watchMu.Lock()
	g.peers.watchMu.Unlock()
	g.bgMu.Lock()
	g.bgMu.Unlock()
	g.wg.Wait()
	g.ov.Close()
}

// closeStore closes the allocators and the etcd client, after stop. The
// lease is not revoked: the host's peers stay until its TTL ends, so a
// controller that restarts takes them back without other hosts seeing a
// gap.
func (g *globalPlane) closeStore() error {
	g.addrs.close()
	return g.kv.Close()
}

// currentLease returns the host's lease.
func (g *globalPlane) currentLease() *etcdstore.Lease {
	g.leaseMu.RLock()
	defer g.leaseMu.RUnlock()
	return g.lease
}
