package ipam

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// u128 is an address as a 128-bit unsigned integer: an IPv4 address in the
// low 32 bits, an IPv6 address in all 128. Every structure that holds u128
// values holds one family only, so the two never meet.
type u128 struct{ hi, lo uint64 }

// u128Max is the largest u128, the last IPv6 address.
var u128Max = u128{^uint64(0), ^uint64(0)}

func (x u128) cmp(y u128) int {
	switch {
	case x.hi < y.hi:
		return -1
	case x.hi > y.hi:
		return 1
	case x.lo < y.lo:
		return -1
	case x.lo > y.lo:
		return 1
	}
	return 0
}

func (x u128) less(y u128) bool { return x.hi < y.hi || x.hi == y.hi && x.lo < y.lo }

// add1 returns x+1, wrapping at the top.
func (x u128) add1() u128 {
	lo, c := bits.Add64(x.lo, 1, 0)
	return u128{x.hi + c, lo}
}

// sub1 returns x-1, wrapping at zero.
func (x u128) sub1() u128 {
	lo, b := bits.Sub64(x.lo, 1, 0)
	return u128{x.hi - b, lo}
}

// add returns x+y and whether the sum overflowed.
func (x u128) add(y u128) (u128, bool) {
	lo, c := bits.Add64(x.lo, y.lo, 0)
	hi, c := bits.Add64(x.hi, y.hi, c)
	return u128{hi, lo}, c != 0
}

// sub returns x-y, wrapping.
func (x u128) sub(y u128) u128 {
	lo, b := bits.Sub64(x.lo, y.lo, 0)
	hi, _ := bits.Sub64(x.hi, y.hi, b)
	return u128{hi, lo}
}

func (x u128) and(y u128) u128    { return u128{x.hi & y.hi, x.lo & y.lo} }
func (x u128) andNot(y u128) u128 { return u128{x.hi &^ y.hi, x.lo &^ y.lo} }

// sat64 returns x as a uint64, capped at math.MaxUint64.
func (x u128) sat64() uint64 {
	if x.hi != 0 {
		return ^uint64(0)
	}
	return x.lo
}

// lowMask returns the u128 with the n lowest bits set (0 <= n <= 128).
func lowMask(n int) u128 {
	switch {
	case n <= 0:
		return u128{}
	case n < 64:
		return u128{0, 1<<n - 1}
	case n < 128:
		return u128{1<<(n-64) - 1, ^uint64(0)}
	}
	return u128Max
}

// fromAddr returns a as a u128; it expects a valid IPv4 or IPv6 address (the
// zone is dropped).
func fromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// toAddr returns x as an address of the given family.
func toAddr(x u128, v6 bool) netip.Addr {
	if !v6 {
		return netip.AddrFrom4([4]byte{byte(x.lo >> 24), byte(x.lo >> 16), byte(x.lo >> 8), byte(x.lo)})
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], x.hi)
	binary.BigEndian.PutUint64(b[8:], x.lo)
	return netip.AddrFrom16(b)
}

// prefixBounds returns the first and last address of the masked prefix p.
func prefixBounds(p netip.Prefix) (first, last u128) {
	first = fromAddr(p.Masked().Addr())
	host := p.Addr().BitLen() - p.Bits()
	return first, first.orMask(host)
}

// runPrefix returns the prefix whose bounds r is.
func runPrefix(r run, v6 bool) netip.Prefix {
	host := bits.OnesCount64(r.hi.hi^r.lo.hi) + bits.OnesCount64(r.hi.lo^r.lo.lo)
	bitLen := 32
	if v6 {
		bitLen = 128
	}
	return netip.PrefixFrom(toAddr(r.lo, v6), bitLen-host)
}

func (x u128) orMask(n int) u128 {
	m := lowMask(n)
	return u128{x.hi | m.hi, x.lo | m.lo}
}
