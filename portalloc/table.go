package portalloc

import "net/netip"

// binding is one port held on one host address.
type binding struct {
	proto proto
	addr  netip.Addr
	port  uint16
}

// portKey is one port of one protocol and address family, whatever the
// address.
type portKey struct {
	proto proto
	v6    bool
	port  uint16
}

func (b binding) portKey() portKey { return portKey{b.proto, b.addr.Is6(), b.port} }

// table is the set of bindings held, with the conflict rule of the package
// (see the package doc). Every operation is O(1): two map lookups at most.
// The zero value is not usable; make one with newTable. It is not safe for
// concurrent use.
type table struct {
	held    map[binding]struct{}
	perPort map[portKey]int // bindings held on each port, of any address of the family
}

func newTable() table {
	return table{held: map[binding]struct{}{}, perPort: map[portKey]int{}}
}

// conflicts reports whether b conflicts with a binding held: the same port
// of the same protocol and family, on the same address, or with the
// unspecified address on either side.
func (t *table) conflicts(b binding) bool {
	if b.addr.IsUnspecified() {
		return t.perPort[b.portKey()] > 0
	}
	if _, ok := t.held[b]; ok {
		return true
	}
	any := b
	any.addr = unspecified(b.addr)
	_, ok := t.held[any]
	return ok
}

// add records b, which must not conflict.
func (t *table) add(b binding) {
	t.held[b] = struct{}{}
	t.perPort[b.portKey()]++
}

// remove forgets b, and reports whether it was held.
func (t *table) remove(b binding) bool {
	if _, ok := t.held[b]; !ok {
		return false
	}
	delete(t.held, b)
	k := b.portKey()
	if t.perPort[k] <= 1 {
		delete(t.perPort, k)
	} else {
		t.perPort[k]--
	}
	return true
}

// unspecified returns the unspecified address of a's family.
func unspecified(a netip.Addr) netip.Addr {
	if a.Is6() {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}
