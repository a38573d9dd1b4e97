package keys

import (
	"context"
	"errors"
	"time"

	"github.com/seed53641549/cnm/errdefs"
)

// RunRotation rotates, until ctx ends, the key set of every network that
// networks returns (the encrypted networks this host knows) once its
// newest key is Config.Rotate old: every Config.Check it reads each set
// and rotates those that are due. Any number of hosts may run it on the
// same networks: each rotation is a compare and swap from the primary it
// read, so one host rotates and the others find it done. A network
// without a set is skipped; failures are logged to Config.Logger and
// retried at the next check.
//
// Hosts decide by their own clocks, so the fastest clock among them sets
// the pace.
func (r *Ring) RunRotation(ctx context.Context, networks func() []string) {
	for {
		for _, id := range networks() {
			if ctx.Err() != nil {
				return
			}
			r.rotateIfDue(ctx, id)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(r.cfg.Check):
		}
	}
}

// rotateIfDue rotates network id's set if its newest key is Config.Rotate
// old.
func (r *Ring) rotateIfDue(ctx context.Context, id string) {
	s, err := r.Get(ctx, id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return
	}
	if err != nil {
		if ctx.Err() == nil {
			r.cfg.Logger.Warn("encryption keys: rotation: cannot read the key set", "network", id, "error", err)
		}
		return
	}
	if r.cfg.Now().Sub(s.Rotated()) < r.cfg.Rotate {
		return
	}
	n, wrote, err := r.rotate(ctx, id, s.Primary)
	switch {
	case err != nil && ctx.Err() == nil:
		r.cfg.Logger.Warn("encryption keys: rotation failed", "network", id, "from", s.Primary, "error", err)
	case wrote:
		r.cfg.Logger.Info("encryption keys: rotated", "network", id, "primary", n.Primary, "revision", n.Revision)
	}
}
