package driverapi

import "context"

// Healer is an optional interface of a driver whose host-side objects
// (bridges, ports, its firewall rules, host switches) can be checked
// against the driver's own state at runtime and put back when something
// else deleted or changed them. The controller calls Heal when its
// watchers see a change to such objects.
type Healer interface {
	// Heal checks what req names and puts back what differs from the
	// driver's state, touching nothing the driver does not own. It returns
	// what it put back; an error says what it could not, and the caller
	// retries.
	Heal(ctx context.Context, req HealRequest) ([]Healed, error)
}

// HealRequest says what changed in the host namespace.
type HealRequest struct {
	// All: changes may have been missed (a watcher overran): check
	// everything.
	All bool
	// Firewall: something other than cnm changed the controller's
	// nftables table.
	Firewall bool
	// Links are the links that were made, changed or deleted.
	Links []LinkChange
	// Forwarding: a host-wide forwarding switch changed.
	Forwarding bool
	// Skip reports objects the controller no longer heals (in conflict):
	// Heal leaves them as they are. Object names as in Healed.
	Skip func(object string) bool
}

// LinkChange is a link the kernel announced a change of, as the
// announcement describes it (a driver re-reads a link before it acts).
type LinkChange struct {
	Index   int
	Name    string
	Master  int  // index of its bridge, 0 if none
	Up      bool // administratively up
	Deleted bool
	// AddressGone: an address was deleted from the link (the other fields
	// but Index are then unknown).
	AddressGone bool
}

// Healed is one object put back.
type Healed struct {
	NetworkID string
	// Object names the object: "bridge <name>", "link <name>", "table inet
	// <name>", "sysctl <name>".
	Object string
	// Detail says what was done.
	Detail string
}
