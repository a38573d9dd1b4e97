package ipam

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/seed53641549/cnm/errdefs"
)

// DefaultPool is a range of subnets a pool request without a subnet may take,
// like an entry of Docker's default-address-pools: Base cut into consecutive
// subnets of prefix length Size. For example {10.10.0.0/16, 24} offers
// 10.10.0.0/24, 10.10.1.0/24, ... 10.10.255.0/24, in that order.
type DefaultPool struct {
	// Base is the range to cut; it must be a valid, masked prefix.
	Base netip.Prefix
	// Size is the prefix length of each subnet cut from Base. It must be at
	// least Base.Bits() and at most 32 (IPv4) or 128 (IPv6).
	Size int
}

// DefaultPools returns Docker's built-in default pools, in the order they are
// tried: 172.17.0.0/16 through 172.31.0.0/16, each taken whole (Size 16), then
// 192.168.0.0/16 cut into /20s. It holds no IPv6 entry. Each call returns a
// new slice.
func DefaultPools() []DefaultPool {
	pools := make([]DefaultPool, 0, 16)
	for b := 17; b <= 31; b++ {
		pools = append(pools, DefaultPool{
			Base: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(b), 0, 0}), 16),
			Size: 16,
		})
	}
	return append(pools, DefaultPool{Base: netip.MustParsePrefix("192.168.0.0/16"), Size: 20})
}

// validateDefaultPool checks one entry of [Config.DefaultPools]; i is its
// index, for the message.
func validateDefaultPool(i int, dp DefaultPool) error {
	if err := checkPrefix(fmt.Sprintf("default-pools[%d] base", i), dp.Base); err != nil {
		return err
	}
	if maxBits := dp.Base.Addr().BitLen(); dp.Size < dp.Base.Bits() || dp.Size > maxBits {
		return fmt.Errorf("%w: default-pools[%d] size %d is outside %d..%d for base %s",
			errdefs.ErrInvalid, i, dp.Size, dp.Base.Bits(), maxBits, dp.Base)
	}
	return nil
}

// checkPrefix reports, naming field, why p cannot be a subnet: invalid,
// host bits set, or an IPv4-mapped IPv6 prefix (whose family is ambiguous).
func checkPrefix(field string, p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("%w: %s %s is not a valid prefix", errdefs.ErrInvalid, field, p)
	case p.Addr().Is4In6():
		return fmt.Errorf("%w: %s %s is an IPv4-mapped IPv6 prefix", errdefs.ErrInvalid, field, p)
	case p != p.Masked():
		return fmt.Errorf("%w: %s %s has host bits set", errdefs.ErrInvalid, field, p)
	}
	return nil
}

// subnetSet is the set of subnets held in one address space: disjoint
// prefixes sorted by address (IPv4 before IPv6). Because they are disjoint,
// they are sorted by last address too, which lets every lookup binary-search.
type subnetSet []netip.Prefix

// search returns the index of the first subnet that does not end before a.
func (s subnetSet) search(a netip.Addr) int {
	i, _ := slices.BinarySearchFunc(s, a, func(h netip.Prefix, a netip.Addr) int {
		return lastAddr(h).Compare(a)
	})
	return i
}

// overlapping returns a subnet of s that overlaps p, if any.
func (s subnetSet) overlapping(p netip.Prefix) (netip.Prefix, bool) {
	if i := s.search(p.Addr()); i < len(s) && s[i].Addr().Compare(lastAddr(p)) <= 0 {
		return s[i], true
	}
	return netip.Prefix{}, false
}

// insert adds p, which must overlap no subnet of s.
func (s *subnetSet) insert(p netip.Prefix) {
	*s = slices.Insert(*s, s.search(p.Addr()), p)
}

// remove deletes p, which must be in s.
func (s *subnetSet) remove(p netip.Prefix) {
	if i := s.search(p.Addr()); i < len(*s) && (*s)[i] == p {
		*s = slices.Delete(*s, i, i+1)
	}
}

// firstFreeDefault returns the first subnet of the given family, in the order
// of defaults, that overlaps no subnet of s. It fails with [ErrPoolExhausted]
// when there is none, or when defaults hold no entry of the family.
func (s subnetSet) firstFreeDefault(defaults []DefaultPool, v6 bool) (netip.Prefix, error) {
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	configured := false
	for _, dp := range defaults {
		if dp.Base.Addr().Is6() != v6 {
			continue
		}
		configured = true
		if p, ok := s.firstFreeIn(dp); ok {
			return p, nil
		}
	}
	if !configured {
		return netip.Prefix{}, fmt.Errorf("%w: no %s default pool is configured", ErrPoolExhausted, fam)
	}
	return netip.Prefix{}, fmt.Errorf("%w: every %s default pool overlaps a pool in use", ErrPoolExhausted, fam)
}

// firstFreeIn returns the first subnet cut from dp that overlaps no subnet of
// s.
//
// Candidates are computed one at a time, never listed. Each step either
// returns or moves the candidate past the held subnet it overlaps (past that
// subnet when it is as large as a candidate or larger, past the candidate
// when it is smaller), so a walk takes at most one step per held subnet
// inside dp.Base, plus one, however many candidates dp.Base holds.
func (s subnetSet) firstFreeIn(dp DefaultPool) (netip.Prefix, bool) {
	cand := netip.PrefixFrom(dp.Base.Addr(), dp.Size)
	for i := s.search(cand.Addr()); ; {
		for i < len(s) && lastAddr(s[i]).Less(cand.Addr()) {
			i++
		}
		if i == len(s) || lastAddr(cand).Less(s[i].Addr()) {
			return cand, true
		}
		skip := cand // s[i] lies inside cand: move past cand
		if s[i].Bits() <= cand.Bits() {
			skip = s[i] // s[i] covers cand: move past s[i]
		}
		next, ok := afterPrefix(skip)
		if !ok || !dp.Base.Contains(next) {
			return netip.Prefix{}, false
		}
		cand = netip.PrefixFrom(next, dp.Size)
	}
}
