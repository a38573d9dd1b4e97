// Package watch reports changes to a network namespace's links, forwarding
// switches and one nftables table as the kernel announces them on netlink
// multicast groups. It never polls: while nothing changes, its goroutines
// sleep in a receive call.
package watch

// Kind says what a [Change] concerns.
type Kind int

// The kinds of change.
const (
	// Link: a link was made, changed or deleted (Index, Name, Master, Up,
	// Deleted).
	Link Kind = iota + 1
	// Address: an address was deleted from the link Index.
	Address
	// Forwarding: the host-wide forwarding switch of a family changed
	// (IPv6, On).
	Forwarding
	// Firewall: the watched nftables table, or a chain, rule, set or set
	// element of it, was changed by a socket that is not one of ours.
	Firewall
	// Resync: a socket overran (ENOBUFS) and changes were lost; everything
	// must be checked.
	Resync
)

// Change is one change a watcher saw.
type Change struct {
	Kind Kind
	// Link.
	Index   int
	Name    string
	Master  int
	Up      bool
	Deleted bool
	// Forwarding.
	IPv6 bool
	On   bool
}

// Config says what to watch.
type Config struct {
	// NSFD is an open fd of the network namespace to watch, used while
	// Start makes the sockets (they belong to the namespace afterwards).
	NSFD int
	// Table is the name of the inet nftables table to watch.
	Table string
	// Own reports whether a netlink port ID is one of the caller's own
	// sockets: changes they made are not reported.
	Own func(portID uint32) bool
	// RecvBuffer, if not zero, sets the sockets' receive buffer size
	// (tests use a small one to provoke overruns).
	RecvBuffer int
}
