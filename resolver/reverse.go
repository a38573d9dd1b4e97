package resolver

import (
	"net/netip"
	"strconv"
	"strings"
)

// reverseAddr returns the address a reverse-lookup name stands for:
// d.c.b.a.in-addr.arpa for a.b.c.d, and 32 nibbles, least significant
// first, followed by ip6.arpa for an IPv6 address (RFC 1035 3.5, RFC 3596
// 2.5). name is canonical (lower case, no trailing dot). ok false for any
// other name, including the shorter names of reverse zones.
func reverseAddr(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa"); ok {
		var b [4]byte
		for i := 3; i >= 0; i-- {
			label := rest
			if i > 0 {
				var found bool
				label, rest, found = strings.Cut(rest, ".")
				if !found {
					return netip.Addr{}, false
				}
			}
			if len(label) == 0 || len(label) > 3 || (len(label) > 1 && label[0] == '0') {
				return netip.Addr{}, false
			}
			v, err := strconv.ParseUint(label, 10, 8)
			if err != nil {
				return netip.Addr{}, false
			}
			b[i] = byte(v)
		}
		return netip.AddrFrom4(b), true
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa"); ok {
		// 32 one-digit labels with 31 dots between them.
		if len(rest) != 63 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i := 0; i < 32; i++ {
			c := rest[2*i]
			if i < 31 && rest[2*i+1] != '.' {
				return netip.Addr{}, false
			}
			var v byte
			switch {
			case '0' <= c && c <= '9':
				v = c - '0'
			case 'a' <= c && c <= 'f':
				v = c - 'a' + 10
			default:
				return netip.Addr{}, false
			}
			// Nibble i counts from the least significant end.
			pos := 31 - i
			if pos%2 == 0 {
				b[pos/2] |= v << 4
			} else {
				b[pos/2] |= v
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}
