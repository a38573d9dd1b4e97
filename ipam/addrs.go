package ipam

import (
	"math"
	"net/netip"
)

// Address arithmetic on netip values. All helpers expect valid, zone-free
// addresses and valid prefixes.

// lastAddr returns the last address of p (host part all ones).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	if a.Is4() {
		b := a.As4()
		setHostBits(b[:], p.Bits())
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	setHostBits(b[:], p.Bits())
	return netip.AddrFrom16(b)
}

// setHostBits sets every bit of b after the first bits bits.
func setHostBits(b []byte, bits int) {
	for i := range b {
		switch start := i * 8; {
		case start >= bits:
			b[i] = 0xff
		case start+8 > bits:
			b[i] |= 0xff >> (bits - start)
		}
	}
}

// reservedAddrs returns the addresses of subnet that are never handed out and
// never accepted as preferred addresses: see the package documentation. It
// returns no address for an IPv4 /31 or /32 and an IPv6 /127 or /128.
func reservedAddrs(subnet netip.Prefix) []netip.Addr {
	host := subnet.Addr().BitLen() - subnet.Bits()
	if host <= 1 {
		return nil
	}
	if subnet.Addr().Is4() {
		return []netip.Addr{subnet.Addr(), lastAddr(subnet)}
	}
	return []netip.Addr{subnet.Addr()}
}

// maxCount is the cap of [prefixSize]. No allocator can hold that many
// addresses in memory, so a capped count is never reached by an allocated
// count and exhaustion checks stay correct.
const maxCount = math.MaxUint64

// prefixSize returns the number of addresses in p, capped at maxCount (only
// prefixes with 64 or more host bits reach the cap).
func prefixSize(p netip.Prefix) uint64 {
	host := p.Addr().BitLen() - p.Bits()
	if host >= 64 {
		return maxCount
	}
	return 1 << host
}

// family names the address family of a, for messages.
func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
