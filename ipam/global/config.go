package global

import (
	"fmt"

	"github.com/seed53641549/cnm/errdefs"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// Default block sizes, as prefix lengths (Calico's defaults).
const (
	DefaultBlockSizeV4 = 26 // 64 addresses
	DefaultBlockSizeV6 = 122
)

// Config configures [New].
type Config struct {
	// Store is the global store shared by every host. Required.
	Store KV
	// Lease is this host's lease: block claims are written under it and end
	// with it. Required; it must be alive. A lease adopted from this host's
	// previous run ([etcdstore.Store.AdoptLease]) makes the allocator take
	// that run's blocks, recorded with the same Host, as its own.
	Lease *etcdstore.Lease
	// Host names this host in block records and errors. Required.
	Host string
	// BlockSizeV4 is the prefix length of an IPv4 block, 16..32; zero means
	// [DefaultBlockSizeV4]. A pool smaller than a block is one block.
	BlockSizeV4 int
	// BlockSizeV6 is the prefix length of an IPv6 block, 112..128; zero
	// means [DefaultBlockSizeV6].
	BlockSizeV6 int
	// MinBlocks, when above 1, makes the pools this host requests cut
	// into at least that many blocks (smaller blocks than the block size
	// for small subnets), so that a pool serves at least that many hosts:
	// with 16, a /24 is cut into /28s. Zero: the block size alone.
	MinBlocks int
}

// check validates the fields every allocator of this package needs.
func checkCommon(kv KV, lease *etcdstore.Lease, host string) error {
	switch {
	case kv == nil:
		return fmt.Errorf("%w: store is nil", errdefs.ErrInvalid)
	case lease == nil:
		return fmt.Errorf("%w: lease is nil", errdefs.ErrInvalid)
	case host == "":
		return fmt.Errorf("%w: host is empty", errdefs.ErrInvalid)
	}
	if err := lease.Err(); err != nil {
		return fmt.Errorf("%w: lease: %w", errdefs.ErrInvalid, err)
	}
	return nil
}

func (cfg Config) validate() (Config, error) {
	if err := checkCommon(cfg.Store, cfg.Lease, cfg.Host); err != nil {
		return cfg, err
	}
	if cfg.BlockSizeV4 == 0 {
		cfg.BlockSizeV4 = DefaultBlockSizeV4
	}
	if cfg.BlockSizeV6 == 0 {
		cfg.BlockSizeV6 = DefaultBlockSizeV6
	}
	if cfg.BlockSizeV4 < 16 || cfg.BlockSizeV4 > 32 {
		return cfg, fmt.Errorf("%w: block size v4 /%d is outside /16../32", errdefs.ErrInvalid, cfg.BlockSizeV4)
	}
	if cfg.MinBlocks < 0 || cfg.MinBlocks > 1<<16 {
		return cfg, fmt.Errorf("%w: min blocks %d is outside 0..65536", errdefs.ErrInvalid, cfg.MinBlocks)
	}
	if cfg.BlockSizeV6 < 112 || cfg.BlockSizeV6 > 128 {
		return cfg, fmt.Errorf("%w: block size v6 /%d is outside /112../128", errdefs.ErrInvalid, cfg.BlockSizeV6)
	}
	return cfg, nil
}
