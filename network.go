package cnm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/overlay"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/store"
)

// Network is a group of endpoints that can talk to each other and are
// isolated from everything else, owned by one driver. It is safe for
// concurrent use.
type Network struct {
	ctrl     *Controller
	id       string
	name     string
	driver   driverapi.Driver
	internal bool
	labels   map[string]string
	options  map[string]string
	ipv4     *networkIPAM // nil: no IPv4 (drivers without interfaces)
	ipv6     *networkIPAM // nil: no IPv6
	// global: the network spans hosts; its record lives in etcd, at
	// revision globalRev (records never change once written).
	global    bool
	globalRev uint64

	// mu guards the fields below.
	mu        sync.Mutex
	deleting  bool
	endpoints map[string]*Endpoint // by ID, committed only
	epNames   map[string]bool      // taken names, in-flight creations included
	reaping   int                  // endpoint interfaces still being removed (reaper.go)
	orphan    bool                 // deleted by another host while this one had endpoints on it

	names nameIndex // joined endpoints' names, for service discovery
	lb    lbState   // services and their backends (service.go); guarded by ctrl.lbMu
}

// networkIPAM is a network's addressing in one family, as IPAM resolved it.
type networkIPAM struct {
	alloc   ipam.Allocator
	driver  string // name of alloc
	null    bool   // the null IPAM driver's pool: no addresses at all
	poolID  string
	subnet  netip.Prefix
	ipRange netip.Prefix
	gateway netip.Addr
	aux     map[string]netip.Addr
}

// NetworkIPAM reports a network's addressing in one family.
type NetworkIPAM struct {
	Subnet       netip.Prefix
	IPRange      netip.Prefix
	Gateway      netip.Addr
	AuxAddresses map[string]netip.Addr
}

// ID returns the network's ID, a UUID.
func (n *Network) ID() string { return n.id }

// Name returns the network's name, unique per controller.
func (n *Network) Name() string { return n.name }

// Type returns the name of the network's driver.
func (n *Network) Type() string { return n.driver.Type() }

// Internal reports whether the network is internal (no way out).
func (n *Network) Internal() bool { return n.internal }

// Labels returns a copy of the network's labels.
func (n *Network) Labels() map[string]string { return maps.Clone(n.labels) }

// DriverOptions returns a copy of the options given to the driver.
func (n *Network) DriverOptions() map[string]string { return maps.Clone(n.options) }

// IPv4 returns the network's IPv4 addressing; ok is false if it has none.
func (n *Network) IPv4() (cfg NetworkIPAM, ok bool) { return n.ipv4.report() }

// IPv6 returns the network's IPv6 addressing; ok is false if it has none.
func (n *Network) IPv6() (cfg NetworkIPAM, ok bool) { return n.ipv6.report() }

func (i *networkIPAM) report() (NetworkIPAM, bool) {
	if i == nil || i.null {
		return NetworkIPAM{}, false
	}
	return NetworkIPAM{Subnet: i.subnet, IPRange: i.ipRange, Gateway: i.gateway, AuxAddresses: maps.Clone(i.aux)}, true
}

// String returns the network's name.
func (n *Network) String() string { return n.name }

// NewNetwork makes a network named name with the driver driverName
// ("bridge", "null", "host"). Addresses come from IPAM: the subnet given with
// [WithIPv4] or [WithIPv6], or a free one from the default pools, chosen so
// that it overlaps no other network. On error nothing is left: no kernel
// object, no address pool, no record.
func (c *Controller) NewNetwork(ctx context.Context, driverName, name string, opts ...NetworkOption) (_ *Network, retErr error) {
	defer func() {
		if retErr != nil {
			c.logOp("create network", retErr, "name", name, "driver", driverName)
		}
	}()
	if err := validateName("network name", name); err != nil {
		return nil, err
	}
	var cfg networkConfig
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("network %q: %w", name, err)
		}
	}
	if driverName == overlay.NetworkType && c.global == nil {
		return nil, errNoGlobal(driverName, name)
	}
	drv, err := c.drivers.Driver(driverName)
	if err != nil {
		return nil, fmt.Errorf("network %q: %w", name, err)
	}
	if drv.Capability().NoInterface && (cfg.ipv4 != nil || cfg.ipv6 != nil) {
		return nil, fmt.Errorf("%w: network %q: %s networks take no addressing", ErrInvalid, name, driverName)
	}
	if isGlobalDriver(drv) {
		if err := c.checkGlobalConfig(driverName, name, &cfg); err != nil {
			return nil, err
		}
	}

	end, err := c.begin()
	if err != nil {
		return nil, err
	}
	defer end()
	return c.newNetwork(ctx, drv, name, cfg)
}

// newNetwork does NewNetwork's work, once its input is checked; the caller
// has begun an operation.
func (c *Controller) newNetwork(ctx context.Context, drv driverapi.Driver, name string, cfg networkConfig) (_ *Network, retErr error) {
	isGlobal := isGlobalDriver(drv)
	c.mu.Lock()
	if c.networkNames[name] {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: network name %q", ErrExists, name)
	}
	c.networkNames[name] = true
	c.mu.Unlock()
	defer func() {
		if retErr != nil {
			c.mu.Lock()
			delete(c.networkNames, name)
			c.mu.Unlock()
			if c.global != nil {
				// A global network of this name seen meanwhile (another
				// host's, or this one's if its commit was not answered
				// and landed) waited for the name: it is taken now.
				c.global.retryPending()
			}
		}
	}()

	n := &Network{
		ctrl:      c,
		id:        uuid.NewString(),
		name:      name,
		driver:    drv,
		internal:  cfg.internal,
		labels:    cfg.labels,
		options:   cfg.driverOpts,
		endpoints: map[string]*Endpoint{},
		epNames:   map[string]bool{},
		global:    isGlobal,
	}
	// If the driver's rollback fails, its kernel objects may still hold the
	// subnet: then the pools stay reserved rather than be handed out twice.
	keepPools := false
	err := c.run(ctx,
		step{name: stepNetworkIPAM,
			do: func(ctx context.Context) error {
				if drv.Capability().NoInterface {
					return nil
				}
				if isGlobal {
					return c.requestGlobalPools(ctx, n, cfg)
				}
				return c.requestNetworkPools(ctx, n, cfg)
			},
			undo: func(ctx context.Context) error {
				if !keepPools {
					c.releaseNetworkIPAM(ctx, n.ipv4)
					c.releaseNetworkIPAM(ctx, n.ipv6)
					if isGlobal {
						c.global.releaseVNI(ctx, n)
					}
				}
				return nil
			}},
		step{name: stepNetworkDriver,
			do: func(ctx context.Context) error { return drv.CreateNetwork(ctx, n.driverRequest()) },
			undo: func(ctx context.Context) error {
				if err := drv.DeleteNetwork(ctx, n.id); err != nil {
					keepPools = true
					return fmt.Errorf("delete network in driver; its subnets stay reserved: %w", err)
				}
				return nil
			}},
		step{name: stepNetworkGlobal,
			do: func(ctx context.Context) error {
				if !isGlobal {
					return nil
				}
				err := c.global.commitNetwork(ctx, n)
				if errors.Is(err, errCommitUnknown) {
					keepPools = true // other hosts may take the network meanwhile
				}
				return err
			},
			undo: func(ctx context.Context) error {
				if !isGlobal {
					return nil
				}
				if err := c.global.uncommitNetwork(ctx, n); err != nil {
					// Other hosts may take the network meanwhile: its
					// subnets and VXLAN ID stay reserved, and its keys go
					// once etcd answers.
					keepPools = true
					c.global.outbox.post(gNetworkKey(n.id), nil)
					c.global.outbox.post(gNameKey(n.name), nil)
					return fmt.Errorf("remove the network's record from etcd; its subnets and VXLAN ID stay reserved: %w", err)
				}
				return nil
			}},
		step{name: stepNetworkCommit, do: func(ctx context.Context) error {
			if isGlobal {
				return nil // its record is in etcd
			}
			return c.saveRecord(ctx, networkKey(n.id), n.record())
		}},
	)
	if err != nil {
		return nil, fmt.Errorf("network %q: %w", name, err)
	}
	c.mu.Lock()
	c.networks[n.id] = n
	c.mu.Unlock()
	if isGlobal {
		c.global.making.Delete(n.id)
	}
	c.emit(Event{Type: EventNetworkCreated, NetworkID: n.id, Detail: n.name})
	return n, nil
}

// requestNetworkPools reserves the network's address pools, IPv4 and, if
// asked for, IPv6. On error nothing stays reserved.
func (c *Controller) requestNetworkPools(ctx context.Context, n *Network, cfg networkConfig) error {
	ipamDriver, alloc, err := c.allocator(cfg.ipamDriver)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	v4 := cfg.ipv4
	if v4 == nil {
		v4 = &IPAMConfig{}
	}
	// A subnet taken from the default pools must not collide with the
	// host's own networks.
	var avoid []netip.Prefix
	if !v4.Subnet.IsValid() || (cfg.ipv6 != nil && !cfg.ipv6.Subnet.IsValid()) {
		if avoid, err = c.hostPrefixes(ctx); err != nil {
			return err
		}
	}
	return c.requestFamilies(ctx, n, poolRequest{alloc: alloc, driver: ipamDriver, avoid: avoid}, *v4, cfg.ipv6)
}

// requestFamilies reserves the network's IPv4 pool and, if v6 is set, its
// IPv6 pool. On error neither stays reserved.
func (c *Controller) requestFamilies(ctx context.Context, n *Network, req poolRequest, v4 IPAMConfig, v6 *IPAMConfig) (err error) {
	if n.ipv4, err = c.requestNetworkIPAM(ctx, req, v4, false); err != nil {
		return err
	}
	if v6 != nil {
		if n.ipv6, err = c.requestNetworkIPAM(ctx, req, *v6, true); err != nil {
			c.releaseNetworkIPAM(ctx, n.ipv4)
			n.ipv4 = nil
			return err
		}
	}
	return nil
}

// driverRequest describes the network to its driver, at creation and at
// restore.
func (n *Network) driverRequest() driverapi.NetworkRequest {
	return driverapi.NetworkRequest{
		ID: n.id, Name: n.name, Options: n.options, Labels: n.labels, Internal: n.internal,
		IPv4: n.ipv4.driverData(), IPv6: n.ipv6.driverData(),
	}
}

// allocator returns the IPAM driver called name ("": the default one) and
// its name.
func (c *Controller) allocator(name string) (string, ipam.Allocator, error) {
	if name == "" {
		name = ipam.DefaultDriver
	}
	alloc, err := c.ipams.Allocator(name)
	if err != nil {
		return "", nil, fmt.Errorf("ipam driver %q: %w", name, err)
	}
	return name, alloc, nil
}

// poolRequest is what a network's IPAM requests share across families.
type poolRequest struct {
	alloc  ipam.Allocator
	driver string         // the allocator's name, for the record
	avoid  []netip.Prefix // the host's prefixes, for subnets from the default pools
}

// requestNetworkIPAM reserves a pool, its gateway and aux addresses. On error
// nothing stays reserved. The null IPAM driver's pool has no gateway and
// hands out no address.
func (c *Controller) requestNetworkIPAM(ctx context.Context, req poolRequest, cfg IPAMConfig, v6 bool) (_ *networkIPAM, retErr error) {
	pool, err := req.alloc.RequestPool(ctx, ipam.PoolRequest{Subnet: cfg.Subnet, IPRange: cfg.IPRange, V6: v6, Size: cfg.PrefixLength, Avoid: req.avoid})
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = req.alloc.ReleasePool(context.WithoutCancel(ctx), pool.ID)
		}
	}()
	fam := &networkIPAM{alloc: req.alloc, driver: req.driver, poolID: pool.ID, subnet: pool.Subnet, ipRange: pool.IPRange, aux: cfg.AuxAddresses}
	if pool.ID == ipam.NullPoolV4 || pool.ID == ipam.NullPoolV6 {
		if cfg.Gateway.IsValid() || len(cfg.AuxAddresses) > 0 {
			return nil, fmt.Errorf("%w: ipam driver %q hands out no addresses: no gateway or aux addresses", ErrInvalid, req.driver)
		}
		fam.null, fam.aux = true, nil
		return fam, nil
	}
	gw := cfg.Gateway
	if !gw.IsValid() {
		gw = firstUsable(pool.Subnet)
	}
	fam.gateway = gw
	reserve := func(a netip.Addr) error {
		if r, ok := req.alloc.(addressReserver); ok {
			return r.ReserveAddress(ctx, pool.ID, a)
		}
		_, err := req.alloc.RequestAddress(ctx, pool.ID, ipam.AddressRequest{Preferred: a})
		return err
	}
	if err := reserve(gw); err != nil {
		return nil, fmt.Errorf("gateway %s: %w", gw, err)
	}
	names := make([]string, 0, len(cfg.AuxAddresses))
	for k := range cfg.AuxAddresses {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if err := reserve(cfg.AuxAddresses[k]); err != nil {
			return nil, fmt.Errorf("aux address %s=%s: %w", k, cfg.AuxAddresses[k], err)
		}
	}
	return fam, nil
}

func (c *Controller) releaseNetworkIPAM(ctx context.Context, i *networkIPAM) {
	if i == nil {
		return
	}
	if err := i.alloc.ReleasePool(context.WithoutCancel(ctx), i.poolID); err != nil {
		c.log.Warn("cnm: release address pool", "subnet", i.subnet, "err", err)
	}
}

func (i *networkIPAM) driverData() *driverapi.IPAMData {
	if i == nil || i.null {
		return nil
	}
	return &driverapi.IPAMData{Pool: i.subnet, Gateway: netip.PrefixFrom(i.gateway, i.subnet.Bits()), AuxAddresses: maps.Clone(i.aux)}
}

// firstUsable is the default gateway: the first address after the network
// address (for /31 and /32, the first address).
func firstUsable(p netip.Prefix) netip.Addr {
	if p.Bits() >= p.Addr().BitLen()-1 {
		return p.Addr()
	}
	return p.Addr().Next()
}

// Endpoints returns the network's endpoints, sorted by name.
func (n *Network) Endpoints() []*Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Endpoint, 0, len(n.endpoints))
	for _, e := range n.endpoints {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// EndpointByName returns the endpoint called name, or an error wrapping
// [ErrNotFound].
func (n *Network) EndpointByName(name string) (*Endpoint, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, e := range n.endpoints {
		if e.name == name {
			return e, nil
		}
	}
	return nil, fmt.Errorf("%w: endpoint %q on network %q", ErrNotFound, name, n.name)
}

// EndpointByID returns the endpoint with that ID, or an error wrapping
// [ErrNotFound].
func (n *Network) EndpointByID(id string) (*Endpoint, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if e, ok := n.endpoints[id]; ok {
		return e, nil
	}
	return nil, fmt.Errorf("%w: endpoint id %q on network %q", ErrNotFound, id, n.name)
}

// Delete removes the network: its driver's kernel objects, its address pools
// and its record. A network that still has endpoints is not deleted: the
// error wraps [ErrInUse]. If interfaces of its deleted endpoints are still
// being removed in the background, Delete waits for them (bounded by ctx).
func (n *Network) Delete(ctx context.Context) (retErr error) {
	defer func() {
		if retErr != nil {
			n.ctrl.logOp("delete network", retErr, "network", n.id)
		}
	}()
	c := n.ctrl
	end, err := c.begin()
	if err != nil {
		return err
	}
	defer end()
	if err := n.waitReaped(ctx); err != nil {
		return fmt.Errorf("delete network %q: %w", n.name, err)
	}
	if err := c.retryStuck(ctx, func(e *Endpoint) bool { return e.nw == n }); err != nil {
		return fmt.Errorf("%w: delete network %q: an interface of a deleted endpoint could not be removed: %w", ErrInUse, n.name, err)
	}
	ctx = context.WithoutCancel(ctx) // a delete, once begun, is finished
	n.mu.Lock()
	switch {
	case n.deleting:
		n.mu.Unlock()
		return fmt.Errorf("%w: network %q is being deleted", ErrNotFound, n.name)
	case len(n.epNames) > 0:
		count := len(n.epNames)
		n.mu.Unlock()
		return fmt.Errorf("%w: network %q has %d endpoints", ErrInUse, n.name, count)
	case n.reaping > 0:
		n.mu.Unlock()
		return fmt.Errorf("%w: network %q: interfaces of deleted endpoints are still being removed", ErrInUse, n.name)
	}
	n.deleting = true
	n.mu.Unlock()
	if n.global {
		return n.deleteGlobal(ctx)
	}

	// Mark the record first: a crash from here on is finished by the next New.
	rec := n.record()
	rec.Deleting = true
	err = c.saveRecord(ctx, networkKey(n.id), rec)
	if err == nil {
		err = c.step(ctx, stepNetworkDelete)
	}
	if err == nil {
		err = n.driver.DeleteNetwork(ctx, n.id)
	}
	if err != nil {
		if serr := c.saveRecord(ctx, networkKey(n.id), n.record()); serr != nil {
			n.ctrl.log.Warn("cnm: unmark network record", "network", n.name, "err", serr)
		}
		n.mu.Lock()
		n.deleting = false
		n.mu.Unlock()
		return fmt.Errorf("delete network %q: %w", n.name, err)
	}
	c.crashPoint(stepNetworkDeleted)
	if err := c.save(ctx, store.Del(networkKey(n.id))); err != nil {
		// The record, marked Deleting, still claims the subnets and the
		// name: both stay reserved in this process too, so that the next
		// New, which finishes the deletion, finds them free.
		c.mu.Lock()
		delete(c.networks, n.id)
		c.mu.Unlock()
		return fmt.Errorf("delete network %q: its kernel objects are gone, its record stays until the next New: %w", n.name, err)
	}
	c.releaseNetworkIPAM(ctx, n.ipv4)
	c.releaseNetworkIPAM(ctx, n.ipv6)
	c.forgetNetwork(n)
	return nil
}

// forgetNetwork drops a deleted network from the controller: its ID and
// name are free, EventNetworkDeleted is sent, and a global network that
// waited for the name is taken now.
func (c *Controller) forgetNetwork(n *Network) {
	c.mu.Lock()
	delete(c.networks, n.id)
	delete(c.networkNames, n.name)
	c.mu.Unlock()
	c.emit(Event{Type: EventNetworkDeleted, NetworkID: n.id, Detail: n.name})
	if c.global != nil {
		if n.global {
			c.global.unfollow(n.id)
		}
		c.global.retryPending()
	}
}

// Controller returns the controller that owns the network.
func (n *Network) Controller() *Controller { return n.ctrl }

// waitReaped waits until no interface of the network's endpoints is being
// removed in the background.
func (n *Network) waitReaped(ctx context.Context) error {
	for {
		n.mu.Lock()
		busy := n.reaping > 0
		n.mu.Unlock()
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the interfaces of deleted endpoints to go: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}
