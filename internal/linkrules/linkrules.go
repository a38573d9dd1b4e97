// Package linkrules holds the rules a link's name, MAC address and MTU must
// follow, in one place for every layer that takes them from a user: the
// root package's options, the bridge driver and the macvlan and ipvlan
// drivers. Check them before any kernel object is made.
//
// Each check returns nil or an error that says only why the value breaks
// the rule ("longer than 15 bytes"), so that the caller puts the field and
// the value in front:
//
//	if err := linkrules.CheckIfName(v); err != nil {
//		return fmt.Errorf("%w: option %s=%q: %v", errdefs.ErrInvalid, key, v, err)
//	}
//
// The error also matches errdefs.ErrInvalid under errors.Is, so that one
// returned as it is still reads as bad input.
package linkrules

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"

	"github.com/seed53641549/cnm/errdefs"
)

// MaxIfNameLen is the longest interface name the kernel accepts, in bytes:
// IFNAMSIZ - 1 (the last byte is the terminating NUL).
const MaxIfNameLen = 15

// MTU bounds.
const (
	// MinMTU is IPv4's minimum MTU (RFC 791).
	MinMTU = 68
	// MinMTUIPv6 is IPv6's minimum MTU (RFC 8200). The kernel turns IPv6 off
	// on a link whose MTU is below it, so a network with IPv6 would fail
	// only later, at the first address it is given.
	MinMTUIPv6 = 1280
	// MaxMTU is the largest MTU of a veth, a bridge, a macvlan or an ipvlan
	// link (IFLA_MTU is 32 bits, but these kinds stop at 65535).
	MaxMTU = 65535
)

// reason is a broken rule: its message is the reason alone, and it matches
// errdefs.ErrInvalid.
type reason string

func (r reason) Error() string        { return string(r) }
func (r reason) Is(target error) bool { return target == errdefs.ErrInvalid }

// CheckIfName checks an interface name: 1 to [MaxIfNameLen] bytes of
// printable ASCII other than '/', ':' and '%', and not "." or "..".
//
// The kernel (dev_valid_name) refuses an empty or too long name, "." and
// "..", and '/', ':' and white space. This rule is stricter in two ways.
// It refuses '%': the kernel reads a name with '%' as a pattern
// (dev_alloc_name: "br%d" becomes br0, br1, ...), so the link would get a
// name nobody asked for, which cnm could not find again and would leak;
// no existing link can be named with a '%' either. And it refuses control
// characters and bytes outside ASCII, which the kernel takes but which
// break the nftables rules and the logs that carry the name.
func CheckIfName(name string) error {
	switch {
	case name == "":
		return reason("empty interface name")
	case len(name) > MaxIfNameLen:
		return reason(fmt.Sprintf("longer than %d bytes", MaxIfNameLen))
	case name == "." || name == "..":
		return reason("not a valid interface name")
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '/' || c == ':' || c == '%':
			return reason(fmt.Sprintf("contains %q", c))
		case c <= ' ' || c >= 0x7f:
			return reason(fmt.Sprintf("contains byte %#02x: only printable ASCII other than space is allowed", c))
		}
	}
	return nil
}

// CheckMAC checks an interface's MAC address: 6 bytes (Ethernet), unicast
// (the group bit, bit 0 of the first byte, clear) and not all zero. The
// kernel refuses the others on an Ethernet link (is_valid_ether_addr), but
// only when the link is made, long after the address was given.
func CheckMAC(mac net.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return reason(fmt.Sprintf("%d bytes long: an Ethernet address has 6", len(mac)))
	case mac[0]&1 == 1:
		return reason("a multicast address: an interface needs a unicast one")
	case [6]byte(mac) == [6]byte{}:
		return reason("all zero: an interface needs a unicast address")
	}
	return nil
}

// CheckMTU checks an MTU: [MinMTU] to [MaxMTU], and at least [MinMTUIPv6]
// when the network has IPv6. Zero is not an MTU: callers whose zero means
// "the default" check only an MTU that was given.
func CheckMTU(mtu int, ipv6 bool) error {
	switch {
	case mtu < MinMTU || mtu > MaxMTU:
		return reason(fmt.Sprintf("out of range %d-%d", MinMTU, MaxMTU))
	case ipv6 && mtu < MinMTUIPv6:
		return reason(fmt.Sprintf("below %d, the minimum for a network with IPv6", MinMTUIPv6))
	}
	return nil
}

// VethName returns a fresh name for the host or bridge end of a veth pair:
// "veth" and 7 random hexadecimal digits, a valid interface name.
func VethName() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "veth" + hex.EncodeToString(b[:])[:7]
}
