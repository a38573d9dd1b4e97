package cnm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/watch"
)

// Healing: a controller watches its host namespace through netlink
// multicast groups (internal/watch: link changes, forwarding switches, and
// changes to its nftables table made by any socket but its firewall's) and,
// when something else deletes or changes one of its objects, asks its
// drivers to put it back (driverapi.Healer). Nothing is polled: with
// nothing changing, the watcher's goroutines sleep in a receive call.
//
// Changes are gathered for debounce, then handled in one heal, so a flushed
// ruleset that announces a hundred deletions costs one rebuild. A heal that
// fails is retried with backoff. An object healed limit times within
// window is in conflict with something that keeps changing it: cnm stops
// putting it back, says so (EventConflict, a warning), and leaves it alone
// until [Controller.Heal].

// Defaults of [WithHealLimit].
const (
	DefaultHealLimit  = 5
	DefaultHealWindow = 10 * time.Second
)

const (
	healDebounce   = 2 * time.Millisecond
	healRetryFirst = 10 * time.Millisecond
	healRetryMax   = 5 * time.Second
)

// WithHealLimit sets when cnm stops putting an object back: after limit
// heals of it within window (default [DefaultHealLimit] within
// [DefaultHealWindow]).
func WithHealLimit(limit int, window time.Duration) Option {
	return func(c *config) error {
		if limit < 1 {
			return fmt.Errorf("%w: heal limit %d: must be at least 1", ErrInvalid, limit)
		}
		if window <= 0 {
			return fmt.Errorf("%w: heal window %s: must be positive", ErrInvalid, window)
		}
		c.healLimit, c.healWindow = limit, window
		return nil
	}
}

// WithoutHealing turns the watchers off: nothing is put back when something
// else deletes or changes cnm's objects, until the next [New] (which
// restores them) or a call of [Controller.Heal].
func WithoutHealing() Option {
	return func(c *config) error {
		c.noHealing = true
		return nil
	}
}

// healer runs the watchers and the heals of one controller.
type healer struct {
	c      *Controller
	w      *watch.Watcher
	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once // stop

	mu        sync.Mutex
	fault     func() error // fails heals; tests only (export_test.go)
	pending   driverapi.HealRequest
	links     map[int]driverapi.LinkChange
	history   map[string][]time.Time // heals per object within the window
	conflicts map[string]bool
}

// startHealer starts watching the host namespace (unless WithoutHealing).
func (c *Controller) startHealer() error {
	h := &healer{c: c, kick: make(chan struct{}, 1), done: make(chan struct{}),
		links: map[int]driverapi.LinkChange{}, history: map[string][]time.Time{}, conflicts: map[string]bool{}}
	c.healer = h
	if c.cfg.noHealing {
		close(h.done)
		return nil
	}
	fd, err := c.hostNS.FD()
	if err != nil {
		return err
	}
	// The watchers' sockets belong to the namespace once made.
	defer closeFD(fd)
	w, err := watch.Start(watch.Config{NSFD: fd, Table: c.FirewallTable(), Own: c.firewall.OwnsPortID, RecvBuffer: c.cfg.watchBuffer}, h.seen)
	if err != nil {
		return fmt.Errorf("watch the host namespace: %w", err)
	}
	h.w = w
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go h.loop(ctx)
	return nil
}

// stop ends the watchers and waits for a heal in progress to end.
func (h *healer) stop() {
	if h == nil || h.w == nil {
		return
	}
	h.once.Do(func() {
		h.cancel()
		<-h.done
		_ = h.w.Close()
	})
}

// seen takes one change from a watcher.
func (h *healer) seen(ch watch.Change) {
	h.mu.Lock()
	switch ch.Kind {
	case watch.Link:
		// The link's latest state replaces the one gathered so far, but
		// an address deleted meanwhile stays reported: the kernel often
		// announces the link right after the address.
		gone := h.links[ch.Index].AddressGone
		h.links[ch.Index] = driverapi.LinkChange{Index: ch.Index, Name: ch.Name, Master: ch.Master, Up: ch.Up, Deleted: ch.Deleted,
			AddressGone: gone}
	case watch.Address:
		l, ok := h.links[ch.Index]
		if !ok {
			l = driverapi.LinkChange{Index: ch.Index, Up: true}
		}
		l.AddressGone = true
		h.links[ch.Index] = l
	case watch.Forwarding:
		if ch.On {
			h.mu.Unlock()
			return // only a switch turned off needs healing
		}
		h.pending.Forwarding = true
	case watch.Firewall:
		h.pending.Firewall = true
	case watch.Resync:
		h.pending.All = true
		h.c.log.Info("cnm: a watcher overran and missed changes; checking everything")
	}
	h.mu.Unlock()
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// take returns the gathered changes and starts gathering anew.
func (h *healer) take() (driverapi.HealRequest, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	req := h.pending
	for _, l := range h.links {
		req.Links = append(req.Links, l)
	}
	h.pending, h.links = driverapi.HealRequest{}, map[int]driverapi.LinkChange{}
	return req, req.All || req.Firewall || req.Forwarding || len(req.Links) > 0
}

// putBack returns a failed request's changes to the pending ones.
func (h *healer) putBack(req driverapi.HealRequest) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending.All = h.pending.All || req.All
	h.pending.Firewall = h.pending.Firewall || req.Firewall
	h.pending.Forwarding = h.pending.Forwarding || req.Forwarding
	for _, l := range req.Links {
		if newer, ok := h.links[l.Index]; ok {
			newer.AddressGone = newer.AddressGone || l.AddressGone
			l = newer
		}
		h.links[l.Index] = l
	}
}

// loop heals what the watchers report, until ctx ends.
func (h *healer) loop(ctx context.Context) {
	defer close(h.done)
	retry := healRetryFirst
	var wake <-chan time.Time
	for {
		if wake != nil {
			// Backing off: changes meanwhile wait in pending.
			select {
			case <-ctx.Done():
				return
			case <-wake:
				wake = nil
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-h.kick:
			}
		}
		select { // let a burst of changes arrive
		case <-ctx.Done():
			return
		case <-time.After(healDebounce):
		}
		req, ok := h.take()
		if !ok {
			continue
		}
		if err := h.heal(ctx, req); err != nil {
			if ctx.Err() != nil {
				return
			}
			h.c.emit(Event{Type: EventHealFailed, Detail: fmt.Sprintf("%v (retry in %s)", err, retry)})
			h.putBack(req)
			wake = time.After(retry)
			retry = min(2*retry, healRetryMax)
			continue
		}
		retry = healRetryFirst
	}
}

// heal asks every driver that heals to check req, skipping the objects in
// conflict, and reports what they put back.
func (h *healer) heal(ctx context.Context, req driverapi.HealRequest) error {
	h.mu.Lock()
	fault := h.fault
	h.mu.Unlock()
	if fault != nil {
		if err := fault(); err != nil {
			return err
		}
	}
	req.Skip = h.inConflict
	var errs []error
	c := h.c
	for _, name := range c.drivers.Names() {
		d, _ := c.drivers.Driver(name)
		hd, ok := d.(driverapi.Healer)
		if !ok {
			continue
		}
		healed, err := hd.Heal(ctx, req)
		for _, x := range healed {
			h.record(x)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("driver %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (h *healer) inConflict(object string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conflicts[object]
}

// record reports one heal, and a conflict if it was one too many.
func (h *healer) record(x driverapi.Healed) {
	c := h.c
	now := time.Now()
	h.mu.Lock()
	hist := slices.DeleteFunc(h.history[x.Object], func(t time.Time) bool { return now.Sub(t) > c.healWindow() })
	hist = append(hist, now)
	h.history[x.Object] = hist
	conflict := len(hist) >= c.healLimit()
	if conflict {
		h.conflicts[x.Object] = true
		delete(h.history, x.Object)
	}
	h.mu.Unlock()
	c.emit(Event{Type: EventHealed, NetworkID: x.NetworkID, Object: x.Object, Detail: x.Detail})
	if conflict {
		c.emit(Event{Type: EventConflict, NetworkID: x.NetworkID, Object: x.Object, Detail: fmt.Sprintf(
			"put back %d times within %s: something keeps changing it, and cnm leaves it alone from now on; "+
				"stop what changes it, then call Controller.Heal", len(hist), c.healWindow())})
	}
}

func (c *Controller) healLimit() int {
	if c.cfg.healLimit > 0 {
		return c.cfg.healLimit
	}
	return DefaultHealLimit
}

func (c *Controller) healWindow() time.Duration {
	if c.cfg.healWindow > 0 {
		return c.cfg.healWindow
	}
	return DefaultHealWindow
}

// Heal checks every object of the controller in the host namespace
// (bridges, ports, firewall rules, forwarding) and puts back what differs
// from its records, now, including objects it had stopped healing because
// of a conflict: the way to resolve one, once what kept changing the
// object is stopped. It returns what it could not put back.
func (c *Controller) Heal(ctx context.Context) error {
	end, err := c.begin()
	if err != nil {
		return err
	}
	defer end()
	h := c.healer
	h.mu.Lock()
	h.conflicts, h.history = map[string]bool{}, map[string][]time.Time{}
	h.mu.Unlock()
	return h.heal(ctx, driverapi.HealRequest{All: true})
}
