package global

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"strings"
	"sync"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

const (
	// poolPrefix holds one key per pool: poolPrefix+<pool key> (see
	// [parsePoolID]).
	poolPrefix = "ipam/global/pools/"
	// blocksPrefix holds the claimed blocks of every pool:
	// blocksPrefix+<pool key>/<block index>, under the claiming host's lease.
	blocksPrefix = "ipam/global/blocks/"
	// reservedPrefix holds the reserved addresses of every pool:
	// reservedPrefix+<pool key>/<ordinal>, with no lease.
	reservedPrefix = "ipam/global/reserved/"
)

// poolRecord is the value of a pool's key.
type poolRecord struct {
	ID        string `json:"id"`
	Subnet    string `json:"subnet"`
	BlockSize int    `json:"blockSize"`      // prefix length of a block
	Host      string `json:"host,omitempty"` // the host that requested it
}

// Allocator serves [ipam.GlobalSpace] from the global store, for one host.
// Every host that has endpoints on a global network makes one, with its own
// lease; a pool requested on one host is usable by its ID on every other.
// Make one with [New]. It is safe for concurrent use.
//
// A call that returns an error changes no address: at most a block it
// claimed on the way stays claimed, empty, until [Allocator.ReturnEmptyBlocks]
// or the end of the lease.
type Allocator struct {
	cfg Config

	mu    sync.Mutex
	pools map[string]*gpool // by ID: pools this host has used
	// loading counts the lookups in flight of pools not cached yet, by
	// pool key; deleted holds, by pool key, the revision of the last
	// delete the watch saw of a pool being looked up, so that a lookup
	// that read the record before it went does not cache it. An entry of
	// both goes when the last lookup of its key ends.
	loading map[string]int
	deleted map[string]uint64

	watchOnce sync.Once
	stopWatch context.CancelFunc // set by the first pool load
	watchDone chan struct{}      // closed when the watch of the pools ends
}

type gpool struct {
	key    string // its key (see [parsePoolID])
	subnet netip.Prefix
	rev    uint64 // revision of the pool's record
	sp     *space
}

var _ ipam.Allocator = (*Allocator)(nil)

// New returns this host's allocator of the global address space. It checks
// cfg (an error wrapping errdefs.ErrInvalid names the bad field and value)
// and touches no key.
func New(cfg Config) (*Allocator, error) {
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	return &Allocator{cfg: cfg, pools: make(map[string]*gpool),
		loading: make(map[string]int), deleted: make(map[string]uint64), watchDone: make(chan struct{})}, nil
}

// AddressSpaces returns [ipam.LocalSpace] and [ipam.GlobalSpace]; this
// allocator serves only the second.
func (a *Allocator) AddressSpaces() (local, global string) {
	return ipam.LocalSpace, ipam.GlobalSpace
}

func subnetKey(p netip.Prefix) string { return strings.ReplaceAll(p.String(), "/", "_") }

// nonceLen is the length of a pool ID's nonce: 8 random bytes in
// hexadecimal.
const nonceLen = 16

// newPoolID returns a new ID for a pool of subnet, and the pool's key.
func newPoolID(subnet netip.Prefix) (id, key string) {
	var b [nonceLen / 2]byte
	_, _ = rand.Read(b[:])
	nonce := hex.EncodeToString(b[:])
	return ipam.GlobalSpace + "/" + subnet.String() + "#" + nonce, subnetKey(subnet) + "_" + nonce
}

// parsePoolID returns the subnet of a pool ID ("global/<subnet>#<nonce>")
// and the pool's key, which names the pool in the keys of its record,
// blocks and reservations: the subnet with '/' written as '_', then '_'
// and the nonce ("global/10.0.0.0/24#0123456789abcdef" is
// "10.0.0.0_24_0123456789abcdef"). Anything else is an error wrapping
// errdefs.ErrNotFound.
func parsePoolID(poolID string) (netip.Prefix, string, error) {
	rest, ok := strings.CutPrefix(poolID, ipam.GlobalSpace+"/")
	sub, nonce, ok2 := strings.Cut(rest, "#")
	subnet, err := netip.ParsePrefix(sub)
	if !ok || !ok2 || err != nil || subnet.String() != sub || !isNonce(nonce) {
		return netip.Prefix{}, "", fmt.Errorf("%w: pool id %q is not a global pool id", errdefs.ErrNotFound, poolID)
	}
	return subnet, subnetKey(subnet) + "_" + nonce, nil
}

func isNonce(s string) bool {
	if len(s) != nonceLen {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// RequestPool makes a pool of req.Subnet in the global address space,
// usable by its ID on every host, and returns it. The subnet must be given
// (the global space has no default pools), masked, of the family req.V6
// says, and for IPv6 a /64 or longer; IPRange and Size are not supported
// and must be zero; Avoid is ignored. An address space other than "" or
// [ipam.GlobalSpace] is refused. Bad input is an error wrapping
// errdefs.ErrInvalid naming the field and value.
//
// The subnet may overlap, or equal, that of any other pool, requested by
// any host: a global network lives in a network namespace of its own on
// every host, so two of them may use the same addresses. Every pool is
// independent, named by its ID: its own blocks, reservations and
// allocations, released with it alone.
func (a *Allocator) RequestPool(ctx context.Context, req ipam.PoolRequest) (ipam.Pool, error) {
	if err := checkPoolRequest(req); err != nil {
		return ipam.Pool{}, err
	}
	subnet := req.Subnet
	bs := a.cfg.BlockSizeV4
	if subnet.Addr().Is6() {
		bs = a.cfg.BlockSizeV6
	}
	bs = max(bs, subnet.Bits())
	if a.cfg.MinBlocks > 1 {
		// At least MinBlocks blocks, so that a small subnet (Docker's
		// overlay /24) still serves that many hosts.
		need := bits.Len(uint(a.cfg.MinBlocks - 1))
		bs = max(bs, min(subnet.Bits()+need, subnet.Addr().BitLen()))
	}
	for attempt := 1; ; attempt++ {
		id, key := newPoolID(subnet)
		val, _ := json.Marshal(poolRecord{ID: id, Subnet: subnet.String(), BlockSize: bs, Host: a.cfg.Host})
		// The key must not exist: a nonce drawn twice (never, in
		// practice) is drawn again rather than taking another pool's key.
		_, err := a.cfg.Store.TxnIf(ctx, []etcdstore.Cond{{Key: poolPrefix + key}},
			etcdstore.Op{Key: poolPrefix + key, Value: val})
		if errors.Is(err, store.ErrConflict) && attempt < 3 {
			continue
		}
		if err != nil {
			return ipam.Pool{}, fmt.Errorf("request pool %s: %w", subnet, err)
		}
		return ipam.Pool{ID: id, Subnet: subnet}, nil
	}
}

func checkPoolRequest(req ipam.PoolRequest) error {
	switch req.AddressSpace {
	case "", ipam.GlobalSpace:
	default:
		return fmt.Errorf("%w: address space %q is not served by the global allocator", errdefs.ErrInvalid, req.AddressSpace)
	}
	s := req.Subnet
	switch {
	case s == (netip.Prefix{}):
		return fmt.Errorf("%w: subnet is not set: the global address space has no default pools", errdefs.ErrInvalid)
	case !s.IsValid():
		return fmt.Errorf("%w: subnet %s is not a valid prefix", errdefs.ErrInvalid, s)
	case s.Masked() != s:
		return fmt.Errorf("%w: subnet %s has host bits set (use %s)", errdefs.ErrInvalid, s, s.Masked())
	case s.Addr().Is4In6() || s.Addr().Zone() != "":
		return fmt.Errorf("%w: subnet %s is not a plain IPv4 or IPv6 prefix", errdefs.ErrInvalid, s)
	case s.Addr().Is6() != req.V6:
		return fmt.Errorf("%w: subnet %s does not match v6=%t", errdefs.ErrInvalid, s, req.V6)
	case s.Addr().Is6() && s.Bits() < 64:
		return fmt.Errorf("%w: subnet %s is shorter than the /64 the global allocator supports", errdefs.ErrInvalid, s)
	case req.IPRange != (netip.Prefix{}):
		return fmt.Errorf("%w: ip-range %s is not supported by the global allocator", errdefs.ErrInvalid, req.IPRange)
	case req.Size != 0:
		return fmt.Errorf("%w: size %d is not supported by the global allocator (give a subnet)", errdefs.ErrInvalid, req.Size)
	}
	return nil
}

// ReleasePool drops the pool for every host, with every block claimed in
// it and every address reserved in it ([Allocator.ReserveAddress]); other
// pools, of the same subnet or not, keep theirs. The caller makes sure no
// host still uses it (the controller refuses to delete a network with
// endpoints). An unknown or stale ID is an error wrapping
// errdefs.ErrNotFound.
func (a *Allocator) ReleasePool(ctx context.Context, poolID string) error {
	_, key, err := parsePoolID(poolID)
	if err != nil {
		return err
	}
	_, kv, err := a.lookup(ctx, poolID, key)
	if err != nil {
		return err
	}
	_, err = a.cfg.Store.TxnIf(ctx, []etcdstore.Cond{{Key: kv.Key, Revision: kv.Revision}},
		etcdstore.Op{Key: kv.Key, Delete: true},
		etcdstore.Op{Key: blocksPrefix + key + "/", Delete: true, Prefix: true},
		etcdstore.Op{Key: reservedPrefix + key + "/", Delete: true, Prefix: true})
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%w: pool %q: released meanwhile", errdefs.ErrNotFound, poolID)
	}
	if err != nil {
		return fmt.Errorf("release pool %q: %w", poolID, err)
	}
	a.mu.Lock()
	delete(a.pools, poolID)
	a.mu.Unlock()
	return nil
}

// lookup reads the record of pool poolID, whose key is key, from the store.
func (a *Allocator) lookup(ctx context.Context, poolID, key string) (poolRecord, store.KV, error) {
	kv, err := a.cfg.Store.Get(ctx, poolPrefix+key)
	if errors.Is(err, store.ErrNotFound) {
		return poolRecord{}, store.KV{}, fmt.Errorf("%w: pool %q", errdefs.ErrNotFound, poolID)
	}
	if err != nil {
		return poolRecord{}, store.KV{}, fmt.Errorf("pool %q: %w", poolID, err)
	}
	var rec poolRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil || rec.ID != poolID {
		return poolRecord{}, store.KV{}, fmt.Errorf("%w: pool %q (its key holds another pool)", errdefs.ErrNotFound, poolID)
	}
	return rec, kv, nil
}

// pool returns the pool of poolID, reading it from the store the first time
// this host uses it.
func (a *Allocator) pool(ctx context.Context, poolID string) (*gpool, error) {
	a.mu.Lock()
	p := a.pools[poolID]
	a.mu.Unlock()
	if p != nil {
		return p, nil
	}
	subnet, key, err := parsePoolID(poolID)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.loading[key]++
	a.mu.Unlock()
	defer a.doneLoading(key)
	rec, kv, err := a.lookup(ctx, poolID, key)
	if err != nil {
		return nil, err
	}
	addrBits := subnet.Addr().BitLen()
	hostBits := uint(addrBits - subnet.Bits())
	last := ^uint64(0) >> (64 - hostBits)
	if hostBits == 0 {
		last = 0
	}
	first := uint64(0)
	switch {
	case subnet.Addr().Is4() && hostBits >= 2:
		first, last = 1, last-1 // no network and broadcast address
	case subnet.Addr().Is6() && hostBits >= 2:
		first = 1 // no Subnet-Router anycast address
	}
	base := subnet.Addr()
	p = &gpool{key: key, subnet: subnet, rev: kv.Revision}
	p.sp = &space{
		kv:     a.cfg.Store,
		lease:  a.cfg.Lease,
		host:   a.cfg.Host,
		name:   "subnet " + subnet.String(),
		prefix: blocksPrefix + key + "/",
		// Reservations are read when a block is claimed or adopted.
		reservedPrefix: reservedPrefix + key + "/",
		guard:          []etcdstore.Cond{{Key: kv.Key, Revision: kv.Revision}},
		first:          first,
		last:           last,
		bits:           uint(addrBits - rec.BlockSize),
		format:         func(ord uint64) string { return addrAt(base, ord).String() },
		blockName: func(idx uint64) string {
			return netip.PrefixFrom(addrAt(base, idx<<uint(addrBits-rec.BlockSize)), rec.BlockSize).String()
		},
		blocks: make(map[uint64]*block),
	}
	a.startWatch(kv.Revision)
	a.mu.Lock()
	defer a.mu.Unlock()
	if q := a.pools[poolID]; q != nil {
		return q, nil
	}
	if a.deleted[key] > kv.Revision { // released while we read it
		return nil, fmt.Errorf("%w: pool %q", errdefs.ErrNotFound, poolID)
	}
	a.pools[poolID] = p
	return p, nil
}

// doneLoading ends a lookup of the pool key; the last one forgets the
// deletes the watch saw of it (a later lookup reads the store after them).
func (a *Allocator) doneLoading(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.loading[key]--
	if a.loading[key] <= 0 {
		delete(a.loading, key)
		delete(a.deleted, key)
	}
}

// addrAt returns base + ord (ord fits in the subnet's host bits, at most 64).
func addrAt(base netip.Addr, ord uint64) netip.Addr {
	if base.Is4() {
		b := base.As4()
		binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+uint32(ord))
		return netip.AddrFrom4(b)
	}
	b := base.As16()
	binary.BigEndian.PutUint64(b[8:], binary.BigEndian.Uint64(b[8:])+ord)
	return netip.AddrFrom16(b)
}

// ordOf returns addr's offset in subnet.
func ordOf(subnet netip.Prefix, addr netip.Addr) uint64 {
	if addr.Is4() {
		a, b := addr.As4(), subnet.Addr().As4()
		return uint64(binary.BigEndian.Uint32(a[:]) - binary.BigEndian.Uint32(b[:]))
	}
	a, b := addr.As16(), subnet.Addr().As16()
	return binary.BigEndian.Uint64(a[8:]) - binary.BigEndian.Uint64(b[8:])
}

// RequestAddress allocates an address of the pool on this host. With a zero
// req.Preferred it takes the lowest free address of this host's blocks (not
// next-fit as [ipam.AddressRequest] describes for the local allocator: a
// just-released address may come back at once), and
// claims the lowest free block of the pool when they are full, which is
// the only case that asks etcd; when every block is claimed by some host and
// this host's are full it fails with [ipam.ErrPoolExhausted] naming the
// subnet. A preferred address must be a usable address of the subnet; its
// block is claimed if no host holds it, and a block held by another host
// (or by this host's name under another lease) is an error wrapping
// errdefs.ErrExists naming that host. An address reserved with
// [Allocator.ReserveAddress] is never handed out; asked for as preferred,
// it is an error wrapping errdefs.ErrExists. Only this pool counts: an
// address allocated or reserved in another pool of the same subnet is free
// here.
//
// Restart: a block whose record names this allocator's Host and Lease was
// claimed by this host's previous run (whose lease was adopted,
// [etcdstore.Store.AdoptLease]). It is taken as this allocator's own, with
// nothing allocated in it, when a preferred address in it is asked for (or,
// failing a free block, by a dynamic request). So the restarting
// controller asks again, as preferred, for every address its records say
// it holds, before it asks this pool for any new one; the rest of each
// block is then free again.
func (a *Allocator) RequestAddress(ctx context.Context, poolID string, req ipam.AddressRequest) (netip.Addr, error) {
	p, err := a.pool(ctx, poolID)
	if err != nil {
		return netip.Addr{}, err
	}
	if pa := req.Preferred; pa.IsValid() {
		ord, err := p.checkAddr("preferred address", pa)
		if err != nil {
			return netip.Addr{}, err
		}
		if err := p.sp.allocAt(ctx, ord); err != nil {
			return netip.Addr{}, err
		}
		return pa, nil
	}
	ord, err := p.sp.alloc(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	return addrAt(p.subnet.Addr(), ord), nil
}

// checkAddr checks that addr is a usable address of the pool's subnet.
func (p *gpool) checkAddr(field string, addr netip.Addr) (uint64, error) {
	if addr.Zone() != "" || addr.Is4In6() || !p.subnet.Contains(addr) {
		return 0, fmt.Errorf("%w: %s %s is not in subnet %s", errdefs.ErrInvalid, field, addr, p.subnet)
	}
	ord := ordOf(p.subnet, addr)
	if !p.sp.usable(ord) {
		return 0, fmt.Errorf("%w: %s %s is a reserved address of subnet %s", errdefs.ErrInvalid, field, addr, p.subnet)
	}
	return ord, nil
}

// ReleaseAddress frees an address this host allocated in the pool; an
// address this host did not allocate, a reserved one included (it goes with
// the pool), is an error wrapping errdefs.ErrNotFound and changes nothing. When its block is then empty the block is returned
// to the subnet (its key deleted). If that delete fails the address is
// freed all the same and nil returned: the empty block stays this host's,
// for its next address or [Allocator.ReturnEmptyBlocks].
func (a *Allocator) ReleaseAddress(ctx context.Context, poolID string, addr netip.Addr) error {
	p, err := a.pool(ctx, poolID)
	if err != nil {
		return err
	}
	ord, err := p.checkAddr("address", addr)
	if err != nil {
		return err
	}
	return p.sp.release(ctx, ord)
}

// ReturnEmptyBlocks gives back every block of this host that has no address
// allocated, in every pool it has used. Blocks still in use stay claimed.
//
// It also gives back the blocks this host's previous run claimed under the
// same lease that this allocator has not taken as its own since (nothing
// was asked of them), in every pool: so after a restart, call it only once
// every address the controller's records hold has been asked for again;
// otherwise another host could hand those addresses out.
func (a *Allocator) ReturnEmptyBlocks(ctx context.Context) error {
	// Load the pools where the previous run left blocks: the blocks are
	// the keys etcd keeps with the lease (no listing of every host's).
	blocks, err := a.cfg.Lease.Keys(ctx, blocksPrefix)
	if errors.Is(err, etcdstore.ErrLeaseLost) {
		return nil // etcd drops every block with the lease
	}
	if err != nil {
		return fmt.Errorf("return empty blocks: this host's blocks: %w", err)
	}
	keys := map[string]bool{} // of the pools
	for _, b := range blocks {
		key, _, _ := strings.Cut(strings.TrimPrefix(b, blocksPrefix), "/")
		keys[key] = true
	}
	var errs []error
	for key := range keys {
		kv, err := a.cfg.Store.Get(ctx, poolPrefix+key)
		if errors.Is(err, store.ErrNotFound) {
			continue // released: its blocks went with it
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("return empty blocks: %w", err))
			continue
		}
		var rec poolRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			continue
		}
		if _, err := a.pool(ctx, rec.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			errs = append(errs, fmt.Errorf("return empty blocks: %w", err))
		}
	}
	a.mu.Lock()
	pools := make([]*gpool, 0, len(a.pools))
	for _, p := range a.pools {
		pools = append(pools, p)
	}
	a.mu.Unlock()
	for _, p := range pools {
		errs = append(errs, p.sp.returnEmpty(ctx))
	}
	return errors.Join(errs...)
}

// ReserveAddress reserves addr in the pool for every host, for good: no
// host's block hands it out, before or after any host dies, until the pool
// is released ([Allocator.ReleasePool] drops the reservations with it). It
// is meant for a network's gateway, which every host's overlay bridge
// carries, and its auxiliary addresses, and is called by the host that
// requested the pool, right after [Allocator.RequestPool], before any block
// of the pool exists.
//
// The reservation is a key of its own with no lease,
// ipam/global/reserved/<pool key>/<ordinal>, of this pool alone: a pool of
// the same subnet may hand addr out. It is written only if no host
// holds addr's block, or this host does and has not handed addr out (its
// block skips addr from then on); a block claimed later, by any host,
// reads the reservations when it is claimed and skips them (a transaction
// makes the two exclude each other). A block held by another host is
// refused (that host may have handed addr out, and learns nothing while
// it allocates from memory): an error wrapping errdefs.ErrExists naming
// the host. An address already reserved, or allocated by this host, is an
// error wrapping errdefs.ErrExists too; one that is not a usable address
// of the subnet wraps errdefs.ErrInvalid; an unknown pool
// errdefs.ErrNotFound.
func (a *Allocator) ReserveAddress(ctx context.Context, poolID string, addr netip.Addr) error {
	p, err := a.pool(ctx, poolID)
	if err != nil {
		return err
	}
	ord, err := p.checkAddr("address", addr)
	if err != nil {
		return err
	}
	val, _ := json.Marshal(reservation{Pool: poolID, Address: addr.String(), Host: a.cfg.Host})
	if err := p.sp.reserve(ctx, ord, val); err != nil {
		return fmt.Errorf("reserve %s in pool %q: %w", addr, poolID, err)
	}
	return nil
}

// OwnPools returns the IDs of the pools this host requested that still
// exist, for a host that restarts to release those its records no longer
// explain (it crashed between requesting a pool and recording it).
func (a *Allocator) OwnPools(ctx context.Context) ([]string, error) {
	kvs, _, err := a.cfg.Store.Snapshot(ctx, poolPrefix)
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	var out []string
	for _, kv := range kvs {
		var rec poolRecord
		if json.Unmarshal(kv.Value, &rec) == nil && rec.Host == a.cfg.Host && rec.ID != "" {
			out = append(out, rec.ID)
		}
	}
	return out, nil
}
