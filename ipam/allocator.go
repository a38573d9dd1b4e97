package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	"github.com/seed53641549/cnm/errdefs"
)

// Config configures the allocator returned by [New]. The zero value is
// Docker's default configuration.
type Config struct {
	// DefaultPools are the subnets a pool request without a subnet takes
	// from, tried in order. IPv4 and IPv6 entries may be mixed; a request
	// only walks the entries of its family. Nil means [DefaultPools]() (IPv4
	// only, so an IPv6 request without a subnet then fails with
	// [ErrPoolExhausted], saying that no IPv6 default pool is configured). An
	// empty, non-nil slice configures no default pool at all.
	DefaultPools []DefaultPool
}

// LocalAllocator is the default [Allocator]: it serves the local address
// space from memory. Make one with [New].
//
// It is safe for concurrent use. Its memory grows with the number of pools
// and allocated addresses, not with the size of the pools: a /8 or an IPv6 /64
// costs the same as a /24. A call that returns an error changes no state.
type LocalAllocator struct {
	defaults []DefaultPool // read-only after New

	mu      sync.Mutex       // guards the fields below
	pools   map[string]*pool // live pools by ID
	subnets subnetSet        // the subnets of pools, for overlap checks
	seq     uint64           // pools ever made; numbers the IDs so none is reused
}

var _ Allocator = (*LocalAllocator)(nil)

// New returns the default allocator for the local address space, with no pool
// held. It validates cfg: every default pool's Base must be a valid, masked
// prefix, and its Size at least Base.Bits() and at most 32 (IPv4) or 128
// (IPv6); otherwise it returns an error wrapping errdefs.ErrInvalid that names
// the bad entry. The allocator keeps its own copy of cfg.DefaultPools.
func New(cfg Config) (*LocalAllocator, error) {
	defaults := cfg.DefaultPools
	if defaults == nil {
		defaults = DefaultPools()
	}
	for i, dp := range defaults {
		if err := validateDefaultPool(i, dp); err != nil {
			return nil, err
		}
	}
	return &LocalAllocator{
		defaults: slices.Clone(defaults),
		pools:    make(map[string]*pool),
	}, nil
}

// AddressSpaces returns [LocalSpace] and [GlobalSpace]. The LocalAllocator
// serves only the first.
func (a *LocalAllocator) AddressSpaces() (local, global string) {
	return LocalSpace, GlobalSpace
}

// RequestPool reserves a subnet in the local address space and returns it as
// a new pool with no address allocated. With a zero req.Subnet it takes the
// first subnet of the requested family, in the order of the configured default
// pools, that overlaps no held pool. It fails with errdefs.ErrInvalid on bad
// input, [ErrOverlap] when req.Subnet overlaps a held pool, and
// [ErrPoolExhausted] when no default subnet is free; the error names the
// field and the value. See [PoolRequest] for the rules.
func (a *LocalAllocator) RequestPool(ctx context.Context, req PoolRequest) (Pool, error) {
	if err := ctx.Err(); err != nil {
		return Pool{}, err
	}
	if err := checkPoolRequest(req); err != nil {
		return Pool{}, err
	}

	a.mu.Lock()
	defer a.mu.Unlock()

	subnet := req.Subnet
	if subnet == (netip.Prefix{}) {
		var err error
		if subnet, err = a.subnets.firstFreeDefault(a.defaults, req.V6); err != nil {
			return Pool{}, err
		}
	} else if held, ok := a.subnets.overlapping(subnet); ok {
		return Pool{}, fmt.Errorf("%w: subnet %s overlaps pool %s in address space %q",
			ErrOverlap, subnet, held, LocalSpace)
	}

	a.seq++
	id := LocalSpace + "/" + subnet.String() + "#" + strconv.FormatUint(a.seq, 10)
	p := newPool(id, subnet, req.IPRange)
	a.pools[id] = p
	a.subnets.insert(subnet)
	return p.info(), nil
}

// checkPoolRequest validates req on its own, before any state is looked at.
func checkPoolRequest(req PoolRequest) error {
	switch req.AddressSpace {
	case "", LocalSpace:
	case GlobalSpace:
		return fmt.Errorf("%w: address space %q is not served by this allocator", errdefs.ErrInvalid, req.AddressSpace)
	default:
		return fmt.Errorf("%w: address space %q is unknown", errdefs.ErrInvalid, req.AddressSpace)
	}

	s, r := req.Subnet, req.IPRange
	if s == (netip.Prefix{}) {
		if r != (netip.Prefix{}) {
			return fmt.Errorf("%w: ip-range %s is set without a subnet", errdefs.ErrInvalid, r)
		}
		return nil
	}
	if err := checkPrefix("subnet", s); err != nil {
		return err
	}
	if v6 := s.Addr().Is6(); v6 != req.V6 {
		return fmt.Errorf("%w: subnet %s is %s but v6 is %t", errdefs.ErrInvalid, s, family(s.Addr()), req.V6)
	}
	if r == (netip.Prefix{}) {
		return nil
	}
	if err := checkPrefix("ip-range", r); err != nil {
		return err
	}
	if r.Addr().Is4() != s.Addr().Is4() {
		return fmt.Errorf("%w: ip-range %s is %s but subnet %s is %s",
			errdefs.ErrInvalid, r, family(r.Addr()), s, family(s.Addr()))
	}
	if r.Bits() < s.Bits() || !s.Contains(r.Addr()) {
		return fmt.Errorf("%w: ip-range %s is outside subnet %s", errdefs.ErrInvalid, r, s)
	}
	if usableIn(r, reservedAddrs(s)) == 0 {
		return fmt.Errorf("%w: ip-range %s holds no usable address of subnet %s", errdefs.ErrInvalid, r, s)
	}
	return nil
}

// ReleasePool drops the pool with the given ID. Addresses still allocated in
// it are dropped with it: the controller releases endpoints' addresses first,
// but a pool is never kept alive by a leftover address. An unknown ID fails
// with errdefs.ErrNotFound. The ID is never handed out again.
func (a *LocalAllocator) ReleasePool(ctx context.Context, poolID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p, err := a.poolLocked(poolID)
	if err != nil {
		return err
	}
	delete(a.pools, poolID)
	a.subnets.remove(p.subnet)
	return nil
}

// RequestAddress allocates one address in the pool with the given ID and
// returns it: req.Preferred when set, otherwise the next free usable address
// of the pool's range (next-fit). It fails with errdefs.ErrNotFound for an
// unknown pool, errdefs.ErrInvalid for a preferred address outside the subnet
// or reserved, errdefs.ErrExists for a preferred address already allocated,
// and [ErrPoolExhausted] when no usable address of the range is free. See
// [AddressRequest] for the rules.
func (a *LocalAllocator) RequestAddress(ctx context.Context, poolID string, req AddressRequest) (netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return netip.Addr{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p, err := a.poolLocked(poolID)
	if err != nil {
		return netip.Addr{}, err
	}
	if req.Preferred.IsValid() {
		if err := p.allocate(req.Preferred); err != nil {
			return netip.Addr{}, err
		}
		return req.Preferred, nil
	}
	return p.allocateNext()
}

// ReleaseAddress frees addr in the pool with the given ID, so that a later
// request may allocate it again. It fails with errdefs.ErrNotFound when the
// pool is unknown or addr is not allocated in it (never allocated, or already
// released), and with errdefs.ErrInvalid when addr is the zero value.
// Releasing does not move the next-fit cursor.
func (a *LocalAllocator) ReleaseAddress(ctx context.Context, poolID string, addr netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !addr.IsValid() {
		return fmt.Errorf("%w: address is not set", errdefs.ErrInvalid)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p, err := a.poolLocked(poolID)
	if err != nil {
		return err
	}
	return p.release(addr)
}

// Pools returns the live pools sorted by subnet: IPv4 before IPv6, then by
// address (live pools never overlap, so no two share an address). The slice
// is the caller's.
func (a *LocalAllocator) Pools() []Pool {
	a.mu.Lock()
	out := make([]Pool, 0, len(a.pools))
	for _, p := range a.pools {
		out = append(out, p.info())
	}
	a.mu.Unlock()
	slices.SortFunc(out, func(x, y Pool) int {
		return x.Subnet.Addr().Compare(y.Subnet.Addr())
	})
	return out
}

// poolLocked returns the live pool with the given ID.
func (a *LocalAllocator) poolLocked(id string) (*pool, error) {
	p, ok := a.pools[id]
	if !ok {
		return nil, fmt.Errorf("%w: pool %q", errdefs.ErrNotFound, id)
	}
	return p, nil
}

// pool is one reserved subnet and the addresses allocated in it. Its memory is
// proportional to the number of allocated addresses. The allocator's mutex
// guards it.
type pool struct {
	id       string
	subnet   netip.Prefix
	ipRange  netip.Prefix // zero when not set
	reserved []netip.Addr // never handed out: see reservedAddrs

	// The dynamic range: ipRange, or subnet when ipRange is not set.
	first, last netip.Addr
	usable      uint64 // usable addresses in [first, last], capped at maxCount

	allocated map[netip.Addr]struct{}
	inRange   uint64     // allocated addresses in [first, last]
	cursor    netip.Addr // last address handed out dynamically; zero before the first
}

func newPool(id string, subnet, ipRange netip.Prefix) *pool {
	rng := subnet
	if ipRange.IsValid() {
		rng = ipRange
	}
	reserved := reservedAddrs(subnet)
	return &pool{
		id:        id,
		subnet:    subnet,
		ipRange:   ipRange,
		reserved:  reserved,
		first:     rng.Addr(),
		last:      lastAddr(rng),
		usable:    usableIn(rng, reserved),
		allocated: make(map[netip.Addr]struct{}),
	}
}

// usableIn counts the addresses of rng that are not reserved, capped at
// maxCount.
func usableIn(rng netip.Prefix, reserved []netip.Addr) uint64 {
	n := prefixSize(rng)
	if n == maxCount {
		return n // too large to count exactly, and never reached
	}
	for _, r := range reserved {
		if rng.Contains(r) {
			n--
		}
	}
	return n
}

func (p *pool) info() Pool {
	return Pool{ID: p.id, Subnet: p.subnet, IPRange: p.ipRange}
}

// name names the pool in messages: its subnet, and its range when set.
func (p *pool) name() string {
	if p.ipRange.IsValid() {
		return p.subnet.String() + " (ip-range " + p.ipRange.String() + ")"
	}
	return p.subnet.String()
}

func (p *pool) inDynamicRange(a netip.Addr) bool {
	return p.first.Compare(a) <= 0 && a.Compare(p.last) <= 0
}

func (p *pool) isReserved(a netip.Addr) bool {
	return slices.Contains(p.reserved, a)
}

// allocate marks the preferred address a as allocated, after checking that it
// lies in the subnet, is not reserved, and is free. It does not move the
// cursor.
func (p *pool) allocate(a netip.Addr) error {
	if !p.subnet.Contains(a) {
		return fmt.Errorf("%w: address %s is outside subnet %s", errdefs.ErrInvalid, a, p.subnet)
	}
	if p.isReserved(a) {
		what := "network address"
		switch {
		case a.Is6():
			what = "subnet-router anycast address"
		case a != p.subnet.Addr():
			what = "broadcast address"
		}
		return fmt.Errorf("%w: address %s is the %s of subnet %s", errdefs.ErrInvalid, a, what, p.subnet)
	}
	if _, ok := p.allocated[a]; ok {
		return fmt.Errorf("%w: address %s is already allocated in pool %s", errdefs.ErrExists, a, p.subnet)
	}
	p.mark(a)
	return nil
}

// allocateNext allocates the first free usable address after the cursor,
// wrapping around the dynamic range, and moves the cursor to it.
//
// The count check first guarantees a free address exists, so the scan ends:
// every address it passes over is allocated or reserved, which bounds it by
// len(p.allocated)+len(p.reserved)+1 steps.
func (p *pool) allocateNext() (netip.Addr, error) {
	if p.inRange >= p.usable {
		return netip.Addr{}, fmt.Errorf("%w: no free address in pool %s", ErrPoolExhausted, p.name())
	}
	a := p.first
	if p.cursor.IsValid() {
		a = p.nextInRange(p.cursor)
	}
	for p.isReserved(a) || p.isAllocated(a) {
		a = p.nextInRange(a)
	}
	p.mark(a)
	p.cursor = a
	return a, nil
}

// nextInRange returns the address after a in the dynamic range, wrapping from
// its last address to its first.
func (p *pool) nextInRange(a netip.Addr) netip.Addr {
	if a == p.last {
		return p.first
	}
	return a.Next()
}

func (p *pool) isAllocated(a netip.Addr) bool {
	_, ok := p.allocated[a]
	return ok
}

func (p *pool) mark(a netip.Addr) {
	p.allocated[a] = struct{}{}
	if p.inDynamicRange(a) {
		p.inRange++
	}
}

// release frees a, which must be allocated.
func (p *pool) release(a netip.Addr) error {
	if !p.isAllocated(a) {
		return fmt.Errorf("%w: address %s is not allocated in pool %s", errdefs.ErrNotFound, a, p.subnet)
	}
	delete(p.allocated, a)
	if p.inDynamicRange(a) {
		p.inRange--
	}
	return nil
}
