package cnm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/google/uuid"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/resolver"
	"github.com/seed53641549/cnm/store"
)

// Sandbox is one isolated network stack: a network namespace with its
// interfaces, routes, hosts file and resolv.conf. It is safe for concurrent
// use; the joins and leaves of one sandbox are serialised, those of
// different sandboxes run in parallel.
type Sandbox struct {
	ctrl        *Controller
	id          string
	containerID string
	cfg         sandboxConfig
	ns          *osl.Namespace
	owned       bool   // cnm made the namespace: deleting drops it whole
	dir         string // run dir of the sandbox's files

	// joinMu serialises Join, Leave and Delete on this sandbox. Acquire it
	// before any Endpoint, Network or Controller lock.
	joinMu sync.Mutex

	// mu guards the fields below. Writers also hold joinMu.
	mu        sync.Mutex
	deleted   bool
	holds     int              // background jobs that need ns open (reaper.go)
	resolver  *resolver.Server // embedded DNS server (discovery.go); nil until the first join
	endpoints []*Endpoint      // in join order
	gw4, gw6  *Endpoint        // holders of the default routes
	// lb is the sandbox's part in load balancing (service.go); guarded by
	// ctrl.lbMu, not mu.
	lb sandboxLB
	// hostsWritten is the hosts file's content as last written.
	hostsWritten []byte
}

// ID returns the sandbox's ID, a UUID.
func (sb *Sandbox) ID() string { return sb.id }

// ContainerID returns the container ID the sandbox was made for.
func (sb *Sandbox) ContainerID() string { return sb.containerID }

// Name returns the container ID: sandboxes are named by their container.
func (sb *Sandbox) Name() string { return sb.containerID }

// String returns the container ID.
func (sb *Sandbox) String() string { return sb.containerID }

// Key returns the path of the sandbox's network namespace file: the file a
// runtime hands to its container (setns, or `nsenter --net=KEY`). For a
// [WithHostNetwork] sandbox it is the host namespace.
func (sb *Sandbox) Key() string { return sb.ns.Path() }

// HostsPath returns the path of the sandbox's hosts file.
func (sb *Sandbox) HostsPath() string { return sb.cfg.hostsPath }

// ResolvConfPath returns the path of the sandbox's resolv.conf.
func (sb *Sandbox) ResolvConfPath() string { return sb.cfg.resolv }

// Hostname returns the host name given with [WithHostname].
func (sb *Sandbox) Hostname() string { return sb.cfg.hostname }

// Endpoints returns the endpoints joined to the sandbox, in join order.
func (sb *Sandbox) Endpoints() []*Endpoint {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return slices.Clone(sb.endpoints)
}

// NewSandbox makes the sandbox of a container: a new network namespace with
// its loopback up, bind-mounted under the run dir (or the namespace given
// with [WithNetnsPath], or the host's with [WithHostNetwork]), and its hosts
// file and resolv.conf. Container IDs are unique per controller. On error
// nothing is left.
func (c *Controller) NewSandbox(ctx context.Context, containerID string, opts ...SandboxOption) (_ *Sandbox, retErr error) {
	defer func() {
		if retErr != nil {
			c.logOp("create sandbox", retErr, "container", containerID)
		}
	}()
	if err := validateName("container id", containerID); err != nil {
		return nil, err
	}
	var cfg sandboxConfig
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("sandbox %q: %w", containerID, err)
		}
	}
	if cfg.hostNetwork && cfg.netnsPath != "" {
		return nil, fmt.Errorf("%w: sandbox %q: host network and netns path %q exclude each other", ErrInvalid, containerID, cfg.netnsPath)
	}

	end, err := c.begin()
	if err != nil {
		return nil, err
	}
	defer end()
	c.mu.Lock()
	if c.containerIDs[containerID] {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: sandbox for container id %q", ErrExists, containerID)
	}
	c.containerIDs[containerID] = true
	c.mu.Unlock()
	defer func() {
		if retErr != nil {
			c.mu.Lock()
			delete(c.containerIDs, containerID)
			c.mu.Unlock()
		}
	}()

	sb := &Sandbox{ctrl: c, id: uuid.NewString(), containerID: containerID, cfg: cfg}
	sb.dir = filepath.Join(c.files, "sandboxes", sb.id)
	if sb.cfg.hostsPath == "" {
		sb.cfg.hostsPath = filepath.Join(sb.dir, "hosts")
	}
	if sb.cfg.resolv == "" {
		sb.cfg.resolv = filepath.Join(sb.dir, "resolv.conf")
	}
	err = c.run(ctx,
		// The namespace and the files do not depend on each other: making
		// them side by side hides the files' cost on a journaling
		// filesystem (a file creation costs 0.15-0.3 ms on this machine's
		// ext4) behind the namespace's.
		c.together(step{name: stepSandboxNamespace, do: sb.openNamespace, undo: func(context.Context) error { return sb.ns.Delete() }},
			step{name: stepSandboxFiles,
				do: func(context.Context) error {
					if err := os.Mkdir(sb.dir, 0o755); err != nil {
						return fmt.Errorf("make run directory: %w", err)
					}
					if err := sb.writeHosts(nil); err != nil {
						_ = os.RemoveAll(sb.dir)
						return err
					}
					if err := sb.writeResolvConf(); err != nil {
						_ = os.RemoveAll(sb.dir)
						return err
					}
					return nil
				},
				undo: func(context.Context) error { return os.RemoveAll(sb.dir) }}),
		step{name: stepSandboxCommit, do: func(ctx context.Context) error {
			return c.saveRecord(ctx, sandboxKey(sb.id), sb.record())
		}},
	)
	if err != nil {
		return nil, fmt.Errorf("sandbox %q: %w", containerID, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sandboxes[sb.id] = sb
	c.emit(Event{Type: EventSandboxCreated, SandboxID: sb.id, Detail: sb.containerID})
	return sb, nil
}

// openNamespace gives a new sandbox its namespace: the host's, the one
// given with WithNetnsPath (never the host's), or a new one.
func (sb *Sandbox) openNamespace(ctx context.Context) (err error) {
	c, cfg := sb.ctrl, sb.cfg
	switch {
	case cfg.hostNetwork:
		sb.ns, err = osl.OpenNamespace(ctx, c.hostNS.Path())
	case cfg.netnsPath != "":
		if sb.ns, err = osl.OpenNamespace(ctx, cfg.netnsPath); err != nil {
			return fmt.Errorf("%w: netns path %q: %w", ErrInvalid, cfg.netnsPath, err)
		}
		if sb.ns.ID() == c.hostNS.ID() {
			sb.ns.Close()
			return fmt.Errorf("%w: netns path %q is the controller's host namespace: use WithHostNetwork", ErrInvalid, cfg.netnsPath)
		}
	default:
		sb.ns, err = osl.NewNamespace(ctx, filepath.Join(c.files, "netns", sb.id))
		sb.owned = true
	}
	return err
}

// Delete removes the sandbox: every endpoint still joined leaves and is
// deleted, then the namespace is dropped whole, so the kernel removes its
// interfaces in one go instead of one link at a time. An adopted namespace
// ([WithNetnsPath], [WithHostNetwork]) is kept: cnm's interfaces are deleted
// from it instead.
//
// Delete returns once the sandbox is gone from cnm's view; the interfaces go
// in the background (see [Controller.Settle]). Each endpoint's addresses are
// released only once its interface is gone: a namespace that a process or
// an open file still holds outlives Delete with its interfaces, so after a
// grace period cnm deletes them itself.
//
// If publishing ports or dropping the namespace fails, Delete changes
// nothing and can be called again. Once begun past that, it runs to the end
// even if ctx is cancelled. Deleting a deleted sandbox is an error wrapping
// [ErrNotFound].
func (sb *Sandbox) Delete(ctx context.Context) (retErr error) {
	defer func() {
		if retErr != nil {
			sb.ctrl.logOp("delete sandbox", retErr, "sandbox", sb.id)
		}
	}()
	c := sb.ctrl
	end, err := c.begin()
	if err != nil {
		return err
	}
	defer end()
	ctx = context.WithoutCancel(ctx)
	sb.joinMu.Lock()
	defer sb.joinMu.Unlock()
	sb.mu.Lock()
	if sb.deleted {
		sb.mu.Unlock()
		return fmt.Errorf("%w: sandbox %q was deleted", ErrNotFound, sb.containerID)
	}
	eps := slices.Clone(sb.endpoints)
	sb.mu.Unlock()

	// busy keeps a concurrent Join or Delete of an endpoint out. No Join or
	// Leave of it is in flight: those hold sb.joinMu.
	for _, ep := range eps {
		ep.mu.Lock()
		ep.busy = true
		ep.mu.Unlock()
	}
	defer func() {
		for _, ep := range eps {
			ep.mu.Lock()
			ep.busy = false
			ep.mu.Unlock()
		}
	}()

	// 1. The steps that can fail, each undone if a later one does: no
	// endpoint changes state until the namespace file is gone.
	revoked := 0
	undo := func() {
		for _, ep := range eps[:revoked] {
			if err := ep.programExternal(ctx); err != nil {
				c.log.Warn("cnm: rollback: republish ports", "endpoint", ep.name, "err", err)
			}
		}
	}
	err = c.step(ctx, stepSandboxDetach)
	for _, ep := range eps {
		if err != nil {
			break
		}
		if err = ep.revokeExternal(ctx); err == nil {
			revoked++
		}
	}
	if err == nil {
		err = c.step(ctx, stepSandboxDeleteNamespace)
	}
	if err == nil {
		// The DNS server's sockets would keep the namespace alive.
		sb.stopResolver()
		// The namespace file goes, the namespace stays open: background
		// jobs may need it (reaper.go).
		if err = sb.ns.RemoveFile(); err != nil {
			if _, rerr := sb.updateResolver(eps); rerr != nil {
				c.log.Warn("cnm: rollback: restart the embedded DNS server", "sandbox", sb.containerID, "err", rerr)
			}
		}
	}
	if err != nil {
		undo()
		return fmt.Errorf("delete sandbox %q: %w", sb.containerID, err)
	}

	// 2. One write: the sandbox's record goes; its endpoints' records say
	// Deleting until their interfaces are gone. If it fails, the namespace
	// is gone all the same: the next New sees that and finishes.
	var errs []error
	ops := []store.Op{store.Del(sandboxKey(sb.id))}
	for _, ep := range eps {
		rec := ep.record(nil)
		rec.Deleting = true
		op, err := put(endpointKey(ep.nw.id, ep.id), rec)
		if err != nil {
			return err
		}
		ops = append(ops, op)
	}
	if err := c.save(ctx, ops...); err != nil {
		errs = append(errs, err)
	}

	// 3. The endpoints leave and are deleted; their interfaces go in the
	// background, their addresses after them.
	for _, ep := range eps {
		n := ep.nw
		caps := n.driver.Capability()
		ep.dropLB(ctx, sb)
		c.emit(Event{Type: EventLeft, NetworkID: n.id, EndpointID: ep.id, SandboxID: sb.id})
		ep.withdrawNames()
		ep.mu.Lock()
		ifName := ep.ifName
		ep.joinState = joinState{}
		ep.mu.Unlock()
		sb.drop(ep)
		req := driverapi.LeaveRequest{NetworkID: n.id, EndpointID: ep.id, Sandbox: sb.ns, InterfaceName: ifName}
		if caps.NoInterface {
			if err := n.driver.Leave(ctx, req); err != nil {
				errs = append(errs, fmt.Errorf("leave endpoint %q: %w", ep.name, err))
			}
			if err := ep.finishDelete(ctx); err != nil {
				errs = append(errs, err)
			}
			ep.forget(false)
			continue
		}
		var hold *Sandbox
		if caps.GoneWithSandbox {
			req.Sandbox, req.SandboxGone = nil, sb.owned
		} else {
			hold = sb // the driver deletes the interface inside the namespace
		}
		ep.mu.Lock()
		ep.deleteWhenReaped = true
		ep.mu.Unlock()
		ep.reap(req, hold)
		ep.forget(false)
	}

	sb.mu.Lock()
	sb.deleted = true
	sb.gw4, sb.gw6 = nil, nil
	closeNS := sb.holds == 0
	sb.mu.Unlock()
	if closeNS {
		sb.ns.Close()
	}
	if err := os.RemoveAll(sb.dir); err != nil {
		errs = append(errs, err)
	}
	c.mu.Lock()
	delete(c.sandboxes, sb.id)
	delete(c.containerIDs, sb.containerID)
	c.mu.Unlock()
	c.emit(Event{Type: EventSandboxDeleted, SandboxID: sb.id, Detail: sb.containerID})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete sandbox %q: %w", sb.containerID, err)
	}
	return nil
}

// drop takes a left endpoint out of the sandbox's list and its default
// route slots.
func (sb *Sandbox) drop(ep *Endpoint) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	sb.endpoints = slices.DeleteFunc(sb.endpoints, func(e *Endpoint) bool { return e == ep })
	if sb.gw4 == ep {
		sb.gw4 = nil
	}
	if sb.gw6 == ep {
		sb.gw6 = nil
	}
}
