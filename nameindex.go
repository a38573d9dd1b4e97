package cnm

import (
	"net/netip"
	"slices"
	"sync"
)

// nameIndex is one network's names for service discovery: every joined
// endpoint's names with its addresses, both ways. Safe for concurrent use:
// the resolvers of many sandboxes read it while joins and leaves change it.
type nameIndex struct {
	mu     sync.RWMutex
	byID   map[string]*nameEntry
	byName map[string][]*nameEntry
	byAddr map[netip.Addr][]*nameEntry

	turnMu sync.Mutex
	turns  map[nameFamily]uint32 // rotates the answers of names with several addresses
}

// nameFamily is a name and an address family: each rotates on its own.
type nameFamily struct {
	name string
	ipv6 bool
}

// nameEntry is one endpoint's entry: its names and addresses.
type nameEntry struct {
	id    string // endpoint ID
	names []string
	addrs []netip.Addr
}

// add indexes an endpoint's names and addresses.
func (x *nameIndex) add(id string, names []string, addrs []netip.Addr) {
	e := &nameEntry{id: id, names: names, addrs: addrs}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.byID == nil {
		x.byID, x.byName, x.byAddr = map[string]*nameEntry{}, map[string][]*nameEntry{}, map[netip.Addr][]*nameEntry{}
	}
	x.byID[id] = e
	for _, n := range names {
		x.byName[n] = append(x.byName[n], e)
	}
	for _, a := range addrs {
		x.byAddr[a] = append(x.byAddr[a], e)
	}
}

// remove drops an endpoint's entry.
func (x *nameIndex) remove(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e := x.byID[id]
	if e == nil {
		return
	}
	delete(x.byID, id)
	for _, n := range e.names {
		dropEntry(x.byName, n, e)
		if x.byName[n] == nil {
			x.turnMu.Lock()
			delete(x.turns, nameFamily{n, false})
			delete(x.turns, nameFamily{n, true})
			x.turnMu.Unlock()
		}
	}
	for _, a := range e.addrs {
		dropEntry(x.byAddr, a, e)
	}
}

// dropEntry removes e from m[k], and k from m when nothing is left.
func dropEntry[K comparable](m map[K][]*nameEntry, k K, e *nameEntry) {
	if es := slices.DeleteFunc(m[k], func(o *nameEntry) bool { return o == e }); len(es) > 0 {
		m[k] = es
	} else {
		delete(m, k)
	}
}

// lookup returns the addresses of one family of a name (lower case); ok
// is false if no endpoint has the name. A name with several addresses (a
// shared alias, tasks.<service>, a global network's service) has them in
// an order that rotates by one from each lookup of that name and family to
// the next: clients that take the first address spread over all of them
// (DNS round robin).
func (x *nameIndex) lookup(name string, ipv6 bool) (addrs []netip.Addr, ok bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	es := x.byName[name]
	for _, e := range es {
		for _, a := range e.addrs {
			if a.Is6() == ipv6 {
				addrs = append(addrs, a)
			}
		}
	}
	if len(addrs) > 1 {
		key := nameFamily{name, ipv6}
		x.turnMu.Lock()
		if x.turns == nil {
			x.turns = map[nameFamily]uint32{}
		}
		k := int(x.turns[key] % uint32(len(addrs)))
		x.turns[key]++
		x.turnMu.Unlock()
		addrs = slices.Concat(addrs[k:], addrs[:k])
	}
	return addrs, len(es) > 0
}

// reverse returns the names of an address.
func (x *nameIndex) reverse(addr netip.Addr) []string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []string
	for _, e := range x.byAddr[addr] {
		out = append(out, e.names...)
	}
	return out
}
