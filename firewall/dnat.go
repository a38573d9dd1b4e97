//go:build linux

package firewall

import (
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// This file holds the fixed part of port publishing: the four DNAT maps,
// the rules of the prerouting and output chains that look packets up in
// them, and the rule of the published stage of forward. Only the maps'
// elements change when ports come and go (ports.go); the rules never do,
// so a packet costs one hash lookup per map whatever the number of ports.

// Chain and map names. Like the chain names in firewall.go, they are part of
// the persistent state.
const (
	chainPrerouting = "prerouting"
	chainOutput     = "output"

	mapPorts4    = "ports4"     // meta l4proto . ip daddr . th dport : ip daddr . th dport
	mapPorts6    = "ports6"     // meta l4proto . ip6 daddr . th dport : ip6 daddr . th dport
	mapPorts4Any = "ports4-any" // meta l4proto . th dport : ip daddr . th dport
	mapPorts6Any = "ports6-any" // meta l4proto . th dport : ip6 daddr . th dport
)

// portMap is one of the four DNAT maps: ports of one address family, on a
// specific host address or on every local address (any).
type portMap struct {
	set *nftables.Set
	v6  bool
	any bool
}

// Map key and data types, as nft declares them:
//
//	map ports4     { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }
//	map ports4-any { type inet_proto . inet_service : ipv4_addr . inet_service; }
//
// and the IPv6 twins. Each field of a concatenation takes whole 32-bit
// registers, so a key of ports4 is 12 bytes: protocol (1 byte, 3 zero),
// address (4), port (2, 2 zero).
var (
	keyPorts4  = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeIPAddr, nftables.TypeInetService)
	keyPorts6  = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeIP6Addr, nftables.TypeInetService)
	keyAny     = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	dataPorts4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	dataPorts6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
)

// numPortMaps is how many maps newPortMaps describes.
const numPortMaps = 4

// newPortMaps describes the four maps of table t. Each gets a fixed set ID:
// a rule added in the same batch as its map finds the map by that ID (a
// new map has no name yet for the kernel), and a fixed one keeps
// google/nftables from drawing one from its package-wide counter, which
// concurrent connections would race on.
func newPortMaps(t *nftables.Table) []portMap {
	m := func(id uint32, name string, key, data nftables.SetDatatype, v6, any bool) portMap {
		return portMap{
			set: &nftables.Set{Table: t, ID: id, Name: name, IsMap: true, KeyType: key, DataType: data},
			v6:  v6, any: any,
		}
	}
	return []portMap{
		m(1, mapPorts4, keyPorts4, dataPorts4, false, false),
		m(2, mapPorts6, keyPorts6, dataPorts6, true, false),
		m(3, mapPorts4Any, keyAny, dataPorts4, false, true),
		m(4, mapPorts6Any, keyAny, dataPorts6, true, true),
	}
}

// Registers as nft allocates them. Register 1 is the first 128-bit
// register; it shares its storage with the 32-bit registers 8 to 11
// (NFT_REG32_00 to 03), so 32-bit register reg32+n is the n-th 32-bit word
// from the start of register 1.
const (
	reg1  = unix.NFT_REG_1
	reg32 = unix.NFT_REG32_00
)

// Header offsets of the destination address.
const (
	daddrOffset4 = 16
	daddrOffset6 = 24
)

// rtnLocal is RTN_LOCAL, the route type of a local address (`fib daddr type
// local`), in host byte order as the fib expression stores it.
var rtnLocal = binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)

// ipv6Loopback is ::1.
var ipv6Loopback = netip.IPv6Loopback().AsSlice()

// matchFamily is `meta nfproto ipv4` or `meta nfproto ipv6`. In the inet
// family it must come before anything that reads the network header.
func matchFamily(v6 bool) []expr.Any {
	proto := byte(unix.NFPROTO_IPV4)
	if v6 {
		proto = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{proto}},
	}
}

// matchLocalDst is `fib daddr type local`: the destination is an address of
// this host (any interface's, 127.0.0.1 too).
func matchLocalDst() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: rtnLocal},
	}
}

// matchNotIPv6Loopback is `ip6 daddr != ::1`.
func matchNotIPv6Loopback() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOffset6, Len: 16},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: ipv6Loopback},
	}
}

// dnatFromMap is the lookup and the NAT of
//
//	dnat ip to meta l4proto . ip daddr . th dport map @ports4
//	dnat ip to meta l4proto . th dport map @ports4-any
//
// (and ip6 for the IPv6 maps): it loads the key into registers 1 onwards,
// looks it up, and gets the container's address and port back into
// register 1 onwards, which the NAT reads. A packet whose key is not in the
// map ends the rule there.
func dnatFromMap(m portMap) []expr.Any {
	addrLen, daddr, family := uint32(4), uint32(daddrOffset4), uint32(unix.NFPROTO_IPV4)
	if m.v6 {
		addrLen, daddr, family = 16, daddrOffset6, unix.NFPROTO_IPV6
	}
	// The key: protocol in the first 32-bit word, then the address (unless
	// any), then the port, each in whole words.
	e := []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1}}
	next := uint32(reg32 + 1)
	if !m.any {
		e = append(e, &expr.Payload{DestRegister: next, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: addrLen})
		next += addrLen / 4
	}
	e = append(e,
		&expr.Payload{DestRegister: next, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, // th dport
		&expr.Lookup{SourceRegister: reg1, SetName: m.set.Name, SetID: m.set.ID, DestRegister: reg1, IsDestRegSet: true},
		// The data: the address from register 1, the port right after it.
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: reg1, RegProtoMin: reg32 + addrLen/4, Specified: true},
	)
	return e
}

// dnatRules returns the rules of a nat chain (prerouting or output) that
// DNAT published ports, in order:
//
//	meta nfproto ipv4 dnat ip to meta l4proto . ip daddr . th dport map @ports4
//	meta nfproto ipv6 dnat ip6 to meta l4proto . ip6 daddr . th dport map @ports6
//	meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @ports4-any
//	meta nfproto ipv6 fib daddr type local ip6 daddr != ::1 dnat ip6 to meta l4proto . th dport map @ports6-any
//
// A port on a specific address comes first, so it wins over one on every
// address (the port allocator keeps the two from coexisting anyway). ::1 is
// left alone: the kernel never routes a packet from ::1 out of the host, so
// a connection to [::1]:port DNAT'ed to a container would hang instead of
// being refused.
func dnatRules(c *nftables.Chain, maps []portMap) []*nftables.Rule {
	var rules []*nftables.Rule
	for _, m := range maps {
		e := matchFamily(m.v6)
		if m.any {
			e = append(e, matchLocalDst()...)
			if m.v6 {
				e = append(e, matchNotIPv6Loopback()...)
			}
		}
		rules = append(rules, &nftables.Rule{Table: c.Table, Chain: c, Exprs: append(e, dnatFromMap(m)...)})
	}
	return rules
}

// dropForeignLoopback is the first rule of prerouting:
//
//	iifname != "lo" meta nfproto ipv4 ip daddr 127.0.0.0/8 drop
//
// A bridge with route_localnet (needed for 127.0.0.1 to reach published
// ports, see the package doc) would also route a packet that a container
// addresses to 127.0.0.1 to the host's own loopback services
// (CVE-2020-8558). A nat chain sees only the first packet of a flow, which
// is what must be stopped: the replies of the host's own connections, which
// do arrive from the bridge for 127.0.0.1, are never new. Without
// route_localnet the kernel drops such packets anyway, so the rule changes
// nothing on other interfaces.
func dropForeignLoopback(c *nftables.Chain) *nftables.Rule {
	return &nftables.Rule{Table: c.Table, Chain: c, Exprs: concat(
		matchName(expr.MetaKeyIIFNAME, expr.CmpOpNeq, "lo"),
		matchPrefix(loopback4, true), // meta nfproto ipv4 ip daddr 127.0.0.0/8
		[]expr.Any{drop()},
	)}
}

// matchDNAT is `ct status dnat`: the flow's destination was rewritten.
func matchDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: reg1},
		&expr.Bitwise{
			SourceRegister: reg1,
			DestRegister:   reg1,
			Len:            4,
			Mask:           binaryutil.NativeEndian.PutUint32(ipsDstNAT),
			Xor:            binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// ipsDstNAT is IPS_DST_NAT, the conntrack status bit of a DNAT'ed flow
// (include/uapi/linux/netfilter/nf_conntrack_common.h).
const ipsDstNAT = 1 << 5

// publishedRule is the one rule of the published stage of forward:
//
//	ct status dnat accept
//
// A flow DNAT'ed to a container (by a published port) may enter its bridge,
// where isolate would drop it otherwise.
func publishedRule(c *nftables.Chain) *nftables.Rule {
	return &nftables.Rule{Table: c.Table, Chain: c, Exprs: append(matchDNAT(), accept())}
}
