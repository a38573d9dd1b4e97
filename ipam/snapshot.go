package ipam

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/seed53641549/cnm/errdefs"
)

// snapshotMagic starts every snapshot; its last byte is the format version.
const snapshotMagic = "cnm-ipam\x01"

// Snapshot returns the allocator's whole state: the pool counter, every pool
// with its next-fit cursor, and every run of allocated addresses. Its size
// is proportional to the number of pools and runs, not to the pools' sizes.
// [LocalAllocator.Restore] of the result, here or in another allocator,
// gives back exactly this state, so that nothing allocated now can be handed
// out after it and pool IDs are not reused. The configuration (default
// pools, store) is not part of it.
func (a *LocalAllocator) Snapshot() ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b := []byte(snapshotMagic)
	b = binary.AppendUvarint(b, a.seq)
	b = binary.AppendUvarint(b, uint64(len(a.pools)))
	for _, id := range slices.Sorted(maps.Keys(a.pools)) {
		p := a.pools[id]
		rec := p.record()
		b = appendString(b, rec.ID)
		b = appendPrefix(b, rec.Subnet)
		b = appendPrefix(b, rec.IPRange)
		b = appendAddr(b, rec.Cursor)
		b = binary.AppendUvarint(b, uint64(p.runs.n))
		p.runs.ascend(func(r run) bool {
			b = appendAddr(b, toAddr(r.lo, p.v6))
			b = appendAddr(b, toAddr(r.hi, p.v6))
			return true
		})
	}
	return b, nil
}

// Restore replaces the allocator's whole state with a snapshot made by
// [LocalAllocator.Snapshot]. It checks the snapshot first: a malformed one,
// or one whose pools overlap, whose ranges lie outside their subnet, hold a
// reserved address, overlap or touch, is an error wrapping
// errdefs.ErrInvalid, and the allocator keeps its state. An allocator with a
// [Store] refuses it (errdefs.ErrNotSupported): its state comes from the
// store, through [Open].
func (a *LocalAllocator) Restore(snapshot []byte) error {
	if a.store != nil {
		return fmt.Errorf("%w: restore into an allocator with a store: its state comes from the store", errdefs.ErrNotSupported)
	}
	st, err := decodeSnapshot(snapshot)
	if err != nil {
		return fmt.Errorf("%w: restore ipam snapshot: %v", errdefs.ErrInvalid, err)
	}
	if err := a.restoreState(st); err != nil {
		return fmt.Errorf("restore ipam snapshot: %w", err)
	}
	return nil
}

// restoreState checks st and, when it is consistent, makes it the
// allocator's state.
func (a *LocalAllocator) restoreState(st StoreState) error {
	pools := make(map[string]*pool, len(st.Pools))
	var subnets, held [2]runSet
	for i, rec := range st.Pools {
		if rec.ID == "" {
			return fmt.Errorf("%w: pool %d has no ID", errdefs.ErrInvalid, i)
		}
		if _, ok := pools[rec.ID]; ok {
			return fmt.Errorf("%w: pool %q appears twice", errdefs.ErrInvalid, rec.ID)
		}
		if err := checkPrefix("subnet", rec.Subnet); err != nil {
			return fmt.Errorf("pool %q: %w", rec.ID, err)
		}
		if err := checkIPRange(rec.Subnet, rec.IPRange); err != nil {
			return fmt.Errorf("pool %q: %w", rec.ID, err)
		}
		if other, ok := overlapping(&subnets, rec.Subnet); ok {
			return fmt.Errorf("%w: pool %q: subnet %s overlaps pool %s", errdefs.ErrInvalid, rec.ID, rec.Subnet, other)
		}
		p := newPool(rec.ID, rec.Subnet, rec.IPRange)
		if c := rec.Cursor; c.IsValid() {
			if !p.subnet.Contains(c) || !p.inDynamicRange(fromAddr(c)) {
				return fmt.Errorf("%w: pool %q: cursor %s is outside its range", errdefs.ErrInvalid, rec.ID, c)
			}
			p.cursor, p.hasCursor = fromAddr(c), true
		}
		pools[rec.ID] = p
		subnets[famIndex(p.v6)].insert(run{p.sfirst, p.slast})
		held[famIndex(p.v6)].add(p.sfirst, p.slast, nil)
	}

	ranges := slices.Clone(st.Ranges)
	slices.SortFunc(ranges, func(x, y RangeRecord) int {
		return cmp.Or(cmp.Compare(x.Pool, y.Pool), x.First.Compare(y.First))
	})
	for i, r := range ranges {
		p, ok := pools[r.Pool]
		if !ok {
			return fmt.Errorf("%w: range %s-%s of unknown pool %q", errdefs.ErrInvalid, r.First, r.Last, r.Pool)
		}
		if !p.subnet.Contains(r.First) || !p.subnet.Contains(r.Last) || r.Last.Less(r.First) {
			return fmt.Errorf("%w: pool %q: range %s-%s is not a range of subnet %s", errdefs.ErrInvalid, r.Pool, r.First, r.Last, p.subnet)
		}
		lo, hi := fromAddr(r.First), fromAddr(r.Last)
		for _, res := range p.reserved[:p.nreserved] {
			if !res.less(lo) && !hi.less(res) {
				return fmt.Errorf("%w: pool %q: range %s-%s holds reserved address %s", errdefs.ErrInvalid, r.Pool, r.First, r.Last, toAddr(res, p.v6))
			}
		}
		if i > 0 && ranges[i-1].Pool == r.Pool && !fromAddr(ranges[i-1].Last).add1().less(lo) {
			return fmt.Errorf("%w: pool %q: ranges %s-%s and %s-%s overlap or touch",
				errdefs.ErrInvalid, r.Pool, ranges[i-1].First, ranges[i-1].Last, r.First, r.Last)
		}
		p.runs.add(lo, hi, nil)
	}
	for _, p := range pools {
		p.inRange = p.runs.count(p.first, p.last)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	a.pools, a.subnets, a.held, a.seq, a.last = pools, subnets, held, st.Seq, nil
	return nil
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// appendAddr appends a's length (0, 4 or 16) and bytes; the zone is dropped.
func appendAddr(b []byte, a netip.Addr) []byte {
	a = a.WithZone("")
	n := a.BitLen() / 8
	b = append(b, byte(n))
	return append(b, a.AsSlice()...)
}

// appendPrefix appends p's address, then, when valid, its length.
func appendPrefix(b []byte, p netip.Prefix) []byte {
	if !p.IsValid() {
		return appendAddr(b, netip.Addr{})
	}
	return append(appendAddr(b, p.Addr()), byte(p.Bits()))
}

var errTruncated = errors.New("snapshot is truncated")

type decoder struct{ b []byte }

func (d *decoder) uvarint() (uint64, error) {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		return 0, errTruncated
	}
	d.b = d.b[n:]
	return v, nil
}

func (d *decoder) bytes(n uint64) ([]byte, error) {
	if n > uint64(len(d.b)) {
		return nil, errTruncated
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v, nil
}

func (d *decoder) addr() (netip.Addr, error) {
	n, err := d.bytes(1)
	if err != nil {
		return netip.Addr{}, err
	}
	switch n[0] {
	case 0:
		return netip.Addr{}, nil
	case 4, 16:
	default:
		return netip.Addr{}, fmt.Errorf("address length %d", n[0])
	}
	raw, err := d.bytes(uint64(n[0]))
	if err != nil {
		return netip.Addr{}, err
	}
	a, _ := netip.AddrFromSlice(raw)
	return a, nil
}

func (d *decoder) prefix() (netip.Prefix, error) {
	a, err := d.addr()
	if err != nil || !a.IsValid() {
		return netip.Prefix{}, err
	}
	bits, err := d.bytes(1)
	if err != nil {
		return netip.Prefix{}, err
	}
	if int(bits[0]) > a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("prefix length %d for %s", bits[0], a)
	}
	return netip.PrefixFrom(a, int(bits[0])), nil
}

// decodeSnapshot parses a snapshot into records; restoreState checks them.
func decodeSnapshot(b []byte) (StoreState, error) {
	if len(b) < len(snapshotMagic) || string(b[:len(snapshotMagic)-1]) != snapshotMagic[:len(snapshotMagic)-1] {
		return StoreState{}, errors.New("not an ipam snapshot")
	}
	if v := b[len(snapshotMagic)-1]; v != snapshotMagic[len(snapshotMagic)-1] {
		return StoreState{}, fmt.Errorf("snapshot format version %d is not supported", v)
	}
	d := &decoder{b: b[len(snapshotMagic):]}
	var st StoreState
	var err error
	if st.Seq, err = d.uvarint(); err != nil {
		return StoreState{}, err
	}
	npools, err := d.uvarint()
	if err != nil {
		return StoreState{}, err
	}
	if npools > uint64(len(d.b)) { // every pool takes several bytes
		return StoreState{}, errTruncated
	}
	for range npools {
		var rec PoolRecord
		n, err := d.uvarint()
		if err != nil {
			return StoreState{}, err
		}
		id, err := d.bytes(n)
		if err != nil {
			return StoreState{}, err
		}
		rec.ID = string(id)
		if rec.Subnet, err = d.prefix(); err != nil {
			return StoreState{}, err
		}
		if rec.IPRange, err = d.prefix(); err != nil {
			return StoreState{}, err
		}
		if rec.Cursor, err = d.addr(); err != nil {
			return StoreState{}, err
		}
		nruns, err := d.uvarint()
		if err != nil {
			return StoreState{}, err
		}
		if nruns > uint64(len(d.b))/2 { // every run takes two bytes at least
			return StoreState{}, errTruncated
		}
		for range nruns {
			r := RangeRecord{Pool: rec.ID}
			if r.First, err = d.addr(); err != nil {
				return StoreState{}, err
			}
			if r.Last, err = d.addr(); err != nil {
				return StoreState{}, err
			}
			st.Ranges = append(st.Ranges, r)
		}
		st.Pools = append(st.Pools, rec)
	}
	if len(d.b) != 0 {
		return StoreState{}, fmt.Errorf("%d bytes after the end of the snapshot", len(d.b))
	}
	return st, nil
}
