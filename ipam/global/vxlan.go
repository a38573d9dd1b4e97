package global

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/seed53641549/cnm/errdefs"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// VXLAN ID defaults.
const (
	// DefaultVXLANMin is the first VXLAN ID handed out (Docker's too).
	DefaultVXLANMin = 4096
	// MaxVXLANID is the largest VXLAN network identifier (24 bits).
	MaxVXLANID = 1<<24 - 1
	// DefaultVXLANBlockSize is the number of IDs in a block, as a power of
	// two: 64 IDs.
	DefaultVXLANBlockSize = 6
)

// VXLANConfig configures [NewVXLAN].
type VXLANConfig struct {
	// Store, Lease and Host are as in [Config]. Required.
	Store KV
	Lease *etcdstore.Lease
	Host  string
	// Min and Max bound the IDs handed out, inclusive; zero means
	// [DefaultVXLANMin] and [MaxVXLANID]. 1 <= Min <= Max <= MaxVXLANID.
	Min, Max uint32
	// BlockSize is log2 of the number of IDs in a block, 0..16; zero means
	// [DefaultVXLANBlockSize] (a block of one ID is not useful).
	BlockSize uint
}

// VXLANAllocator hands out VXLAN IDs unique across every host, in blocks
// this host claims under its lease (see the package documentation). Each
// ID is also recorded under a key of its own, with no lease, so it stays
// taken when the host that chose it goes away; that record decides whether
// an ID is taken. Make one with [NewVXLAN]. It
// is safe for concurrent use.
type VXLANAllocator struct {
	sp *space
}

// NewVXLAN returns this host's VXLAN ID allocator. It checks cfg (an error
// wrapping errdefs.ErrInvalid names the bad field and value) and touches no
// key.
func NewVXLAN(cfg VXLANConfig) (*VXLANAllocator, error) {
	if err := checkCommon(cfg.Store, cfg.Lease, cfg.Host); err != nil {
		return nil, err
	}
	if cfg.Min == 0 {
		cfg.Min = DefaultVXLANMin
	}
	if cfg.Max == 0 {
		cfg.Max = MaxVXLANID
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultVXLANBlockSize
	}
	switch {
	case cfg.Max > MaxVXLANID:
		return nil, fmt.Errorf("%w: max vxlan id %d is above %d", errdefs.ErrInvalid, cfg.Max, MaxVXLANID)
	case cfg.Min > cfg.Max:
		return nil, fmt.Errorf("%w: min vxlan id %d is above max %d", errdefs.ErrInvalid, cfg.Min, cfg.Max)
	case cfg.BlockSize > 16:
		return nil, fmt.Errorf("%w: block size %d is above 16 (65536 ids)", errdefs.ErrInvalid, cfg.BlockSize)
	}
	return &VXLANAllocator{sp: &space{
		kv:           cfg.Store,
		lease:        cfg.Lease,
		host:         cfg.Host,
		name:         fmt.Sprintf("vxlan ids %d-%d", cfg.Min, cfg.Max),
		prefix:       "vxlan/blocks/",
		recordPrefix: "vxlan/ids/",
		first:        uint64(cfg.Min),
		last:         uint64(cfg.Max),
		bits:         cfg.BlockSize,
		format:       func(ord uint64) string { return strconv.FormatUint(ord, 10) },
		blockName: func(idx uint64) string {
			lo := max(idx<<cfg.BlockSize, uint64(cfg.Min))
			hi := min((idx+1)<<cfg.BlockSize-1, uint64(cfg.Max))
			return fmt.Sprintf("%d-%d", lo, hi)
		},
		blocks: make(map[uint64]*block),
	}}, nil
}

// Request allocates the lowest free ID of this host's blocks, claiming a
// block when they are full (or taking one this host's previous run claimed
// under the same lease). It never hands out a recorded ID, whoever
// recorded it and when. It fails with ipam.ErrPoolExhausted naming the
// range when every block is claimed and this host's are full.
func (v *VXLANAllocator) Request(ctx context.Context) (uint32, error) {
	id, err := v.sp.alloc(ctx)
	return uint32(id), err
}

// RequestID allocates the given ID (a network defined with an explicit
// VXLAN ID), whichever host's block it lies in: its record decides. An ID
// outside the range is an error wrapping errdefs.ErrInvalid; one already
// taken wraps errdefs.ErrExists.
func (v *VXLANAllocator) RequestID(ctx context.Context, id uint32) error {
	if !v.sp.usable(uint64(id)) {
		return fmt.Errorf("%w: vxlan id %d is outside %d-%d", errdefs.ErrInvalid, id, v.sp.first, v.sp.last)
	}
	return v.sp.allocAt(ctx, uint64(id))
}

// Release frees an ID, whichever host allocated it (a network may be
// deleted on any host). An ID that is not allocated is an error wrapping
// errdefs.ErrNotFound. An ID of a block another host holds is free in etcd
// at once, and handed out again once that block is next claimed.
func (v *VXLANAllocator) Release(ctx context.Context, id uint32) error {
	return v.sp.release(ctx, uint64(id))
}

// OwnIDs returns the IDs this host allocated that are still recorded, for
// a host that restarts to release those its records no longer explain.
func (v *VXLANAllocator) OwnIDs(ctx context.Context) ([]uint32, error) {
	sp := v.sp
	kvs, _, err := sp.kv.Snapshot(ctx, sp.recordPrefix)
	if err != nil {
		return nil, fmt.Errorf("list vxlan ids: %w", err)
	}
	var out []uint32
	for _, kv := range kvs {
		id, err := strconv.ParseUint(strings.TrimPrefix(kv.Key, sp.recordPrefix), 10, 32)
		if err == nil && string(kv.Value) == sp.host {
			out = append(out, uint32(id))
		}
	}
	return out, nil
}
