package global

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// KV is what the allocators need of the global store; [etcdstore.Store]
// has it.
type KV = etcdstore.KV

// blockRecord is the value of a claimed block's key.
type blockRecord struct {
	Host  string `json:"host"`
	Block string `json:"block"` // the block, for people
	// Lease is the ID, in hexadecimal, of the lease the key is under: an
	// allocator with the same Host and Lease (the host's next run, which
	// adopted the lease) takes the block as its own.
	Lease string `json:"lease,omitempty"`
}

// reservation is the value of a reserved address's key.
type reservation struct {
	Pool    string `json:"pool"`
	Address string `json:"address"`
	Host    string `json:"host"` // the host that reserved it, for people
}

// space is a range of ordinals (address offsets in a subnet, or VXLAN IDs)
// cut into aligned blocks of 2^bits ordinals that hosts claim in etcd.
type space struct {
	kv     KV
	lease  *etcdstore.Lease
	host   string
	name   string           // names the space in errors: "subnet 10.0.0.0/24"
	prefix string           // of the block keys, ending in '/'
	guard  []etcdstore.Cond // must hold for a claim (the pool still exists)
	first  uint64           // first usable ordinal
	last   uint64           // last usable ordinal
	bits   uint             // log2 of the block size
	format func(ord uint64) string
	// blockName names block idx in errors and records.
	blockName func(idx uint64) string

	// record, when set, records each allocated ordinal under
	// recordPrefix+<ordinal> with no lease, so that it outlives the host's
	// block (VXLAN IDs belong to networks, not to hosts).
	recordPrefix string

	// reservedPrefix, when set, holds the space's reserved ordinals, one
	// key each (reservedPrefix+<ordinal in 16 hex digits>), with no lease:
	// every block skips them (gateways and auxiliary addresses).
	reservedPrefix string

	mu       sync.Mutex
	released bool              // the pool was released (seen by a watch)
	blocks   map[uint64]*block // held blocks by index
	order    []uint64          // their indexes, sorted
}

type block struct {
	idx  uint64
	rev  uint64   // revision of our claim
	used []uint64 // bitmap of the block's ordinals; unusable ones are set
	n    int      // ordinals allocated by this host
	// other holds the ordinals of a recording space that are set in used
	// because they were recorded elsewhere (by another host, or before
	// this allocator held the block); they are not counted in n.
	other map[uint64]bool
	// reserved holds the ordinals that are set in used because they are
	// reserved for the pool; they are not counted in n.
	reserved map[uint64]bool
}

func (sp *space) blockKey(idx uint64) string {
	return sp.prefix + fmt.Sprintf("%016x", idx)
}

func (sp *space) reservedKey(ord uint64) string {
	return sp.reservedPrefix + fmt.Sprintf("%016x", ord)
}

// leaseTag is the lease's ID as block records hold it.
func (sp *space) leaseTag() string { return strconv.FormatInt(sp.lease.ID(), 16) }

// ours reports whether a block record names this host under this lease: a
// block this host claimed in an earlier run, before it adopted the lease.
func (sp *space) ours(rec blockRecord) bool {
	return rec.Host == sp.host && rec.Lease == sp.leaseTag()
}

// holder names the holder of a block record in errors.
func (sp *space) holder(rec blockRecord) string {
	if rec.Host == sp.host {
		return fmt.Sprintf("host %q under another lease (%s)", rec.Host, rec.Lease)
	}
	return fmt.Sprintf("host %q", rec.Host)
}

// aliveLocked fails once the pool is released or the lease lost; on a lost
// lease it drops every block, as etcd has deleted (or is about to delete)
// their keys.
func (sp *space) aliveLocked() error {
	if sp.released {
		return fmt.Errorf("%w: %s: released", errdefs.ErrNotFound, sp.name)
	}
	if err := sp.lease.Err(); err != nil {
		clear(sp.blocks)
		sp.order = nil
		return fmt.Errorf("%s: host %q: %w", sp.name, sp.host, err)
	}
	return nil
}

// alloc hands out the lowest free ordinal of the held blocks, claiming a
// new block when they are full.
func (sp *space) alloc(ctx context.Context) (uint64, error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err := sp.aliveLocked(); err != nil {
		return 0, err
	}
	for {
		b, ord, ok := sp.findFreeLocked()
		if !ok {
			var err error
			if b, err = sp.claimFreeLocked(ctx); err != nil {
				return 0, err
			}
			// A block of VXLAN IDs may be full of IDs recorded before we
			// held it: it stays ours (so the search skips it) and we claim
			// the next.
			if ord, ok = b.free(sp); !ok {
				continue
			}
		}
		err := sp.takeLocked(ctx, b, ord)
		if errors.Is(err, errRecordedElsewhere) {
			continue // the bit is now set: look further
		}
		return ord, err
	}
}

// findFreeLocked returns the lowest free ordinal of the held blocks.
func (sp *space) findFreeLocked() (*block, uint64, bool) {
	for _, idx := range sp.order {
		if ord, ok := sp.blocks[idx].free(sp); ok {
			return sp.blocks[idx], ord, true
		}
	}
	return nil, 0, false
}

// allocAt hands out the given ordinal, claiming its block when no host holds
// it. A block held by another host is reported with errdefs.ErrExists, except
// in a recording space, where the record alone decides.
func (sp *space) allocAt(ctx context.Context, ord uint64) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err := sp.aliveLocked(); err != nil {
		return err
	}
	idx := ord >> sp.bits
	b := sp.blocks[idx]
	if sp.recordPrefix != "" { // the record decides
		if err := sp.recordLocked(ctx, b, ord); err != nil {
			return err
		}
		switch {
		case b == nil:
		case b.other[ord]:
			delete(b.other, ord)
			b.n++
		case !b.isSet(sp, ord):
			b.set(sp, ord, true)
			b.n++
		}
		// else: ours before, released by another host, ours again
		return nil
	}
	fresh := false
	if b == nil {
		var err error
		if b, fresh, err = sp.claimLocked(ctx, idx); err != nil {
			return fmt.Errorf("%s: %w", sp.format(ord), err)
		}
	}
	if b.isSet(sp, ord) {
		what := "already allocated"
		if b.reserved[ord] {
			what = "reserved for the pool (a gateway or auxiliary address)"
		}
		if fresh && b.n == 0 { // claimed for nothing: give it back
			_ = sp.returnLocked(ctx, b)
		}
		return fmt.Errorf("%w: %s: %s is %s", errdefs.ErrExists, sp.name, sp.format(ord), what)
	}
	return sp.takeLocked(ctx, b, ord)
}

// errRecordedElsewhere marks an ordinal of a held block that another host
// recorded (a VXLAN ID asked for explicitly elsewhere).
var errRecordedElsewhere = errors.New("recorded by another host")

// takeLocked marks ord allocated in b (recording it first when the space
// records allocations).
func (sp *space) takeLocked(ctx context.Context, b *block, ord uint64) error {
	if sp.recordPrefix != "" {
		if err := sp.recordLocked(ctx, b, ord); err != nil {
			return err
		}
	}
	b.set(sp, ord, true)
	b.n++
	return nil
}

// recordLocked writes ord's record, only if there is none and, when b is
// set, only while b is still ours. An existing record is an error wrapping
// errdefs.ErrExists (and errRecordedElsewhere, with ord's bit set in b).
func (sp *space) recordLocked(ctx context.Context, b *block, ord uint64) error {
	key := sp.recordPrefix + strconv.FormatUint(ord, 10)
	conds := []etcdstore.Cond{{Key: key}}
	if b != nil {
		conds = append(conds, etcdstore.Cond{Key: sp.blockKey(b.idx), Revision: b.rev})
	}
	_, err := sp.kv.TxnIf(ctx, conds, etcdstore.Op{Key: key, Value: []byte(sp.host)})
	if errors.Is(err, store.ErrConflict) {
		if kv, gerr := sp.kv.Get(ctx, key); gerr == nil {
			if b != nil && !b.isSet(sp, ord) {
				b.setOther(sp, ord) // taken, but not by us: not counted in n
			}
			return fmt.Errorf("%w: %s: %s is already allocated (by host %q): %w",
				errdefs.ErrExists, sp.name, sp.format(ord), kv.Value, errRecordedElsewhere)
		}
	}
	if err != nil {
		return fmt.Errorf("%s: record %s: %w", sp.name, sp.format(ord), err)
	}
	return nil
}

// release frees ord, and returns its block when the block is then empty.
// Only the host that allocated an ordinal can release it, except in a
// recording space, where any host can (a network is deleted anywhere).
func (sp *space) release(ctx context.Context, ord uint64) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err := sp.aliveLocked(); err != nil {
		return err
	}
	b := sp.blocks[ord>>sp.bits]
	if b != nil && b.reserved[ord] {
		return fmt.Errorf("%w: %s: %s is reserved for the pool, not allocated by host %q (it is freed with the pool)",
			errdefs.ErrNotFound, sp.name, sp.format(ord), sp.host)
	}
	mine := b != nil && sp.usable(ord) && b.isSet(sp, ord)
	if sp.recordPrefix != "" {
		key := sp.recordPrefix + strconv.FormatUint(ord, 10)
		kv, err := sp.kv.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) || !sp.usable(ord) {
			return fmt.Errorf("%w: %s: %s is not allocated", errdefs.ErrNotFound, sp.name, sp.format(ord))
		}
		if err != nil {
			return fmt.Errorf("%s: release %s: %w", sp.name, sp.format(ord), err)
		}
		if _, err := sp.kv.TxnIf(ctx, []etcdstore.Cond{{Key: key, Revision: kv.Revision}}, etcdstore.Op{Key: key, Delete: true}); err != nil {
			return fmt.Errorf("%s: release %s: %w", sp.name, sp.format(ord), err)
		}
		if mine && b.other[ord] {
			delete(b.other, ord) // was taken elsewhere: not counted
			b.set(sp, ord, false)
			return nil
		}
		if !mine {
			return nil // in another host's block: it is free in etcd now
		}
	} else if !mine {
		return fmt.Errorf("%w: %s: %s is not allocated by host %q", errdefs.ErrNotFound, sp.name, sp.format(ord), sp.host)
	}
	b.set(sp, ord, false)
	b.n--
	if b.n == 0 {
		// Return the block. If etcd cannot be reached the block stays ours,
		// empty, and is used again or returned later: the release itself
		// has succeeded.
		_ = sp.returnLocked(ctx, b)
	}
	return nil
}

// returnLocked deletes the key of b, which holds nothing of ours, and
// forgets b. If etcd cannot be reached b stays ours, and the error is
// returned.
func (sp *space) returnLocked(ctx context.Context, b *block) error {
	_, err := sp.kv.TxnIf(ctx, []etcdstore.Cond{{Key: sp.blockKey(b.idx), Revision: b.rev}},
		etcdstore.Op{Key: sp.blockKey(b.idx), Delete: true})
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return err
	}
	sp.dropLocked(b.idx)
	return nil
}

// returnEmpty gives back every held block with nothing allocated in it,
// and every block this host claimed under its lease in an earlier run that
// it has not taken as its own since (nothing was asked of it).
func (sp *space) returnEmpty(ctx context.Context) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.lease.Err() != nil || sp.released {
		return nil // etcd drops them with the lease, or with the pool
	}
	var errs []error
	for _, idx := range slices.Clone(sp.order) {
		if b := sp.blocks[idx]; b.n == 0 {
			if err := sp.returnLocked(ctx, b); err != nil {
				errs = append(errs, fmt.Errorf("%s: return block %s: %w", sp.name, sp.blockName(idx), err))
			}
		}
	}
	kvs, _, err := sp.kv.Snapshot(ctx, sp.prefix)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("%s: list blocks: %w", sp.name, err))...)
	}
	for _, kv := range kvs {
		idx, err := strconv.ParseUint(strings.TrimPrefix(kv.Key, sp.prefix), 16, 64)
		if err != nil || sp.blocks[idx] != nil || !sp.ours(parseBlock(kv.Value)) {
			continue
		}
		_, err = sp.kv.TxnIf(ctx, []etcdstore.Cond{{Key: kv.Key, Revision: kv.Revision}}, etcdstore.Op{Key: kv.Key, Delete: true})
		if err != nil && !errors.Is(err, store.ErrConflict) {
			errs = append(errs, fmt.Errorf("%s: return block %s: %w", sp.name, sp.blockName(idx), err))
		}
	}
	return errors.Join(errs...)
}

func parseBlock(val []byte) blockRecord {
	var rec blockRecord
	_ = json.Unmarshal(val, &rec)
	return rec
}

func (sp *space) dropLocked(idx uint64) {
	delete(sp.blocks, idx)
	if i, ok := slices.BinarySearch(sp.order, idx); ok {
		sp.order = slices.Delete(sp.order, i, i+1)
	}
}

// maxClaimAttempts bounds the retries of a block claim lost to other hosts.
const maxClaimAttempts = 64

// claimFreeLocked claims the lowest block no host holds. It lists the
// claimed blocks and tries the first gap; when another host was faster it
// lists again.
func (sp *space) claimFreeLocked(ctx context.Context) (*block, error) {
	firstIdx, lastIdx := sp.first>>sp.bits, sp.last>>sp.bits
	for attempt := 0; ; attempt++ {
		if attempt == maxClaimAttempts {
			return nil, fmt.Errorf("%s: no block claimed after %d attempts: other hosts claim faster", sp.name, attempt)
		}
		kvs, _, err := sp.kv.Snapshot(ctx, sp.prefix)
		if err != nil {
			return nil, fmt.Errorf("%s: list blocks: %w", sp.name, err)
		}
		idx, exhausted := firstIdx, false
		for _, kv := range kvs { // sorted by index
			i, err := strconv.ParseUint(strings.TrimPrefix(kv.Key, sp.prefix), 16, 64)
			if err != nil || i < idx {
				continue
			}
			if i > idx {
				break // a gap
			}
			if sp.blocks[i] == nil && sp.ours(parseBlock(kv.Value)) {
				// Ours from an earlier run, and nothing was asked of it
				// since: take it as it is.
				return sp.adoptLocked(ctx, i, kv.Revision)
			}
			if idx == lastIdx {
				exhausted = true
				break
			}
			idx++
		}
		if exhausted {
			return nil, fmt.Errorf("%w: %s: every block is claimed and the blocks of host %q are full",
				ipam.ErrPoolExhausted, sp.name, sp.host)
		}
		b, _, err := sp.claimLocked(ctx, idx)
		if errors.Is(err, errdefs.ErrExists) {
			continue // another host claimed it first: look again
		}
		return b, err
	}
}

// claimLocked claims block idx under the lease, or fails with
// errdefs.ErrExists naming the host that holds it. A block this host
// claimed under the same lease in an earlier run is taken as it is
// (adopted: fresh is false), with nothing allocated in it yet.
func (sp *space) claimLocked(ctx context.Context, idx uint64) (b *block, fresh bool, err error) {
	key := sp.blockKey(idx)
	val, _ := json.Marshal(blockRecord{Host: sp.host, Block: sp.blockName(idx), Lease: sp.leaseTag()})
	conds := append([]etcdstore.Cond{{Key: key}}, sp.guard...)
	rev, err := sp.kv.TxnIf(ctx, conds, etcdstore.Op{Key: key, Value: val, Lease: sp.lease})
	if errors.Is(err, store.ErrConflict) {
		if kv, gerr := sp.kv.Get(ctx, key); gerr == nil {
			rec := parseBlock(kv.Value)
			if sp.ours(rec) {
				b, err := sp.adoptLocked(ctx, idx, kv.Revision)
				return b, false, err
			}
			return nil, false, fmt.Errorf("%w: %s: block %s is held by %s", errdefs.ErrExists, sp.name, sp.blockName(idx), sp.holder(rec))
		}
		if sp.guardGone(ctx) {
			return nil, false, fmt.Errorf("%w: %s: released", errdefs.ErrNotFound, sp.name)
		}
		// The block was claimed and returned meanwhile: the caller may retry.
		return nil, false, fmt.Errorf("%w: %s: block %s: %w", errdefs.ErrExists, sp.name, sp.blockName(idx), err)
	}
	if err != nil {
		return nil, false, fmt.Errorf("%s: claim block %s: %w", sp.name, sp.blockName(idx), err)
	}
	b, err = sp.newBlock(ctx, idx, rev)
	if err != nil {
		_, _ = sp.kv.TxnIf(ctx, []etcdstore.Cond{{Key: key, Revision: rev}}, etcdstore.Op{Key: key, Delete: true})
		return nil, false, err
	}
	sp.addLocked(b)
	return b, true, nil
}

// adoptLocked takes block idx, whose key (at revision rev) this host
// claimed under its lease in an earlier run, as its own: nothing allocated,
// and what was recorded or reserved in it skipped.
func (sp *space) adoptLocked(ctx context.Context, idx, rev uint64) (*block, error) {
	b, err := sp.newBlock(ctx, idx, rev)
	if err != nil {
		return nil, err
	}
	sp.addLocked(b)
	return b, nil
}

// guardGone reports whether a guard key of the space (its pool) is gone or
// changed: the pool was released.
func (sp *space) guardGone(ctx context.Context) bool {
	for _, g := range sp.guard {
		if kv, gerr := sp.kv.Get(ctx, g.Key); errors.Is(gerr, store.ErrNotFound) || (gerr == nil && kv.Revision != g.Revision) {
			return true
		}
	}
	return false
}

// newBlock makes the in-memory state of block idx held at revision rev:
// unusable ordinals set, and those recorded (VXLAN IDs: the record
// decides) or reserved (gateways) set as taken elsewhere.
func (sp *space) newBlock(ctx context.Context, idx, rev uint64) (*block, error) {
	size := uint64(1) << sp.bits
	b := &block{idx: idx, rev: rev, used: make([]uint64, (size+63)/64)}
	start := idx << sp.bits
	for o := range size {
		if !sp.usable(start + o) {
			b.used[o/64] |= 1 << (o % 64)
		}
	}
	if sp.recordPrefix != "" { // entries recorded before we held the block
		ords, err := sp.ordsIn(ctx, sp.recordPrefix, 10, idx)
		if err != nil {
			return nil, fmt.Errorf("%s: list records: %w", sp.name, err)
		}
		for _, ord := range ords {
			b.setOther(sp, ord)
		}
	}
	if sp.reservedPrefix != "" {
		ords, err := sp.ordsIn(ctx, sp.reservedPrefix, 16, idx)
		if err != nil {
			return nil, fmt.Errorf("%s: list reserved addresses: %w", sp.name, err)
		}
		for _, ord := range ords {
			b.setReserved(sp, ord)
		}
	}
	return b, nil
}

// ordsIn lists the usable ordinals of block idx that keys under prefix
// name (<prefix><ordinal in base>).
func (sp *space) ordsIn(ctx context.Context, prefix string, base int, idx uint64) ([]uint64, error) {
	kvs, _, err := sp.kv.Snapshot(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var ords []uint64
	for _, kv := range kvs {
		ord, err := strconv.ParseUint(strings.TrimPrefix(kv.Key, prefix), base, 64)
		if err == nil && ord>>sp.bits == idx && sp.usable(ord) {
			ords = append(ords, ord)
		}
	}
	return ords, nil
}

func (sp *space) addLocked(b *block) {
	sp.blocks[b.idx] = b
	i, _ := slices.BinarySearch(sp.order, b.idx)
	sp.order = slices.Insert(sp.order, i, b.idx)
}

// reserve records ord as reserved for every host, for good (no lease; it
// goes with the pool), so that no block hands it out. It is written only
// while no host holds ord's block, or while this host does and has not
// handed ord out; a block another host holds is refused, since that host
// may have handed ord out already (see [Allocator.ReserveAddress]).
func (sp *space) reserve(ctx context.Context, ord uint64, value []byte) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err := sp.aliveLocked(); err != nil {
		return err
	}
	idx := ord >> sp.bits
	key := sp.reservedKey(ord)
	for range maxClaimAttempts {
		b := sp.blocks[idx]
		bcond := etcdstore.Cond{Key: sp.blockKey(idx)} // no host holds the block
		if b != nil {
			switch {
			case b.reserved[ord]:
				return fmt.Errorf("%w: %s: %s is already reserved", errdefs.ErrExists, sp.name, sp.format(ord))
			case b.isSet(sp, ord):
				return fmt.Errorf("%w: %s: %s is allocated by host %q", errdefs.ErrExists, sp.name, sp.format(ord), sp.host)
			}
			bcond.Revision = b.rev // we hold it, and ord is free in it
		}
		conds := append([]etcdstore.Cond{{Key: key}, bcond}, sp.guard...)
		_, err := sp.kv.TxnIf(ctx, conds, etcdstore.Op{Key: key, Value: value})
		if err == nil {
			if b != nil {
				b.setReserved(sp, ord)
			}
			return nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("%s: reserve %s: %w", sp.name, sp.format(ord), err)
		}
		// Which condition failed?
		if _, gerr := sp.kv.Get(ctx, key); gerr == nil {
			if b != nil && !b.isSet(sp, ord) {
				b.setReserved(sp, ord)
			}
			return fmt.Errorf("%w: %s: %s is already reserved", errdefs.ErrExists, sp.name, sp.format(ord))
		} else if !errors.Is(gerr, store.ErrNotFound) {
			return fmt.Errorf("%s: reserve %s: %w", sp.name, sp.format(ord), gerr)
		}
		kv, gerr := sp.kv.Get(ctx, sp.blockKey(idx))
		switch {
		case gerr != nil && !errors.Is(gerr, store.ErrNotFound):
			return fmt.Errorf("%s: reserve %s: %w", sp.name, sp.format(ord), gerr)
		case b != nil && gerr == nil && kv.Revision == b.rev:
			// Our block is as it was: the pool changed (checked below).
		case b != nil:
			// Our block's key is gone or changed: the lease ended or the
			// pool was released. Forget the block and look again.
			sp.dropLocked(idx)
			if err := sp.aliveLocked(); err != nil {
				return err
			}
		case gerr == nil:
			rec := parseBlock(kv.Value)
			if !sp.ours(rec) {
				return fmt.Errorf("%w: %s: %s: block %s is held by %s, which may have handed the address out (reserve addresses right after the pool is requested)",
					errdefs.ErrExists, sp.name, sp.format(ord), sp.blockName(idx), sp.holder(rec))
			}
			if _, err := sp.adoptLocked(ctx, idx, kv.Revision); err != nil {
				return err
			}
			continue
		}
		if sp.guardGone(ctx) {
			return fmt.Errorf("%w: %s: released", errdefs.ErrNotFound, sp.name)
		}
		// A block was claimed and returned meanwhile: try again.
	}
	return fmt.Errorf("%s: reserve %s: gave up after %d attempts: blocks change too fast", sp.name, sp.format(ord), maxClaimAttempts)
}

func (sp *space) usable(ord uint64) bool { return ord >= sp.first && ord <= sp.last }

func (b *block) free(sp *space) (uint64, bool) {
	for w, word := range b.used {
		if word != ^uint64(0) {
			o := uint64(w*64 + bits.TrailingZeros64(^word))
			if o < uint64(1)<<sp.bits {
				return b.idx<<sp.bits + o, true
			}
		}
	}
	return 0, false
}

// setOther marks ord taken by another host's record.
func (b *block) setOther(sp *space, ord uint64) {
	b.set(sp, ord, true)
	if b.other == nil {
		b.other = make(map[uint64]bool)
	}
	b.other[ord] = true
}

// setReserved marks ord, free in b, as reserved.
func (b *block) setReserved(sp *space, ord uint64) {
	b.set(sp, ord, true)
	if b.reserved == nil {
		b.reserved = make(map[uint64]bool)
	}
	b.reserved[ord] = true
}

func (b *block) isSet(sp *space, ord uint64) bool {
	o := ord - b.idx<<sp.bits
	return b.used[o/64]&(1<<(o%64)) != 0
}

func (b *block) set(sp *space, ord uint64, v bool) {
	o := ord - b.idx<<sp.bits
	if v {
		b.used[o/64] |= 1 << (o % 64)
	} else {
		b.used[o/64] &^= 1 << (o % 64)
	}
}
