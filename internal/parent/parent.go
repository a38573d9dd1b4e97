// Package parent manages the parent links of macvlan and ipvlan networks:
// the host-namespace interfaces their containers' links hang off. It is
// shared by the macvlan and ipvlan drivers (through package subif) and the
// controller, which gives both drivers one [Table].
//
// A network names its parent with Docker's `parent` option:
//
//   - an existing link ("eth1"): used as it is, never changed, never deleted;
//     it must be up, and must not itself be a macvlan or ipvlan link;
//   - "<link>.<vlan id>" that does not exist ("eth1.50"): an 802.1Q
//     sub-interface of <link> is made, up, and deleted with the last network
//     that uses it (a sub-interface the user made is never deleted);
//   - nothing: the network is internal and gets a parent of its own, deleted
//     with it (see [Table.Acquire] for why that is a bridge without ports).
//
// Links the Table makes carry the alias "cnm:" and a network ID, the mark by
// which cnm recognises its links after a restart (the bridge driver's
// bridges carry the same mark, and the controller deletes marked links that
// no network explains).
//
// A [Table] also enforces the rules between networks on one parent: macvlan
// and ipvlan never share a parent (the kernel gives a link's receive hook to
// one of them only), an exclusive network (macvlan passthru) has its parent
// alone, and the subnets of networks on one parent do not overlap.
package parent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/osl"
)

// Option keys shared by the macvlan and ipvlan drivers, as Docker names them.
const (
	// OptionParent names the parent link.
	OptionParent = "parent"
	// OptionMTU sets the MTU of the network's links; it may not exceed the
	// parent's. Default: the parent's MTU.
	OptionMTU = "com.docker.network.driver.mtu"
)

// VLAN IDs a sub-interface may have (0 and 4095 are reserved by 802.1Q).
const (
	MinVLANID = 1
	MaxVLANID = 4094
)

// mark is the alias of the links the Table makes for network id: the
// controller's own link mark (mark.Owner.Link), as on the bridge driver's
// bridges, so the controller's orphan sweep after a restart covers these
// links too, and no other controller's sweep does.
func (t *Table) mark(id string) string { return t.owner.Link(id) }

// slaveKinds are link kinds that cannot be a parent: the kernel would
// silently put a macvlan on a macvlan's own parent instead, and refuses
// ipvlan on ipvlan.
var slaveKinds = map[string]bool{"macvlan": true, "macvtap": true, "ipvlan": true, "ipvtap": true}

// Table holds the parents used by the macvlan and ipvlan networks of one
// host namespace. Give both drivers of a controller the same Table, so that
// the rules between networks hold across drivers. It is safe for concurrent
// use.
type Table struct {
	ns    *osl.Namespace
	owner mark.Owner
	log   *slog.Logger // SetLogger; discards by default

	// fault, if set, fails the named step (tests only).
	fault func(step string) error

	// mu guards parents, and is held across the kernel work of Acquire and
	// Release, so that two networks never both decide to make (or delete)
	// the same sub-interface. Network creation and deletion are rare and
	// take a few requests; joins never take mu.
	mu      sync.Mutex
	parents map[string]*entry // by parent link name
}

type entry struct {
	index   int
	created bool            // made by the Table: deleted with its last user
	users   map[string]user // by network ID
}

type user struct {
	kind      string
	exclusive bool
	subnets   []netip.Prefix
}

// New returns an empty Table for the host namespace ns.
func New(ns *osl.Namespace, owner mark.Owner) *Table {
	return &Table{ns: ns, owner: owner, log: slog.New(slog.DiscardHandler), parents: map[string]*entry{}}
}

// SetLogger makes the table log to l. Call it before the table is used.
func (t *Table) SetLogger(l *slog.Logger) { t.log = l }

// Request is what a network asks of [Table.Acquire].
type Request struct {
	NetworkID string
	// Kind is the network's link kind ("macvlan", "ipvlan"): two kinds
	// never share a parent.
	Kind string
	// Name is the parent option; empty: make an internal parent called
	// InternalName.
	Name         string
	InternalName string
	// MTU requested for the network's links; 0: the parent's. Above the
	// parent's it is refused.
	MTU int
	// Exclusive: the network needs the parent alone (macvlan passthru).
	// ExclusiveWhy names the option that asks for it, for error messages.
	Exclusive    bool
	ExclusiveWhy string
	// Subnets of the network, which may not overlap those of other networks
	// on the same parent.
	Subnets []netip.Prefix
	// Restore: take back a network that existed before the controller
	// restarted. Its own parent or sub-interface is adopted if it still
	// exists (recognised by its mark) and made again if not; the checks
	// against other networks and of the parent's state are skipped (they
	// held when the network was made); and a parent that is missing does
	// not fail the restore: the network is taken back, and its joins fail
	// with an error wrapping driverapi.ErrNotFound until the parent exists.
	Restore bool
}

// Parent is a parent link a network holds.
type Parent struct {
	Name string
	// Index of the parent when it was acquired; 0 if it was missing at a
	// restore. Joins look the parent up by name, so that a parent made
	// again (a NIC reset, a reboot) is found under its new index.
	Index int
	// MTU is the MTU of the network's links: Request.MTU, or the parent's.
	MTU int
	// Internal: the parent is the network's own, made for it by the Table.
	Internal bool
}

// Acquire resolves, checks and, if needed, makes the parent of a network,
// and records the network as its user. Errors name the option and its value
// and wrap driverapi.ErrInvalid (bad value: loopback, a macvlan or ipvlan
// link, a link that is down, an MTU above the parent's, a VLAN ID out of
// range), driverapi.ErrNotFound (no such link), driverapi.ErrExists (the
// parent is taken by an exclusive network or another kind, or a subnet
// overlaps one of another network on the same parent) or
// driverapi.ErrNotSupported (the kernel has no 802.1Q). On error nothing is
// made and nothing recorded.
//
// A network without parent gets a bridge without ports as its parent.
// Docker uses a dummy link there, but dummy links are an optional kernel
// module that is missing on some kernels (this project's CI kernel among
// them), while bridges are always there for the bridge driver. A bridge
// without ports, up, has carrier, so macvlan links on it come up; in bridge
// mode they reach each other inside the kernel, and whatever they send to
// the parent is flooded to no port at all: the containers reach each other
// and nothing else. The bridge carries no address and no IPv6 link-local
// address, so the host is not reachable through it either. A veth end would
// work too but costs two links.
func (t *Table) Acquire(ctx context.Context, req Request) (_ Parent, retErr error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, e := range t.parents {
		if _, ok := e.users[req.NetworkID]; ok {
			return Parent{}, fmt.Errorf("%w: network %s already holds parent %s", driverapi.ErrExists, req.NetworkID, name)
		}
	}
	if req.Name == "" {
		return t.makeInternalLocked(ctx, req)
	}
	if err := linkrules.CheckIfName(req.Name); err != nil {
		return Parent{}, fmt.Errorf("%w: option %s=%q: %v", driverapi.ErrInvalid, OptionParent, req.Name, err)
	}
	if !req.Restore {
		if err := t.checkSharingLocked(req); err != nil {
			return Parent{}, err
		}
	}

	l, err := t.ns.LinkByName(ctx, req.Name)
	switch {
	case err == nil:
		if !req.Restore {
			if err := checkLink(req, l, ""); err != nil {
				return Parent{}, err
			}
		}
		// At a restore, a link marked with this network's ID is one the
		// Table made before the restart: it goes with its last network, as
		// if made now. Any other mark is not ours to delete (the bridge
		// driver marks its bridges alike, and a bridge may be a parent).
		t.addUserLocked(req, l.Index, req.Restore && l.Alias == t.mark(req.NetworkID))
		return Parent{Name: req.Name, Index: l.Index, MTU: mtuOf(req, l)}, nil
	case !errors.Is(err, osl.ErrLinkNotFound):
		return Parent{}, fmt.Errorf("option %s=%q: %w", OptionParent, req.Name, err)
	}

	// No such link: an 802.1Q sub-interface to make, or an error.
	base, id, ok, err := ParseVLAN(req.Name)
	if err != nil {
		return Parent{}, err
	}
	if !ok && req.Restore {
		return t.missingAtRestoreLocked(req), nil
	}
	if !ok {
		return Parent{}, fmt.Errorf("%w: option %s=%q: no such link in host namespace %s", driverapi.ErrNotFound, OptionParent, req.Name, t.ns)
	}
	bl, err := t.ns.LinkByName(ctx, base)
	if errors.Is(err, osl.ErrLinkNotFound) && req.Restore {
		return t.missingAtRestoreLocked(req), nil
	}
	if errors.Is(err, osl.ErrLinkNotFound) {
		return Parent{}, fmt.Errorf("%w: option %s=%q: neither it nor its base link %q exists in host namespace %s",
			driverapi.ErrNotFound, OptionParent, req.Name, base, t.ns)
	}
	if err != nil {
		return Parent{}, fmt.Errorf("option %s=%q: %w", OptionParent, req.Name, err)
	}
	if !req.Restore {
		if err := checkLink(req, bl, base); err != nil {
			return Parent{}, err
		}
	}
	idx, err := t.ns.AddVLAN(ctx, osl.VLANSpec{Name: req.Name, ParentIndex: bl.Index, ID: id, Alias: t.mark(req.NetworkID)})
	if errors.Is(err, osl.ErrKindNotSupported) {
		return Parent{}, fmt.Errorf("%w: option %s=%q: cannot make the 802.1Q sub-interface (vlan id %d on %s): the kernel has no 802.1Q support: %w",
			driverapi.ErrNotSupported, OptionParent, req.Name, id, base, err)
	}
	if errors.Is(err, syscall.EEXIST) {
		return Parent{}, fmt.Errorf("%w: option %s=%q: %w", driverapi.ErrExists, OptionParent, req.Name, err)
	}
	if err != nil {
		return Parent{}, fmt.Errorf("option %s=%q: %w", OptionParent, req.Name, err)
	}
	defer t.undoOnError(ctx, &retErr, req.Name)
	if err := t.step("vlan"); err != nil {
		return Parent{}, err
	}
	t.addUserLocked(req, idx, true)
	return Parent{Name: req.Name, Index: idx, MTU: mtuOf(req, bl)}, nil
}

// addUserLocked records req's network as a user of parent req.Name, which
// the Table made if created is set. (At a restore, the network whose ID the
// parent's mark carries may come after other users of the parent.)
func (t *Table) addUserLocked(req Request, index int, created bool) {
	e := t.parents[req.Name]
	if e == nil {
		e = &entry{index: index, users: map[string]user{}}
		t.parents[req.Name] = e
	}
	e.created = e.created || created
	e.users[req.NetworkID] = userOf(req)
}

// missingAtRestoreLocked takes a network back whose parent is gone.
func (t *Table) missingAtRestoreLocked(req Request) Parent {
	t.log.Warn("parent: restore: parent link is missing; joins fail until it exists", "network", req.NetworkID, "parent", req.Name)
	t.addUserLocked(req, 0, false)
	return Parent{Name: req.Name, MTU: req.MTU}
}

// makeInternalLocked makes a network's own parent: a bridge without ports
// (see Acquire), up, without IPv6 link-local address.
func (t *Table) makeInternalLocked(ctx context.Context, req Request) (_ Parent, retErr error) {
	if err := linkrules.CheckIfName(req.InternalName); err != nil {
		return Parent{}, fmt.Errorf("%w: internal parent %q: %v", driverapi.ErrInvalid, req.InternalName, err)
	}
	mtu := req.MTU
	if mtu == 0 {
		mtu = 1500 // a new bridge's MTU
	}
	if req.Restore {
		l, err := t.ns.LinkByName(ctx, req.InternalName)
		if err == nil && l.Alias == t.mark(req.NetworkID) {
			if !l.Up {
				if err := t.ns.LinkUp(ctx, l.Index, false); err != nil {
					return Parent{}, err
				}
			}
			t.addUserLocked(Request{NetworkID: req.NetworkID, Kind: req.Kind, Name: req.InternalName, Subnets: req.Subnets}, l.Index, true)
			return Parent{Name: req.InternalName, Index: l.Index, MTU: mtu, Internal: true}, nil
		}
	}
	idx, err := t.ns.AddBridge(ctx, osl.BridgeSpec{Name: req.InternalName, MTU: req.MTU, Alias: t.mark(req.NetworkID)})
	if errors.Is(err, syscall.EEXIST) {
		return Parent{}, fmt.Errorf("%w: internal parent %s: a link of that name exists in host namespace %s", driverapi.ErrExists, req.InternalName, t.ns)
	}
	if err != nil {
		return Parent{}, err
	}
	defer t.undoOnError(ctx, &retErr, req.InternalName)
	if err := t.step("internal"); err != nil {
		return Parent{}, err
	}
	if err := t.ns.SetNoLinkLocal(ctx, idx); err != nil {
		return Parent{}, err
	}
	if err := t.ns.LinkUp(ctx, idx, false); err != nil {
		return Parent{}, err
	}
	t.addUserLocked(Request{NetworkID: req.NetworkID, Kind: req.Kind, Name: req.InternalName, Subnets: req.Subnets}, idx, true)
	return Parent{Name: req.InternalName, Index: idx, MTU: mtu, Internal: true}, nil
}

// undoOnError deletes the link name if *err is set when Acquire returns.
func (t *Table) undoOnError(ctx context.Context, err *error, name string) {
	if *err == nil {
		return
	}
	if derr := t.ns.DeleteLink(context.WithoutCancel(ctx), name); derr != nil {
		t.log.Warn("parent: rollback: delete link", "link", name, "err", derr)
	}
}

func (t *Table) step(name string) error {
	if t.fault == nil {
		return nil
	}
	return t.fault(name)
}

// checkSharingLocked applies the rules between networks on one parent.
func (t *Table) checkSharingLocked(req Request) error {
	e := t.parents[req.Name]
	if e == nil {
		return nil
	}
	ids := make([]string, 0, len(e.users))
	for id := range e.users {
		ids = append(ids, id)
	}
	sort.Strings(ids) // report the same conflict every time
	for _, id := range ids {
		u := e.users[id]
		switch {
		case u.kind != req.Kind:
			return fmt.Errorf("%w: option %s=%q: %s network %s uses this parent, and %s and %s links cannot share one",
				driverapi.ErrExists, OptionParent, req.Name, u.kind, id, u.kind, req.Kind)
		case req.Exclusive:
			return fmt.Errorf("%w: option %s: network %s already uses parent %q, which %s needs alone",
				driverapi.ErrExists, req.ExclusiveWhy, id, req.Name, req.ExclusiveWhy)
		case u.exclusive:
			return fmt.Errorf("%w: option %s=%q: network %s has this parent alone (passthru)",
				driverapi.ErrExists, OptionParent, req.Name, id)
		}
		for _, s := range req.Subnets {
			for _, o := range u.subnets {
				if s.Overlaps(o) {
					return fmt.Errorf("%w: overlapping subnet: subnet %s overlaps subnet %s of network %s on parent %q",
						driverapi.ErrExists, s, o, id, req.Name)
				}
			}
		}
	}
	return nil
}

// checkLink checks that l can be the parent (or, when base is set, the base
// of the sub-interface req.Name).
func checkLink(req Request, l osl.Link, base string) error {
	what := fmt.Sprintf("option %s=%q", OptionParent, req.Name)
	if base != "" {
		what += fmt.Sprintf(": base link %q", base)
	}
	switch {
	case l.Name == "lo":
		return fmt.Errorf("%w: %s: the loopback cannot be a parent", driverapi.ErrInvalid, what)
	case slaveKinds[l.Kind]:
		return fmt.Errorf("%w: %s: is itself a %s link; give its parent instead", driverapi.ErrInvalid, what, l.Kind)
	case !l.Up:
		return fmt.Errorf("%w: %s: link is down; bring it up first (cnm does not change interfaces it did not make)", driverapi.ErrInvalid, what)
	case req.MTU > l.MTU:
		return fmt.Errorf("%w: option %s=%d: above the MTU %d of parent %q", driverapi.ErrInvalid, OptionMTU, req.MTU, l.MTU, l.Name)
	}
	return nil
}

func userOf(req Request) user {
	return user{kind: req.Kind, exclusive: req.Exclusive, subnets: req.Subnets}
}

func mtuOf(req Request, l osl.Link) int {
	if req.MTU > 0 {
		return req.MTU
	}
	return l.MTU
}

// Release forgets the network as a user of its parent, and deletes the
// parent if the Table made it and no other network uses it. A network that
// holds no parent is not an error. If the deletion fails, nothing changes
// and Release can be retried.
func (t *Table) Release(ctx context.Context, networkID string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, e := range t.parents {
		if _, ok := e.users[networkID]; !ok {
			continue
		}
		ctx := context.WithoutCancel(ctx)
		if e.created && len(e.users) == 1 {
			if err := t.ns.DeleteLink(ctx, name); err != nil {
				return fmt.Errorf("delete parent %s of network %s: %w", name, networkID, err)
			}
		}
		delete(e.users, networkID)
		if e.created && len(e.users) > 0 {
			t.remarkLocked(ctx, name, networkID, e)
		}
		if len(e.users) == 0 {
			delete(t.parents, name)
		}
		return nil
	}
	return nil
}

// remarkLocked moves the mark of a shared link the Table made from a network
// that leaves it to one that stays: after a restart, a link marked with the
// ID of a network that no longer exists is an orphan, and the controller
// deletes it.
func (t *Table) remarkLocked(ctx context.Context, name, leaving string, e *entry) {
	l, err := t.ns.LinkByName(ctx, name)
	if err != nil || l.Alias != t.mark(leaving) {
		return
	}
	ids := make([]string, 0, len(e.users))
	for id := range e.users {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if err := t.ns.SetLinkAlias(ctx, l.Index, t.mark(ids[0])); err != nil {
		t.log.Warn("parent: move mark of shared link", "link", name, "to network", ids[0], "err", err)
	}
}

// ParseVLAN splits a parent name in Docker's sub-interface notation,
// "<link>.<vlan id>". ok is false for a name not in that notation; a name in
// it whose ID is out of range 1-4094 is an error wrapping
// driverapi.ErrInvalid.
func ParseVLAN(name string) (base string, id int, ok bool, err error) {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 || i == len(name)-1 {
		return "", 0, false, nil
	}
	digits := name[i+1:]
	for _, c := range digits {
		if c < '0' || c > '9' {
			return "", 0, false, nil
		}
	}
	id, err = strconv.Atoi(digits)
	if err != nil || id < MinVLANID || id > MaxVLANID {
		return "", 0, false, fmt.Errorf("%w: option %s=%q: vlan id %s out of range %d-%d",
			driverapi.ErrInvalid, OptionParent, name, digits, MinVLANID, MaxVLANID)
	}
	return name[:i], id, true, nil
}
