//go:build linux

package firewall

import (
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// This file builds the nftables expressions of the rules. Each builder returns
// the same expressions nft(8) generates for the rule quoted in its comment, so
// `nft list table inet <name>` prints our rules the way a person would write them.

// tagPrefix starts the comment of every per-network rule: `comment "cnm:<id>"`.
const tagPrefix = "cnm:"

// tag returns the rule UserData that marks a rule as belonging to network id.
// It uses libnftnl's comment TLV, so nft shows it as a comment.
func tag(id string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, tagPrefix+id)
}

// tagOf returns the network ID a rule was tagged with by [tag].
func tagOf(r *nftables.Rule) (string, bool) {
	c, ok := userdata.GetString(r.UserData, userdata.TypeComment)
	if !ok || len(c) <= len(tagPrefix) || c[:len(tagPrefix)] != tagPrefix {
		return "", false
	}
	return c[len(tagPrefix):], true
}

// ifname returns name zero-padded to IFNAMSIZ, as nft compares interface names
// for an exact match (a shorter comparison would match a prefix: "br1" would
// also match "br10").
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// matchName loads the interface name selected by key (iifname or oifname)
// and compares it with name using op.
func matchName(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
	}
}

// matchEstablished is `ct state established,related`.
func matchEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{
			SourceRegister: 1,
			DestRegister:   1,
			Len:            4,
			Mask:           binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:            binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// matchSource is `ip saddr <p>` or `ip6 saddr <p>`. In the inet family the
// address family is checked first (`meta nfproto`), as nft does, so an IPv4
// prefix is never compared with the bytes of an IPv6 header. p must be masked.
func matchSource(p netip.Prefix) []expr.Any {
	return matchPrefix(p, false)
}

// matchPrefix is matchSource, or `ip daddr <p>` / `ip6 daddr <p>` if dst.
func matchPrefix(p netip.Prefix, dst bool) []expr.Any {
	proto, offset := byte(unix.NFPROTO_IPV4), uint32(12) // saddr offset in the IPv4 header
	if p.Addr().Is6() {
		proto, offset = unix.NFPROTO_IPV6, 8 // saddr offset in the IPv6 header
	}
	if dst {
		offset += uint32(p.Addr().BitLen() / 8) // daddr follows saddr in both headers
	}
	addr := p.Addr().AsSlice()
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{
			DestRegister: 1,
			Base:         expr.PayloadBaseNetworkHeader,
			Offset:       offset,
			Len:          uint32(len(addr)),
		},
	}
	if p.Bits() < p.Addr().BitLen() {
		mask := make([]byte, len(addr))
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		e = append(e, &expr.Bitwise{
			SourceRegister: 1,
			DestRegister:   1,
			Len:            uint32(len(addr)),
			Mask:           mask,
			Xor:            make([]byte, len(addr)),
		})
	}
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr})
}

func accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }
func drop() expr.Any   { return &expr.Verdict{Kind: expr.VerdictDrop} }
func jump(chain string) expr.Any {
	return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}
}

// concat joins expression lists into one rule body.
func concat(parts ...[]expr.Any) []expr.Any {
	var e []expr.Any
	for _, p := range parts {
		e = append(e, p...)
	}
	return e
}

// networkRules returns every rule of network n, in the order they are added
// (appended) to their chains. n must be valid. The package doc says what
// each chain is for.
func (f *Firewall) networkRules(n Network) []*nftables.Rule {
	ud := tag(n.ID)
	var rules []*nftables.Rule
	add := func(c *nftables.Chain, e ...[]expr.Any) {
		rules = append(rules, &nftables.Rule{Table: c.Table, Chain: c, Exprs: concat(e...), UserData: ud})
	}
	// Into the bridge (oifname <br>) and out of it (iifname <br>); each rule
	// gets expressions of its own.
	in := func() []expr.Any { return matchName(expr.MetaKeyOIFNAME, expr.CmpOpEq, n.Bridge) }
	out := func() []expr.Any { return matchName(expr.MetaKeyIIFNAME, expr.CmpOpEq, n.Bridge) }

	// allow: oifname <br> iifname <br> accept (ICC only)
	//        oifname <br> ct state established,related accept
	if n.ICC {
		add(f.allow, in(), out(), []expr.Any{accept()})
	}
	add(f.allow, in(), matchEstablished(), []expr.Any{accept()})

	// internal: iifname <br> drop; oifname <br> drop
	if n.Internal {
		add(f.internal, out(), []expr.Any{drop()})
		add(f.internal, in(), []expr.Any{drop()})
	}

	// isolate: oifname <br> drop
	add(f.isolate, in(), []expr.Any{drop()})

	// postrouting: ip saddr <subnet> oifname != <br> masquerade
	if n.Masquerade && !n.Internal {
		for _, p := range n.Subnets {
			add(f.postrouting, matchSource(p), matchName(expr.MetaKeyOIFNAME, expr.CmpOpNeq, n.Bridge),
				[]expr.Any{&expr.Masq{}})
		}
	}
	if !n.Internal {
		masquerade := func(e ...[]expr.Any) { add(f.postrouting, append(e, []expr.Any{&expr.Masq{}})...) }
		// Hairpin: ip saddr <subnet> oifname <br> ct status dnat masquerade
		//
		// A container that reaches a published port of its own bridge
		// (through an address of the host) is masqueraded, so that the
		// reply goes back through the host, which undoes the DNAT, and not
		// straight to the container over the bridge. The source subnet
		// says where the packet came from: with br_netfilter the host
		// bridges such a packet back (it keeps no input interface for
		// postrouting), so `iifname <br>` would not match it.
		for _, p := range n.Subnets {
			masquerade(matchSource(p), matchName(expr.MetaKeyOIFNAME, expr.CmpOpEq, n.Bridge), matchDNAT())
		}
		// Localhost: ip saddr 127.0.0.0/8 oifname <br> masquerade
		//
		// A host process that reaches a published port at 127.0.0.1 sends
		// from 127.0.0.1, which the container could not answer. The kernel
		// routes such a packet out of the bridge only with route_localnet
		// on it (see the package doc).
		masquerade(matchSource(loopback4), matchName(expr.MetaKeyOIFNAME, expr.CmpOpEq, n.Bridge))
	}
	return rules
}

// loopback4 is 127.0.0.0/8.
var loopback4 = netip.MustParsePrefix("127.0.0.0/8")

// ruleBridge returns the bridge name of a rule of isolate (`oifname <br> drop`).
func ruleBridge(r *nftables.Rule) (string, bool) {
	for i := 0; i+1 < len(r.Exprs); i++ {
		m, ok := r.Exprs[i].(*expr.Meta)
		if !ok || m.Key != expr.MetaKeyOIFNAME || m.SourceRegister {
			continue
		}
		c, ok := r.Exprs[i+1].(*expr.Cmp)
		if !ok || c.Op != expr.CmpOpEq || len(c.Data) != unix.IFNAMSIZ {
			continue
		}
		n := 0
		for n < len(c.Data) && c.Data[n] != 0 {
			n++
		}
		return string(c.Data[:n]), true
	}
	return "", false
}
