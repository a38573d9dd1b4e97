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
type KV interface {
	Get(ctx context.Context, key string) (store.KV, error)
	Snapshot(ctx context.Context, prefix string) ([]store.KV, uint64, error)
	TxnIf(ctx context.Context, conds []etcdstore.Cond, ops ...etcdstore.Op) (uint64, error)
	Watch(ctx context.Context, prefix string, after uint64) <-chan etcdstore.WatchBatch
}

// blockRecord is the value of a claimed block's key.
type blockRecord struct {
	Host  string `json:"host"`
	Block string `json:"block"` // the block, for people
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
	// because another host recorded them; they are not counted in n.
	other map[uint64]bool
}

func (sp *space) blockKey(idx uint64) string {
	return sp.prefix + fmt.Sprintf("%016x", idx)
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
	if b == nil {
		var err error
		if b, err = sp.claimLocked(ctx, idx); err != nil {
			return fmt.Errorf("%s: %w", sp.format(ord), err)
		}
	}
	if b.isSet(sp, ord) {
		return fmt.Errorf("%w: %s: %s is already allocated", errdefs.ErrExists, sp.name, sp.format(ord))
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
				b.set(sp, ord, true) // taken, but not by us: not counted in n
				if b.other == nil {
					b.other = make(map[uint64]bool)
				}
				b.other[ord] = true
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
		_, err := sp.kv.TxnIf(ctx, []etcdstore.Cond{{Key: sp.blockKey(b.idx), Revision: b.rev}},
			etcdstore.Op{Key: sp.blockKey(b.idx), Delete: true})
		if err == nil || errors.Is(err, store.ErrConflict) {
			sp.dropLocked(b.idx)
		}
	}
	return nil
}

// returnEmpty gives back every held block with nothing allocated in it.
func (sp *space) returnEmpty(ctx context.Context) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.lease.Err() != nil {
		return nil // etcd drops them with the lease
	}
	var errs []error
	for _, idx := range slices.Clone(sp.order) {
		b := sp.blocks[idx]
		if b.n != 0 {
			continue
		}
		_, err := sp.kv.TxnIf(ctx, []etcdstore.Cond{{Key: sp.blockKey(idx), Revision: b.rev}},
			etcdstore.Op{Key: sp.blockKey(idx), Delete: true})
		if err != nil && !errors.Is(err, store.ErrConflict) {
			errs = append(errs, err)
			continue
		}
		sp.dropLocked(idx)
	}
	return errors.Join(errs...)
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
		b, err := sp.claimLocked(ctx, idx)
		if errors.Is(err, errdefs.ErrExists) {
			continue // another host claimed it first: look again
		}
		return b, err
	}
}

// claimLocked claims block idx under the lease, or fails with
// errdefs.ErrExists naming the host that holds it.
func (sp *space) claimLocked(ctx context.Context, idx uint64) (*block, error) {
	key := sp.blockKey(idx)
	val, _ := json.Marshal(blockRecord{Host: sp.host, Block: sp.blockName(idx)})
	conds := append([]etcdstore.Cond{{Key: key}}, sp.guard...)
	rev, err := sp.kv.TxnIf(ctx, conds, etcdstore.Op{Key: key, Value: val, Lease: sp.lease})
	if errors.Is(err, store.ErrConflict) {
		if kv, gerr := sp.kv.Get(ctx, key); gerr == nil {
			var rec blockRecord
			_ = json.Unmarshal(kv.Value, &rec)
			return nil, fmt.Errorf("%w: %s: block %s is held by host %q", errdefs.ErrExists, sp.name, sp.blockName(idx), rec.Host)
		}
		for _, g := range sp.guard {
			if kv, gerr := sp.kv.Get(ctx, g.Key); errors.Is(gerr, store.ErrNotFound) || (gerr == nil && kv.Revision != g.Revision) {
				return nil, fmt.Errorf("%w: %s: released", errdefs.ErrNotFound, sp.name)
			}
		}
		// The block was claimed and returned meanwhile: the caller may retry.
		return nil, fmt.Errorf("%w: %s: block %s: %w", errdefs.ErrExists, sp.name, sp.blockName(idx), err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: claim block %s: %w", sp.name, sp.blockName(idx), err)
	}
	size := uint64(1) << sp.bits
	b := &block{idx: idx, rev: rev, used: make([]uint64, (size+63)/64)}
	start := idx << sp.bits
	for o := range size {
		if !sp.usable(start + o) {
			b.used[o/64] |= 1 << (o % 64)
		}
	}
	if sp.recordPrefix != "" { // entries recorded before we held the block
		kvs, _, err := sp.kv.Snapshot(ctx, sp.recordPrefix)
		if err != nil {
			_, _ = sp.kv.TxnIf(ctx, []etcdstore.Cond{{Key: key, Revision: rev}}, etcdstore.Op{Key: key, Delete: true})
			return nil, fmt.Errorf("%s: list records: %w", sp.name, err)
		}
		for _, kv := range kvs {
			ord, err := strconv.ParseUint(strings.TrimPrefix(kv.Key, sp.recordPrefix), 10, 64)
			if err == nil && ord>>sp.bits == idx {
				b.used[(ord-start)/64] |= 1 << ((ord - start) % 64)
			}
		}
	}
	sp.blocks[idx] = b
	i, _ := slices.BinarySearch(sp.order, idx)
	sp.order = slices.Insert(sp.order, i, idx)
	return b, nil
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
