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

// firstFreeDefault returns the first subnet of req's family and size, in
// the order of the default pools, that overlaps no held pool and no prefix of
// req.Avoid. It fails with [ErrPoolExhausted] when there is none, when the
// default pools hold no entry of the family, or none large enough for
// req.Size.
//
// Each base is searched by jumps: a candidate that overlaps a held range or
// a range to avoid is followed by the first aligned candidate past the end of
// that range. Held subnets are kept merged (adjacent pools form one range),
// so skipping a thousand consecutive pools is one O(log n) lookup, not a
// thousand steps; a walk takes one lookup per separate blocked range it
// passes inside the base, never one per candidate.
func (a *LocalAllocator) firstFreeDefault(req PoolRequest) (netip.Prefix, error) {
	v6 := req.V6
	fam := familyName(v6)
	held := &a.held[famIndex(v6)]
	avoid := avoidRuns(req.Avoid, v6)
	configured, fits := false, false
	for _, dp := range a.defaults {
		if dp.Base.Addr().Is6() != v6 {
			continue
		}
		configured = true
		size := dp.Size
		if req.Size != 0 {
			if req.Size < dp.Base.Bits() {
				continue
			}
			size = req.Size
		}
		fits = true
		if p, ok := firstFreeIn(dp.Base, size, held, avoid); ok {
			return p, nil
		}
	}
	switch {
	case !configured:
		return netip.Prefix{}, fmt.Errorf("%w: no %s default pool is configured", ErrPoolExhausted, fam)
	case !fits:
		return netip.Prefix{}, fmt.Errorf("%w: no %s default pool can hold a /%d", ErrPoolExhausted, fam, req.Size)
	case req.Size != 0:
		return netip.Prefix{}, fmt.Errorf("%w: every /%d of the %s default pools overlaps a pool in use or a prefix to avoid",
			ErrPoolExhausted, req.Size, fam)
	}
	return netip.Prefix{}, fmt.Errorf("%w: every %s default pool overlaps a pool in use or a prefix to avoid", ErrPoolExhausted, fam)
}

// firstFreeIn returns the first subnet of length size cut from base that
// overlaps no range of held and of avoid (sorted, merged runs).
func firstFreeIn(base netip.Prefix, size int, held *runSet, avoid []run) (netip.Prefix, bool) {
	v6 := base.Addr().Is6()
	host := base.Addr().BitLen() - size
	_, baseLast := prefixBounds(base)
	x, _ := prefixBounds(base)
	for {
		end := x.orMask(host)
		blocked, upTo := false, u128{}
		if r := held.floor(end); r != nil && !r.hi.less(x) {
			blocked, upTo = true, r.hi
		}
		if r := floorRun(avoid, end); r != nil && !r.hi.less(x) && (!blocked || upTo.less(r.hi)) {
			blocked, upTo = true, r.hi
		}
		if !blocked {
			return netip.PrefixFrom(toAddr(x, v6), size), true
		}
		// The first aligned candidate after upTo.
		last := upTo.orMask(host)
		if !last.less(baseLast) {
			return netip.Prefix{}, false
		}
		x = last.add1()
	}
}

// avoidRuns returns the prefixes of the family as sorted, merged runs.
func avoidRuns(avoid []netip.Prefix, v6 bool) []run {
	var out []run
	for _, p := range avoid {
		if p.Addr().Is6() != v6 || p.Addr().Is4In6() {
			continue
		}
		lo, hi := prefixBounds(p)
		out = append(out, run{lo, hi})
	}
	if len(out) < 2 {
		return out
	}
	slices.SortFunc(out, func(x, y run) int { return x.lo.cmp(y.lo) })
	merged := out[:1]
	for _, r := range out[1:] {
		m := &merged[len(merged)-1]
		if m.hi == u128Max || r.lo.less(m.hi.add1()) || r.lo == m.hi.add1() {
			if m.hi.less(r.hi) {
				m.hi = r.hi
			}
			continue
		}
		merged = append(merged, r)
	}
	return merged
}

// floorRun returns the run of sorted runs with the greatest lo not above k,
// or nil.
func floorRun(runs []run, k u128) *run {
	i, _ := slices.BinarySearchFunc(runs, k, func(r run, k u128) int {
		if k.less(r.lo) {
			return 1
		}
		return -1
	})
	if i == 0 {
		return nil
	}
	return &runs[i-1]
}

// familyName names an address family, for messages.
func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}
