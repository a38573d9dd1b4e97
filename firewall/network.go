//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/errdefs"
)

const maxIDLen = 64

var idRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)

// validateID checks a network ID. The length limit keeps the rule comment
// well under nft's 128 characters.
func validateID(id string) error {
	if len(id) == 0 || len(id) > maxIDLen || !idRE.MatchString(id) {
		return fmt.Errorf("%w: network id %q: must be 1 to %d characters of [a-zA-Z0-9_.-]", errdefs.ErrInvalid, id, maxIDLen)
	}
	return nil
}

// bridgeRule says what [validBridge] accepts.
var bridgeRule = fmt.Sprintf("must be 1 to %d printable ASCII characters without '/', ':' or space", unix.IFNAMSIZ-1)

// validBridge checks an interface name as the kernel's dev_valid_name does.
func validBridge(name string) bool {
	return len(name) > 0 && len(name) < unix.IFNAMSIZ && name != "." && name != ".." &&
		!strings.ContainsFunc(name, func(r rune) bool {
			return r == '/' || r == ':' || r <= ' ' || r == 0x7f || r > 0x7e
		})
}

// validate checks n as the kernel's dev_valid_name and nft would, so that bad
// input is reported before anything is sent.
func (n Network) validate() error {
	if err := validateID(n.ID); err != nil {
		return err
	}
	if !validBridge(n.Bridge) {
		return fmt.Errorf("%w: network %s: bridge %q: %s", errdefs.ErrInvalid, n.ID, n.Bridge, bridgeRule)
	}
	seen := make(map[netip.Prefix]bool, len(n.Subnets))
	for _, p := range n.Subnets {
		switch {
		case !p.IsValid():
			return fmt.Errorf("%w: network %s: subnet %s", errdefs.ErrInvalid, n.ID, p)
		case p.Addr().Is4In6():
			return fmt.Errorf("%w: network %s: subnet %s: IPv4-mapped IPv6 subnet", errdefs.ErrInvalid, n.ID, p)
		case p.Addr().Zone() != "":
			return fmt.Errorf("%w: network %s: subnet %s: has a zone", errdefs.ErrInvalid, n.ID, p)
		case p != p.Masked():
			return fmt.Errorf("%w: network %s: subnet %s: has host bits set, use %s", errdefs.ErrInvalid, n.ID, p, p.Masked())
		case seen[p]:
			return fmt.Errorf("%w: network %s: subnet %s: listed twice", errdefs.ErrInvalid, n.ID, p)
		}
		seen[p] = true
	}
	return nil
}

// AddNetwork installs all rules of one network in a single netlink batch: all
// or nothing. Adding an ID that is already present returns an error wrapping
// errdefs.ErrExists, and so does a bridge that another network already uses.
// Invalid input (empty ID, empty/too long bridge name, invalid subnet) returns
// errdefs.ErrInvalid naming the field and value, before anything is sent.
//
// The context is checked before the request is sent; the kernel applies a
// batch synchronously and it cannot be interrupted.
func (f *Firewall) AddNetwork(ctx context.Context, n Network) error {
	if err := n.validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return fmt.Errorf("add network %s: %w", n.ID, err)
	}
	if err := f.checkUnusedLocked(n); err != nil {
		return fmt.Errorf("add network %s: %w", n.ID, err)
	}

	c, err := f.connLocked()
	if err != nil {
		return fmt.Errorf("add network %s: %w", n.ID, err)
	}
	for _, r := range f.networkRules(n) {
		c.AddRule(r)
	}
	if err := f.flushLocked(); err != nil {
		err = fmt.Errorf("add network %s: %w", n.ID, err)
		// A failed batch has no effect, unless the failure was in reading the
		// acknowledgements (e.g. ENOBUFS) after the kernel had committed it.
		// Make sure nothing of the network stays.
		if rerr := f.removeLocked(n.ID); rerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back network %s: %w", n.ID, rerr))
		}
		return err
	}
	return nil
}

// checkUnusedLocked returns an error wrapping errdefs.ErrExists if the kernel
// already has network n.ID, or a network on the same bridge. Every network has
// exactly one rule in isolate (`oifname <br> drop`), and networks are added
// and removed whole, so isolate alone is the index of networks: the check
// costs one rule per network, not all of them.
func (f *Firewall) checkUnusedLocked(n Network) error {
	rules, err := f.getRulesLocked(f.isolate)
	if err != nil {
		return err
	}
	for _, r := range rules {
		id, ok := tagOf(r)
		if !ok {
			continue
		}
		if id == n.ID {
			return fmt.Errorf("network %s: %w", n.ID, errdefs.ErrExists)
		}
		if br, ok := ruleBridge(r); ok && br == n.Bridge {
			return fmt.Errorf("bridge %q is used by network %s: %w", n.Bridge, id, errdefs.ErrExists)
		}
	}
	return nil
}

// RemoveNetwork removes every rule and published port tagged with the
// network ID, in one batch. Removing an unknown ID is not an error
// (idempotent); an invalid ID returns errdefs.ErrInvalid. After Delete it
// does nothing.
func (f *Firewall) RemoveNetwork(ctx context.Context, id string) error {
	if err := validateID(id); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("remove network %s: %w", id, f.usableLocked())
	}
	if f.deleted {
		return nil
	}
	if err := f.removeLocked(id); err != nil {
		return fmt.Errorf("remove network %s: %w", id, err)
	}
	return nil
}

// removeLocked deletes the rules tagged with id by handle, and the elements
// of its published ports, in one batch. If a rule or an element vanished
// between listing and deleting (ENOENT, someone else removed it) the whole
// batch fails, so it lists and tries again.
func (f *Firewall) removeLocked(id string) error {
	const attempts = 3
	var err error
	for range attempts {
		var rules []*nftables.Rule
		rules, err = f.taggedLocked(id)
		if err != nil {
			return err
		}
		var elems [][]nftables.SetElement
		var nelems int
		elems, nelems, err = f.taggedPortsLocked(id)
		if err != nil {
			return err
		}
		if len(rules) == 0 && nelems == 0 {
			return nil
		}
		var c *nftables.Conn
		c, err = f.connLocked()
		if err != nil {
			return err
		}
		for _, r := range rules {
			if err = c.DelRule(r); err != nil {
				f.dropConnLocked() // discard the partial batch
				return err
			}
		}
		if err = f.deleteElements(c, elems); err != nil {
			f.dropConnLocked()
			return err
		}
		err = f.flushLocked()
		if !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	return err
}

// taggedLocked lists the rules of network id in every per-network chain.
func (f *Firewall) taggedLocked(id string) ([]*nftables.Rule, error) {
	var tagged []*nftables.Rule
	for _, ch := range f.networkChains() {
		rules, err := f.getRulesLocked(ch)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			if got, ok := tagOf(r); ok && got == id {
				tagged = append(tagged, r)
			}
		}
	}
	return tagged, nil
}

// NetworkIDs returns the IDs of the networks that have rules or published
// ports in this firewall's table, sorted. A controller restoring its state
// uses it to find rules that no network record explains.
func (f *Firewall) NetworkIDs(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, ch := range f.networkChains() {
		rules, err := f.getRulesLocked(ch)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			if id, ok := tagOf(r); ok {
				seen[id] = true
			}
		}
	}
	ports, err := f.portsLocked()
	if err != nil {
		return nil, err
	}
	for _, p := range ports {
		if p.NetworkID != "" {
			seen[p.NetworkID] = true
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}
