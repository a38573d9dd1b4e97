package ipam

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/seed53641549/cnm/errdefs"
)

// Store is where an allocator's state goes when it must outlive the process
// or be shared: a local database, or (for [GlobalSpace], in a later version)
// etcd. The state is kept as small records, and every operation writes only
// the records it changed: a pool request one pool record, an address request
// at most one pool record (its next-fit cursor) and three range records. No
// operation rereads or rewrites the whole state; only [Open] reads it, once.
//
// The records, keyed as a store would key them:
//
//   - the allocator's pool counter (one value, [Commit.Seq]), so that pool
//     IDs are never reused across restarts;
//   - one [PoolRecord] per live pool, keyed by its ID;
//   - one [RangeRecord] per run of consecutive allocated addresses, keyed by
//     its pool's ID and its first address. Runs never overlap or touch.
//
// Implementations must be safe for concurrent use. The allocator calls Commit
// with its own lock held, so commits of one allocator never race.
type Store interface {
	// Load returns every record. [Open] calls it once.
	Load(ctx context.Context) (StoreState, error)

	// Commit applies the changes of one operation atomically: all of them
	// or, on error, none. When Commit fails the allocator changes nothing
	// either and returns the error.
	Commit(ctx context.Context, c Commit) error
}

// PoolRecord is a live pool as stored.
type PoolRecord struct {
	ID      string
	Subnet  netip.Prefix
	IPRange netip.Prefix // zero: the whole subnet
	// Cursor is the address handed out last by a dynamic request, where the
	// next-fit search resumes; the zero value before the first one.
	Cursor netip.Addr
}

// RangeRecord is a run of consecutive allocated addresses, First through Last,
// in the pool with ID Pool. Its key is Pool and First.
type RangeRecord struct {
	Pool        string
	First, Last netip.Addr
}

// Commit is the set of record changes of one operation, applied in this
// order: Seq, DeletePool, PutPool, DeleteRanges, PutRanges.
type Commit struct {
	// Seq, when not zero, is the new value of the pool counter.
	Seq uint64
	// DeletePool, when not empty, is the ID of a pool to delete with all its
	// range records.
	DeletePool string
	// PutPool, when not nil, is a pool record to write (create or replace).
	PutPool *PoolRecord
	// DeleteRanges are range records to delete, by key (Pool and First;
	// Last is ignored).
	DeleteRanges []RangeRecord
	// PutRanges are range records to write (create or replace by key).
	PutRanges []RangeRecord
}

// StoreState is the whole state of a store, as [Store.Load] returns it.
type StoreState struct {
	Seq    uint64
	Pools  []PoolRecord
	Ranges []RangeRecord
}

// MemStore is a [Store] that keeps the records in memory, keyed as a real
// store would key them. It serves tests, and shows what a store has to do.
// The zero value is an empty store, ready to use; it is safe for concurrent
// use.
type MemStore struct {
	mu      sync.Mutex
	seq     uint64
	pools   map[string]PoolRecord
	ranges  map[string]map[netip.Addr]netip.Addr // pool ID -> first -> last
	commits int
	writes  int
}

var _ Store = (*MemStore)(nil)

// Load returns a copy of every record, pools and ranges sorted.
func (s *MemStore) Load(ctx context.Context) (StoreState, error) {
	if err := ctx.Err(); err != nil {
		return StoreState{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := StoreState{Seq: s.seq}
	for _, id := range slices.Sorted(maps.Keys(s.pools)) {
		st.Pools = append(st.Pools, s.pools[id])
		rs := s.ranges[id]
		for _, first := range slices.SortedFunc(maps.Keys(rs), netip.Addr.Compare) {
			st.Ranges = append(st.Ranges, RangeRecord{Pool: id, First: first, Last: rs[first]})
		}
	}
	return st, nil
}

// Commit applies c. A range record of an unknown pool, or a deletion of a
// record that does not exist, is an error wrapping errdefs.ErrNotFound, and
// nothing is applied.
func (s *MemStore) Commit(ctx context.Context, c Commit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.DeletePool != "" {
		if _, ok := s.pools[c.DeletePool]; !ok {
			return fmt.Errorf("%w: pool record %q", errdefs.ErrNotFound, c.DeletePool)
		}
	}
	known := func(id string) bool {
		if c.PutPool != nil && c.PutPool.ID == id {
			return true
		}
		_, ok := s.pools[id]
		return ok && id != c.DeletePool
	}
	for _, r := range c.DeleteRanges {
		if _, ok := s.ranges[r.Pool][r.First]; !ok || !known(r.Pool) {
			return fmt.Errorf("%w: range record %s/%s", errdefs.ErrNotFound, r.Pool, r.First)
		}
	}
	for _, r := range c.PutRanges {
		if !known(r.Pool) {
			return fmt.Errorf("%w: pool record %q of range %s-%s", errdefs.ErrNotFound, r.Pool, r.First, r.Last)
		}
	}

	s.commits++
	if s.pools == nil {
		s.pools = map[string]PoolRecord{}
		s.ranges = map[string]map[netip.Addr]netip.Addr{}
	}
	if c.Seq != 0 {
		s.seq = c.Seq
		s.writes++
	}
	if c.DeletePool != "" {
		delete(s.pools, c.DeletePool)
		delete(s.ranges, c.DeletePool)
		s.writes++
	}
	if c.PutPool != nil {
		s.pools[c.PutPool.ID] = *c.PutPool
		s.writes++
	}
	for _, r := range c.DeleteRanges {
		delete(s.ranges[r.Pool], r.First)
		s.writes++
	}
	for _, r := range c.PutRanges {
		if s.ranges[r.Pool] == nil {
			s.ranges[r.Pool] = map[netip.Addr]netip.Addr{}
		}
		s.ranges[r.Pool][r.First] = r.Last
		s.writes++
	}
	return nil
}

// Stats returns the number of commits applied and of records they wrote or
// deleted, so tests can check that each operation stays small.
func (s *MemStore) Stats() (commits, writes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commits, s.writes
}
