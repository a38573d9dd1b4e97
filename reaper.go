package cnm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/store"
)

// The reaper removes the interfaces of left and deleted endpoints in the
// background, so that Leave and Sandbox.Delete do not wait the 20-30 ms a
// link deletion costs the kernel, and so that an address is released only
// once no interface holds it:
//
//   - Leave takes the interface out of use at once (down, renamed out of the
//     way: see osl.RetireLink), then a background job has the driver delete
//     it.
//   - Sandbox.Delete drops the namespace; the kernel then destroys it with
//     its interfaces, unless a process, a socket or an open file still holds
//     it. The job waits for the interface to go (the driver watches the host
//     end of a veth pair) and has the driver delete it if it lingers.
//
// A deleted endpoint's addresses are released, and its record dropped, only
// when its last job has seen its interface gone. Until then its record says
// Deleting, and a restart finishes the job (restore.go).
type reaper struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	active int
	errs   []error      // of jobs that failed since the last settle
	stuck  []stuckLeave // removals that failed, retried by retryStuck
}

// stuckLeave is a removal whose every attempt failed: the interface may
// live on, so the endpoint's addresses stay reserved. It is tried again by
// the next Join or Delete of the endpoint, Delete of its network, and
// Settle; the next New takes over if the controller closes first.
type stuckLeave struct {
	ep   *Endpoint
	req  driverapi.LeaveRequest
	hold *Sandbox // kept open for the retry
}

func (r *reaper) init() { r.ctx, r.cancel = context.WithCancel(context.Background()) }

// run starts fn in the background.
func (r *reaper) run(fn func(ctx context.Context) error) {
	r.mu.Lock()
	r.active++
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		err := fn(r.ctx)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.active--
		if err != nil && r.ctx.Err() == nil {
			r.errs = append(r.errs, err)
		}
	}()
}

// stop cancels the jobs and waits for them to return; the namespaces that
// stuck removals kept open are closed (the next New takes over).
func (r *reaper) stop() {
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	stuck := r.stuck
	r.stuck = nil
	r.mu.Unlock()
	for _, s := range stuck {
		if s.hold != nil {
			s.hold.unhold()
		}
	}
}

// settle waits until no job is running and returns the errors of the jobs
// that failed since the last settle.
func (r *reaper) settle(ctx context.Context) error {
	for {
		r.mu.Lock()
		if r.active == 0 {
			errs := r.errs
			r.errs = nil
			r.mu.Unlock()
			return errors.Join(errs...)
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Settle waits until the interfaces of every endpoint that left or was
// deleted are gone from the kernel, and the addresses of deleted endpoints
// are released. Leave and Sandbox.Delete return before that (the kernel
// takes 20-30 ms per link, or longer while a process holds a deleted
// sandbox's namespace); a runtime rarely needs to wait, tests and orderly
// shutdowns do. It returns the errors of background removals that failed
// since the last Settle: their interfaces may still exist, so their
// addresses stay reserved, and the next [New] tries again.
func (c *Controller) Settle(ctx context.Context) error {
	err := c.reaper.settle(ctx)
	if rerr := c.retryStuck(ctx, func(*Endpoint) bool { return true }); rerr != nil {
		// What failed in the background and failed again now.
		return rerr
	}
	return err
}

// reapAttempts bounds the driver's tries at removing one interface; the
// waits between tries grow from reapBackoff.
const (
	reapAttempts = 3
	reapBackoff  = 20 * time.Millisecond
)

// reap removes one interface of ep in the background with the driver's
// Leave. hold, if set, is the sandbox whose namespace the driver needs: it
// stays open until the job ends. Once the interface is gone, a deleted
// endpoint is finished (finishDelete).
func (ep *Endpoint) reap(req driverapi.LeaveRequest, hold *Sandbox) {
	n := ep.nw
	c := n.ctrl
	ep.mu.Lock()
	ep.reaping++
	if ep.reaped == nil {
		ep.reaped = make(chan struct{})
	}
	ep.mu.Unlock()
	n.mu.Lock()
	n.reaping++
	n.mu.Unlock()
	if hold != nil {
		hold.hold()
	}
	c.reaper.run(func(ctx context.Context) error {
		err := c.step(ctx, stepReapDriver)
		if err == nil {
			err = retry(ctx, func() error { return n.driver.Leave(ctx, req) })
		}
		if err != nil {
			// The interface may live on: the addresses stay reserved, the
			// record stays, and a later call tries again.
			c.reaper.mu.Lock()
			c.reaper.stuck = append(c.reaper.stuck, stuckLeave{ep: ep, req: req, hold: hold})
			c.reaper.mu.Unlock()
		} else if hold != nil {
			hold.unhold()
		}
		ep.mu.Lock()
		ep.reaping--
		ep.stuck = ep.stuck || err != nil
		finish := ep.reaping == 0 && ep.deleteWhenReaped && !ep.stuck
		if ep.reaping == 0 {
			close(ep.reaped)
			ep.reaped = nil
		}
		ep.mu.Unlock()
		var ferr error
		if finish {
			ferr = ep.finishDelete(ctx)
		}
		n.mu.Lock()
		n.reaping--
		n.mu.Unlock()
		if n.global {
			c.global.dropIfOrphan(n)
		}
		if err != nil {
			return fmt.Errorf("remove interface %s of endpoint %q: %w", req.InterfaceName, ep.name, err)
		}
		return ferr
	})
}

// retryStuck tries the failed removals of the endpoints that match again,
// now, on the caller's path; a deleted endpoint whose interface is gone at
// last is finished. It returns the errors of those that fail again.
func (c *Controller) retryStuck(ctx context.Context, match func(*Endpoint) bool) error {
	r := &c.reaper
	r.mu.Lock()
	var todo []stuckLeave
	r.stuck = slices.DeleteFunc(r.stuck, func(s stuckLeave) bool {
		if match(s.ep) {
			todo = append(todo, s)
			return true
		}
		return false
	})
	r.mu.Unlock()
	var errs []error
	for _, s := range todo {
		ep, n := s.ep, s.ep.nw
		err := c.step(ctx, stepReapDriver)
		if err == nil {
			err = n.driver.Leave(ctx, s.req)
		}
		if err != nil {
			r.mu.Lock()
			r.stuck = append(r.stuck, s)
			r.mu.Unlock()
			errs = append(errs, fmt.Errorf("remove interface %s of endpoint %q: %w", s.req.InterfaceName, ep.name, err))
			continue
		}
		if s.hold != nil {
			s.hold.unhold()
		}
		ep.mu.Lock()
		ep.stuck = false
		finish := ep.reaping == 0 && ep.deleteWhenReaped
		ep.mu.Unlock()
		if finish {
			if err := ep.finishDelete(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// isStuck reports whether a removal of one of ep's interfaces failed.
func (ep *Endpoint) isStuck() bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.stuck
}

// retry runs fn until it succeeds, reapAttempts times at most.
func retry(ctx context.Context, fn func() error) error {
	wait := reapBackoff
	for i := 1; ; i++ {
		err := fn()
		if err == nil || i == reapAttempts || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 5
	}
}

// waitReaped waits until no interface of ep is being removed.
func (ep *Endpoint) waitReaped(ctx context.Context) error {
	ep.mu.Lock()
	ch := ep.reaped
	ep.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("endpoint %q: wait for its previous interface to go: %w", ep.name, ctx.Err())
	}
}

// finishDelete ends a deleted endpoint once none of its interfaces exists:
// its driver forgets it, its addresses are released and its record goes.
func (ep *Endpoint) finishDelete(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	if err := ep.removeFromDriver(ctx); err != nil {
		return err
	}
	if err := ep.nw.ctrl.save(ctx, store.Del(endpointKey(ep.nw.id, ep.id))); err != nil {
		// The record still claims the addresses: they stay reserved until
		// the next New finishes the deletion.
		return fmt.Errorf("delete endpoint %q: %w", ep.name, err)
	}
	n := ep.nw
	n.releaseAddress(ctx, n.ipv4, ep.ipv4)
	n.releaseAddress(ctx, n.ipv6, ep.ipv6)
	return nil
}

// retiredName returns a fresh name for an interface taken out of use.
func retiredName() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return retiredPrefix + hex.EncodeToString(b[:])
}

// retiredPrefix starts the name of every interface a leave took out of use.
const retiredPrefix = "cnmgone"

// hold keeps the sandbox's namespace open for a background job.
func (sb *Sandbox) hold() {
	sb.mu.Lock()
	sb.holds++
	sb.mu.Unlock()
}

// unhold ends a hold; the last one closes the namespace of a deleted
// sandbox.
func (sb *Sandbox) unhold() {
	sb.mu.Lock()
	sb.holds--
	closeNS := sb.holds == 0 && sb.deleted
	sb.mu.Unlock()
	if closeNS {
		sb.ns.Close()
	}
}
