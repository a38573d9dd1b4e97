package cnm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/google/uuid"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
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
	endpoints []*Endpoint // in join order
	gw4, gw6  *Endpoint   // holders of the default routes
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
	sb.dir = filepath.Join(c.cfg.runDir, "sandboxes", sb.id)
	if err := c.step(ctx, stepSandboxNamespace); err != nil {
		return nil, err
	}
	switch {
	case cfg.hostNetwork:
		sb.ns, err = osl.OpenNamespace(ctx, c.hostNS.Path())
	case cfg.netnsPath != "":
		sb.ns, err = osl.OpenNamespace(ctx, cfg.netnsPath)
		if err != nil {
			err = fmt.Errorf("%w: netns path %q: %w", ErrInvalid, cfg.netnsPath, err)
		}
	default:
		sb.ns, err = osl.NewNamespace(ctx, filepath.Join(c.cfg.runDir, "netns", sb.id))
		sb.owned = true
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox %q: %w", containerID, err)
	}
	defer func() {
		if retErr != nil {
			if err := sb.ns.Delete(); err != nil {
				slog.Warn("cnm: rollback: delete namespace", "sandbox", containerID, "err", err)
			}
		}
	}()

	if err := c.step(ctx, stepSandboxFiles); err != nil {
		return nil, err
	}
	if err := os.Mkdir(sb.dir, 0o755); err != nil {
		return nil, fmt.Errorf("sandbox %q: make run directory: %w", containerID, err)
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(sb.dir)
		}
	}()
	if sb.cfg.hostsPath == "" {
		sb.cfg.hostsPath = filepath.Join(sb.dir, "hosts")
	}
	if sb.cfg.resolv == "" {
		sb.cfg.resolv = filepath.Join(sb.dir, "resolv.conf")
	}
	if err := sb.writeHosts(nil); err != nil {
		return nil, fmt.Errorf("sandbox %q: %w", containerID, err)
	}
	if err := sb.writeResolvConf(); err != nil {
		return nil, fmt.Errorf("sandbox %q: %w", containerID, err)
	}

	if err := c.step(ctx, stepSandboxCommit); err != nil {
		return nil, err
	}
	if err := c.saveRecord(ctx, sandboxKey(sb.id), sb.record()); err != nil {
		return nil, fmt.Errorf("sandbox %q: %w", containerID, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sandboxes[sb.id] = sb
	return sb, nil
}

// Delete removes the sandbox: every endpoint still joined leaves and is
// deleted (its addresses released), then the namespace is dropped whole, so
// the kernel removes its interfaces in one go instead of one link at a time.
// Call it after the container's processes have exited: a namespace that a
// process (or an open file) still holds outlives Delete, with its interfaces.
// An adopted namespace ([WithNetnsPath], [WithHostNetwork]) is kept: cnm's
// interfaces are deleted from it one by one instead.
//
// Once begun, Delete runs to the end even if ctx is cancelled. If a driver
// fails to detach an endpoint, Delete stops there and returns the error; the
// sandbox stays, with the endpoints not yet detached, and Delete can be
// called again. Deleting a deleted sandbox is an error wrapping [ErrNotFound].
func (sb *Sandbox) Delete(ctx context.Context) error {
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

	// No record changes until the namespace is gone: a crash before that
	// leaves records that still match the kernel (the interfaces go only
	// with the namespace), and one after it leaves records of a namespace
	// that is gone, which the next New removes.
	var (
		errs []error // errors that do not stop the deletion
		gone []*Endpoint
	)
	// busy keeps a concurrent Join or Delete of an endpoint out while it is
	// between detached and forgotten. No Join or Leave of it is in flight:
	// those hold sb.joinMu.
	defer func() {
		for _, ep := range eps {
			ep.mu.Lock()
			ep.busy = false
			ep.mu.Unlock()
		}
	}()
	for _, ep := range eps {
		ep.mu.Lock()
		ep.busy = true
		ep.mu.Unlock()
		if err := sb.detachForDelete(ctx, ep); err != nil {
			return fmt.Errorf("delete sandbox %q: %w", sb.containerID, err)
		}
		if err := ep.removeFromDriver(ctx); err != nil {
			errs = append(errs, err) // left, not deleted: ep.Delete can retry
			continue
		}
		gone = append(gone, ep)
	}
	if err := c.step(ctx, stepSandboxDeleteNamespace); err != nil {
		return err
	}
	if err := sb.ns.Delete(); err != nil {
		return fmt.Errorf("delete sandbox %q: %w", sb.containerID, err)
	}
	// One write for the sandbox and its endpoints.
	ops := []store.Op{store.Del(sandboxKey(sb.id))}
	for _, ep := range gone {
		ops = append(ops, store.Del(endpointKey(ep.nw.id, ep.id)))
	}
	if err := c.save(ctx, ops...); err != nil {
		// The endpoints keep their addresses: the records still claim them,
		// until the next New sees the namespace gone and removes them.
		errs = append(errs, err)
	} else {
		for _, ep := range gone {
			ep.forget(ctx)
		}
	}
	sb.mu.Lock()
	sb.deleted = true
	sb.gw4, sb.gw6 = nil, nil
	sb.mu.Unlock()
	if err := os.RemoveAll(sb.dir); err != nil {
		errs = append(errs, err)
	}
	c.mu.Lock()
	delete(c.sandboxes, sb.id)
	delete(c.containerIDs, sb.containerID)
	c.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete sandbox %q: %w", sb.containerID, err)
	}
	return nil
}

// detachForDelete takes one endpoint out of a sandbox being deleted. For a
// namespace cnm made, the driver deletes no link: dropping the namespace
// removes them all at once. The caller holds sb.joinMu.
func (sb *Sandbox) detachForDelete(ctx context.Context, ep *Endpoint) error {
	n := ep.nw
	if err := ep.revokeExternal(ctx); err != nil {
		return err
	}
	err := sb.ctrl.step(ctx, stepSandboxDetach)
	if err == nil {
		err = n.driver.Leave(ctx, driverapi.LeaveRequest{NetworkID: n.id, EndpointID: ep.id, Sandbox: sb.ns, SandboxGone: sb.owned})
	}
	if err != nil {
		_ = ep.programExternal(ctx)
		return fmt.Errorf("leave endpoint %q: %w", ep.name, err)
	}
	sb.drop(ep)
	ep.mu.Lock()
	ep.joinState = joinState{}
	ep.mu.Unlock()
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
