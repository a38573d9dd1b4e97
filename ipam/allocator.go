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

// Config configures the allocator returned by [New] and [Open]. The zero
// value is Docker's default configuration, with no store.
type Config struct {
	// DefaultPools are the subnets a pool request without a subnet takes
	// from, tried in order. IPv4 and IPv6 entries may be mixed; a request
	// only walks the entries of its family. Nil means [DefaultPools]() (IPv4
	// only, so an IPv6 request without a subnet then fails with
	// [ErrPoolExhausted], saying that no IPv6 default pool is configured). An
	// empty, non-nil slice configures no default pool at all.
	DefaultPools []DefaultPool

	// Store, when set, receives every change of state as small records (see
	// [Store]), and [Open] reads the state back from it. Nil keeps the state
	// in memory only. [New] accepts no store: use [Open].
	Store Store
}

// LocalAllocator is the default [Allocator]: it serves the local address
// space from memory, optionally writing through to a [Store]. Make one with
// [New] or [Open].
//
// It is safe for concurrent use. Its memory grows with the number of pools
// and of runs of consecutive allocated addresses, not with the size of the
// pools: a /8 or an IPv6 /64 costs the same as a /24, and a thousand
// consecutive addresses cost as much as one. Every request and release takes
// O(log n) time in the number of runs of its pool. A call that returns an
// error changes no state.
type LocalAllocator struct {
	defaults []DefaultPool // read-only after New
	store    Store         // nil: memory only; read-only after New

	mu      sync.Mutex       // guards the fields below
	pools   map[string]*pool // live pools by ID
	subnets [2]runSet        // one run per pool's subnet, IPv4 and IPv6, for overlap checks that name the pool
	held    [2]runSet        // the same addresses merged into maximal runs, for the default-pool search
	seq     uint64           // pools ever made; numbers the IDs so none is reused
	last    *pool            // the pool looked up last (nil after a release): callers tend to repeat an ID
}

var _ Allocator = (*LocalAllocator)(nil)

// New returns the default allocator for the local address space, with no pool
// held and no store. It validates cfg: every default pool's Base must be a
// valid, masked prefix, and its Size at least Base.Bits() and at most 32
// (IPv4) or 128 (IPv6); otherwise it returns an error wrapping
// errdefs.ErrInvalid that names the bad entry. cfg.Store must be nil: an
// allocator with a store is made by [Open], which reads it first. The
// allocator keeps its own copy of cfg.DefaultPools.
func New(cfg Config) (*LocalAllocator, error) {
	if cfg.Store != nil {
		return nil, fmt.Errorf("%w: store is set: use ipam.Open to read it first", errdefs.ErrInvalid)
	}
	return newAllocator(cfg)
}

// Open returns the default allocator for the local address space with the
// state held in cfg.Store (an empty store gives an empty allocator), and
// writes every later change through to the store. It validates cfg as [New]
// does, and the stored state as [LocalAllocator.Restore] does; a state that
// is not consistent is an error wrapping errdefs.ErrInvalid. With a nil
// cfg.Store it is New.
func Open(ctx context.Context, cfg Config) (*LocalAllocator, error) {
	a, err := newAllocator(cfg)
	if err != nil || cfg.Store == nil {
		return a, err
	}
	st, err := cfg.Store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("load ipam state: %w", err)
	}
	if err := a.restoreState(st); err != nil {
		return nil, fmt.Errorf("load ipam state: %w", err)
	}
	return a, nil
}

func newAllocator(cfg Config) (*LocalAllocator, error) {
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
		store:    cfg.Store,
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
// first subnet of the requested family and size, in the order of the
// configured default pools, that overlaps no held pool and no prefix of
// req.Avoid. It fails with errdefs.ErrInvalid on bad input, [ErrOverlap] when
// req.Subnet overlaps a held pool, and [ErrPoolExhausted] when no default
// subnet is free; the error names the field and the value. See [PoolRequest]
// for the rules.
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
		if subnet, err = a.firstFreeDefault(req); err != nil {
			return Pool{}, err
		}
	} else if held, ok := overlapping(&a.subnets, subnet); ok {
		return Pool{}, fmt.Errorf("%w: subnet %s overlaps pool %s in address space %q",
			ErrOverlap, subnet, held, LocalSpace)
	}

	seq := a.seq
	var id string
	for { // an ID restored from elsewhere may hold a later number
		seq++
		id = LocalSpace + "/" + subnet.String() + "#" + strconv.FormatUint(seq, 10)
		if _, ok := a.pools[id]; !ok {
			break
		}
	}
	p := newPool(id, subnet, req.IPRange)
	if a.store != nil {
		rec := p.record()
		if err := a.store.Commit(ctx, Commit{Seq: seq, PutPool: &rec}); err != nil {
			return Pool{}, fmt.Errorf("request pool %s: store: %w", subnet, err)
		}
	}
	a.seq = seq
	a.addPoolLocked(p)
	return p.info(), nil
}

// addPoolLocked adds p, whose subnet overlaps no held pool.
func (a *LocalAllocator) addPoolLocked(p *pool) {
	a.pools[p.id] = p
	a.subnets[famIndex(p.v6)].insert(run{p.sfirst, p.slast})
	a.held[famIndex(p.v6)].add(p.sfirst, p.slast, nil)
}

// overlapping returns the subnet of subnets (one tree per family, one run
// per subnet, never merged) that overlaps p, if any.
func overlapping(subnets *[2]runSet, p netip.Prefix) (netip.Prefix, bool) {
	v6 := p.Addr().Is6()
	lo, hi := prefixBounds(p)
	if r := subnets[famIndex(v6)].floor(hi); r != nil && !r.hi.less(lo) {
		return runPrefix(*r, v6), true
	}
	return netip.Prefix{}, false
}

func famIndex(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
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
	bitLen := 32
	if req.V6 {
		bitLen = 128
	}
	if req.Size < 0 || req.Size > bitLen {
		return fmt.Errorf("%w: size %d is outside 0..%d for %s", errdefs.ErrInvalid, req.Size, bitLen, familyName(req.V6))
	}
	for i, p := range req.Avoid {
		if !p.IsValid() {
			return fmt.Errorf("%w: avoid[%d] %s is not a valid prefix", errdefs.ErrInvalid, i, p)
		}
	}

	s, r := req.Subnet, req.IPRange
	if s == (netip.Prefix{}) {
		if r != (netip.Prefix{}) {
			return fmt.Errorf("%w: ip-range %s is set without a subnet", errdefs.ErrInvalid, r)
		}
		return nil
	}
	if req.Size != 0 {
		return fmt.Errorf("%w: size %d is set with subnet %s: give one or the other", errdefs.ErrInvalid, req.Size, s)
	}
	if err := checkPrefix("subnet", s); err != nil {
		return err
	}
	if v6 := s.Addr().Is6(); v6 != req.V6 {
		return fmt.Errorf("%w: subnet %s is %s but v6 is %t", errdefs.ErrInvalid, s, family(s.Addr()), req.V6)
	}
	return checkIPRange(s, r)
}

// checkIPRange validates an ip-range r (zero: none) against subnet s.
func checkIPRange(s, r netip.Prefix) error {
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
	if a.store != nil {
		if err := a.store.Commit(ctx, Commit{DeletePool: poolID}); err != nil {
			return fmt.Errorf("release pool %s: store: %w", p.subnet, err)
		}
	}
	delete(a.pools, poolID)
	a.last = nil
	a.subnets[famIndex(p.v6)].delete(p.sfirst)
	a.held[famIndex(p.v6)].remove(p.sfirst, p.slast, nil)
	return nil
}

// RequestAddress allocates one address in the pool with the given ID and
// returns it: req.Preferred when set, otherwise the next free usable address
// of the pool's range (next-fit). It fails with errdefs.ErrNotFound for an
// unknown pool, errdefs.ErrInvalid for a preferred address outside the subnet
// or reserved, errdefs.ErrExists for a preferred address already allocated,
// and [ErrPoolExhausted] when no usable address of the range is free. See
// [AddressRequest] for the rules. It takes O(log n) time in the number of
// runs of consecutive allocated addresses in the pool, whatever the pool's
// size and fill.
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
	var x u128
	cursorBefore, hadCursor := p.cursor, p.hasCursor
	if req.Preferred.IsValid() {
		if err := p.checkPreferred(req.Preferred); err != nil {
			return netip.Addr{}, err
		}
		x = fromAddr(req.Preferred)
	} else if x, err = p.nextFree(); err != nil {
		return netip.Addr{}, err
	} else {
		p.cursor, p.hasCursor = x, true
	}
	var e runEdit
	p.mark(x, &e)
	if a.store != nil {
		if err := a.commitRuns(ctx, p, e, p.cursor != cursorBefore || p.hasCursor != hadCursor); err != nil {
			p.unmark(x, nil)
			p.cursor, p.hasCursor = cursorBefore, hadCursor
			return netip.Addr{}, fmt.Errorf("request address %s in pool %s: store: %w", toAddr(x, p.v6), p.subnet, err)
		}
	}
	return toAddr(x, p.v6), nil
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
	x := fromAddr(addr)
	var e runEdit
	if !p.subnet.Contains(addr) || !p.unmark(x, &e) {
		return fmt.Errorf("%w: address %s is not allocated in pool %s", errdefs.ErrNotFound, addr, p.subnet)
	}
	if a.store != nil {
		if err := a.commitRuns(ctx, p, e, false); err != nil {
			p.mark(x, nil)
			return fmt.Errorf("release address %s in pool %s: store: %w", addr, p.subnet, err)
		}
	}
	return nil
}

// commitRuns writes the records an address operation changed.
func (a *LocalAllocator) commitRuns(ctx context.Context, p *pool, e runEdit, cursorMoved bool) error {
	var c Commit
	if cursorMoved {
		rec := p.record()
		c.PutPool = &rec
	}
	for _, r := range e.put[:e.nput] {
		c.PutRanges = append(c.PutRanges, RangeRecord{Pool: p.id, First: toAddr(r.lo, p.v6), Last: toAddr(r.hi, p.v6)})
	}
	if e.hasDel {
		d := toAddr(e.del, p.v6)
		c.DeleteRanges = append(c.DeleteRanges, RangeRecord{Pool: p.id, First: d, Last: d})
	}
	return a.store.Commit(ctx, c)
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
	if p := a.last; p != nil && p.id == id {
		return p, nil
	}
	p, ok := a.pools[id]
	if ok {
		a.last = p
	}
	if !ok {
		return nil, fmt.Errorf("%w: pool %q", errdefs.ErrNotFound, id)
	}
	return p, nil
}

// pool is one reserved subnet and the addresses allocated in it, as runs of
// consecutive addresses. The allocator's mutex guards it.
type pool struct {
	id      string
	subnet  netip.Prefix
	ipRange netip.Prefix // zero when not set
	v6      bool

	sfirst, slast u128    // the subnet's bounds
	first, last   u128    // the dynamic range: ipRange, or subnet when ipRange is not set
	reserved      [2]u128 // never handed out: see reservedAddrs
	nreserved     int
	usable        uint64 // usable addresses in [first, last], capped at maxCount

	runs      runSet // the allocated addresses (never a reserved one)
	inRange   uint64 // allocated addresses in [first, last]
	cursor    u128   // last address handed out dynamically, when hasCursor
	hasCursor bool
}

func newPool(id string, subnet, ipRange netip.Prefix) *pool {
	rng := subnet
	if ipRange.IsValid() {
		rng = ipRange
	}
	reserved := reservedAddrs(subnet)
	p := &pool{
		id:      id,
		subnet:  subnet,
		ipRange: ipRange,
		v6:      subnet.Addr().Is6(),
		usable:  usableIn(rng, reserved),
	}
	p.sfirst, p.slast = prefixBounds(subnet)
	p.first, p.last = prefixBounds(rng)
	for _, r := range reserved {
		p.reserved[p.nreserved] = fromAddr(r)
		p.nreserved++
	}
	return p
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

func (p *pool) record() PoolRecord {
	r := PoolRecord{ID: p.id, Subnet: p.subnet, IPRange: p.ipRange}
	if p.hasCursor {
		r.Cursor = toAddr(p.cursor, p.v6)
	}
	return r
}

// name names the pool in messages: its subnet, and its range when set.
func (p *pool) name() string {
	if p.ipRange.IsValid() {
		return p.subnet.String() + " (ip-range " + p.ipRange.String() + ")"
	}
	return p.subnet.String()
}

func (p *pool) inDynamicRange(x u128) bool {
	return !x.less(p.first) && !p.last.less(x)
}

func (p *pool) isReserved(x u128) bool {
	for _, r := range p.reserved[:p.nreserved] {
		if r == x {
			return true
		}
	}
	return false
}

// checkPreferred checks that the preferred address a lies in the subnet, is
// not reserved, and is free.
func (p *pool) checkPreferred(a netip.Addr) error {
	if !p.subnet.Contains(a) {
		return fmt.Errorf("%w: address %s is outside subnet %s", errdefs.ErrInvalid, a, p.subnet)
	}
	x := fromAddr(a)
	if p.isReserved(x) {
		what := "network address"
		switch {
		case a.Is6():
			what = "subnet-router anycast address"
		case a != p.subnet.Addr():
			what = "broadcast address"
		}
		return fmt.Errorf("%w: address %s is the %s of subnet %s", errdefs.ErrInvalid, a, what, p.subnet)
	}
	if p.runs.contains(x) {
		return fmt.Errorf("%w: address %s is already allocated in pool %s", errdefs.ErrExists, a, p.subnet)
	}
	return nil
}

// nextFree returns the first free usable address after the cursor, wrapping
// around the dynamic range, without allocating it.
//
// Each step either returns or moves past a whole run (runs are maximal, so
// the address after one is free) or past a reserved address, and the count
// check guarantees a free address, so the search takes a handful of O(log n)
// lookups whatever the fill.
func (p *pool) nextFree() (u128, error) {
	if p.inRange >= p.usable {
		return u128{}, fmt.Errorf("%w: no free address in pool %s", ErrPoolExhausted, p.name())
	}
	x := p.first
	if p.hasCursor && p.cursor != p.last {
		x = p.cursor.add1()
	}
	for wrapped := false; ; {
		if r := p.runs.floor(x); r != nil && !r.hi.less(x) {
			if !r.hi.less(p.last) {
				if wrapped {
					break
				}
				x, wrapped = p.first, true
				continue
			}
			x = r.hi.add1()
		}
		if !p.isReserved(x) {
			return x, nil
		}
		if x == p.last {
			if wrapped {
				break
			}
			x, wrapped = p.first, true
			continue
		}
		x = x.add1()
	}
	// Not reached while inRange counts right.
	return u128{}, fmt.Errorf("%w: no free address in pool %s", ErrPoolExhausted, p.name())
}

// mark allocates the free, usable address x, recording the change in e
// (which may be nil).
func (p *pool) mark(x u128, e *runEdit) {
	if p.inDynamicRange(x) {
		p.inRange++
	}
	p.runs.add(x, x, e)
}

// unmark frees x and returns true when it is allocated; otherwise it returns
// false and changes nothing.
func (p *pool) unmark(x u128, e *runEdit) bool {
	if !p.runs.remove(x, x, e) {
		return false
	}
	if p.inDynamicRange(x) {
		p.inRange--
	}
	return true
}
