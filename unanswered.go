package cnm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// A global network's commit that etcd did not answer (a timeout, a cut
// connection) may have been applied, or may still be: a request can reach
// etcd after the client gave up on it. A fence settles it. The commit's
// transaction requires that the network's fence key does not exist; the
// fence is written only if the network's record does not exist. Once one
// of the two transactions succeeded, the other never can: the network is
// made, or it never will be. Fences are written under the host's lease and
// deleted at its next start (sweepOwn), when no request of the last run can
// be in flight any more.

// errCommitUnknown: etcd did not answer a global network's commit, nor the
// fence that would have settled it. The network's subnets and VXLAN ID
// stay reserved (until this host's next start, if the network never
// lands), and the commit is retracted in the background (retract).
var errCommitUnknown = errors.New("global store did not answer")

// settleCommit finishes commitNetwork after err, a failure that is not an
// answer: the network is made if its record is there; it fails for good
// if the fence goes in first; otherwise it fails with errCommitUnknown and
// retracts the commit once etcd answers.
func (g *globalPlane) settleCommit(ctx context.Context, n *Network, err error) error {
	ctx = context.WithoutCancel(ctx) // bounded by the store's request timeout
	landed, ferr := g.fence(ctx, n.id)
	if ferr == nil && landed {
		kv, gerr := g.kv.Get(ctx, gNetworkKey(n.id))
		if gerr == nil {
			n.globalRev = kv.Revision // it was applied: the network is made
			return nil
		}
		ferr = gerr
	}
	g.making.Delete(n.id)
	if ferr == nil {
		return fmt.Errorf("record global network: %w", err) // it never will be
	}
	if !g.retractLater(n.name, n.id) {
		ferr = errors.Join(ferr, fmt.Errorf("and the controller is closing: the network stays if it was recorded"))
	}
	return fmt.Errorf("%w: record global network: %w (whether it was recorded is not known: %v)", errCommitUnknown, err, ferr)
}

// fence writes network id's fence unless its record exists, and reports
// whether it does (the commit was applied).
func (g *globalPlane) fence(ctx context.Context, id string) (landed bool, err error) {
	_, err = g.kv.TxnIf(ctx, []etcdstore.Cond{{Key: gNetworkKey(id)}},
		etcdstore.Op{Key: gFenceKey(id), Lease: g.currentLease()})
	if errors.Is(err, store.ErrConflict) {
		return true, nil
	}
	return false, err
}

// retract settles an unanswered commit once etcd answers, retrying until it
// does or the controller closes: a fence if the record is not there, else
// the record's and the name's deletion, unless some host has an endpoint
// on the network by then: then it stays, a network like any other, and
// this host takes it (its watch may have skipped the record while the
// network was being made here).
func (g *globalPlane) retract(name, id string) {
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		landed, err := g.fence(g.ctx, id)
		if err == nil && !landed {
			return
		}
		if err == nil {
			err = g.retractOnce(g.ctx, name, id)
			if err == nil {
				return
			}
		}
		if errors.Is(err, store.ErrConflict) {
			kv, gerr := g.kv.Get(g.ctx, gNetworkKey(id))
			if errors.Is(gerr, store.ErrNotFound) {
				return // deleted meanwhile
			}
			eps, lerr := g.kv.List(g.ctx, gEndpoints+id+"/")
			if gerr == nil && lerr == nil && len(eps) > 0 {
				g.c.log.Warn("cnm: a global network whose creation was not answered is in use: it stays", "network", name, "id", id)
				if err := g.addNetwork(g.ctx, kv, false); err != nil {
					g.c.log.Warn("cnm: take global network", "network", name, "err", err)
				}
				return
			}
		}
		select {
		case <-g.ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// retractOnce deletes network id's record and its name, if the name is
// still its, in one transaction conditioned on no endpoint on it.
func (g *globalPlane) retractOnce(ctx context.Context, name, id string) error {
	conds := []etcdstore.Cond{{Key: gEndpoints + id + "/", Prefix: true}}
	ops := []etcdstore.Op{{Key: gNetworkKey(id), Delete: true}}
	kv, err := g.kv.Get(ctx, gNameKey(name))
	switch {
	case err == nil && string(kv.Value) == id:
		conds = append(conds, etcdstore.Cond{Key: gNameKey(name), Revision: kv.Revision})
		ops = append(ops, etcdstore.Op{Key: gNameKey(name), Delete: true})
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return err
	}
	_, err = g.kv.TxnIf(ctx, conds, ops...)
	return err
}

// retractLater runs retract in a goroutine that stop waits for, unless
// the plane is stopping; it reports whether it runs.
func (g *globalPlane) retractLater(name, id string) bool {
	g.bgMu.Lock()
	defer g.bgMu.Unlock()
	if g.ctx.Err() != nil {
		return false
	}
	g.wg.Add(1)
	g.retracting.Add(1)
	go func() {
		defer g.wg.Done()
		defer g.retracting.Add(-1)
		g.retract(name, id)
	}()
	return true
}
