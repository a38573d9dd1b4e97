package parent

import (
	"context"
	"errors"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// Heal sets up again a parent link the table made (an internal parent, a
// VLAN sub-interface) that something else set down. A parent the user
// gave is never touched. A deleted parent cannot be healed: its macvlan
// and ipvlan links went with it, inside the sandboxes; it is logged.
func (t *Table) Heal(ctx context.Context, req driverapi.HealRequest) ([]driverapi.Healed, error) {
	touched := map[int]bool{}
	for _, l := range req.Links {
		touched[l.Index] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var (
		out  []driverapi.Healed
		errs []error
	)
	for name, e := range t.parents {
		obj := "link " + name
		if !e.created || e.index == 0 || !(req.All || touched[e.index]) || (req.Skip != nil && req.Skip(obj)) {
			continue
		}
		l, err := t.ns.LinkByIndex(ctx, e.index)
		if errors.Is(err, osl.ErrLinkNotFound) || (err == nil && l.Name != name) {
			t.log.Warn("parent: a parent link cnm made was deleted; the interfaces of its networks went with it: delete and make those networks again",
				"parent", name)
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if l.Up {
			continue
		}
		if err := t.ns.LinkUp(ctx, l.Index, false); err != nil {
			errs = append(errs, err)
			continue
		}
		var network string
		for id := range e.users {
			network = id
			break
		}
		out = append(out, driverapi.Healed{NetworkID: network, Object: obj, Detail: "set up"})
	}
	return out, errors.Join(errs...)
}
