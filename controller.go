package cnm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/portalloc"
	"github.com/seed53641549/cnm/store"
)

// Controller manages the networks, endpoints and sandboxes of one host. Make
// one per host namespace with [New]. It is safe for concurrent use.
//
// Lock order: Sandbox.joinMu, then Endpoint.mu, then Network.mu, then
// Controller.mu. Locks are never held across kernel work except joinMu,
// which serialises the joins and leaves of one sandbox only.
type Controller struct {
	owner    mark.Owner // persistent identity, carried by every mark
	cfg      config
	log      *slog.Logger // WithLogger; discards by default
	files    string       // the controller's own folder in the run dir
	hostNS   *osl.Namespace
	firewall *firewall.Firewall
	ports    *portalloc.Allocator // host ports of published ports
	drivers  driverapi.Registry
	ipams    ipam.Registry // IPAM drivers by name: "default", "null"
	// store holds what outlives a reboot (networks), in the data dir;
	// runtime holds what a reboot ends (sandboxes, endpoints), in the run
	// dir, which is a tmpfs on most hosts, so that writing it on every
	// container start costs no disk flush.
	store   store.Store
	runtime store.Store

	// global is the controller's part in a multi-host cluster (global.go);
	// nil without WithGlobalStore.
	global *globalPlane

	events eventBus // Events (events.go)
	healer *healer  // watchers and heals (heal.go)

	// egressMu serialises the making of the gateway bridge network
	// (egress.go).
	egressMu sync.Mutex

	// lbMu guards the load-balancing state of networks and sandboxes
	// (service.go).
	lbMu sync.Mutex

	// faultHook fails a chosen step; set only by tests (export_test.go),
	// while background work (the reaper) may read it.
	faultHook atomic.Pointer[func(step string) error]

	// reaper removes left and deleted endpoints' interfaces in the
	// background, and releases addresses once their interfaces are gone.
	reaper reaper

	// opMu is held for reading by every operation in flight and for writing
	// by Close, so Close waits for them and none starts afterwards. An
	// operation takes it once, at its entry point, never again inside.
	opMu sync.RWMutex

	// mu guards the fields below.
	mu           sync.Mutex
	closed       bool
	networks     map[string]*Network // by ID, committed only
	networkNames map[string]bool     // taken names, in-flight creations included
	sandboxes    map[string]*Sandbox // by ID, committed only
	containerIDs map[string]bool     // taken container IDs, in-flight included
}

// New makes a controller: it opens its stores in the data and run
// directories (failing at once if another controller holds them), opens the
// host namespace, ensures the controller's nftables tables, registers the
// built-in drivers (bridge, null, host, macvlan, ipvlan) and IPAM drivers
// (default, null), then restores and reconciles what the stores record.
// Close it when done; Close leaves the data plane (bridges, sandboxes)
// running for the next New.
//
// Several controllers may share one host namespace, each with its own data
// and run dirs: each marks what it makes with its own identity (see
// [Controller.ID]) and never removes what carries another's.
//
// cnm needs Linux: on any other system New returns an error wrapping
// [ErrNotSupported].
func New(opts ...Option) (_ *Controller, retErr error) {
	if runtime.GOOS != "linux" {
		return nil, fmt.Errorf("cnm needs Linux (network namespaces, netlink, nftables), not %s: %w", runtime.GOOS, ErrNotSupported)
	}
	cfg := config{dataDir: DefaultDataDir, runDir: DefaultRunDir}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	ctx := context.Background()
	// The store first: a second controller on the same data dir fails here,
	// before it touches anything.
	st, err := store.Open(cfg.dataDir)
	if err != nil {
		return nil, fmt.Errorf("data dir %q: %w", cfg.dataDir, err)
	}
	defer func() {
		if retErr != nil {
			st.Close()
		}
	}()
	owner, err := loadOwner(ctx, st)
	if err != nil {
		return nil, fmt.Errorf("data dir %q: %w", cfg.dataDir, err)
	}
	rst, err := store.OpenRuntime(cfg.runDir, "")
	if err != nil {
		return nil, fmt.Errorf("run dir %q: %w", cfg.runDir, err)
	}
	defer func() {
		if retErr != nil {
			rst.Close()
		}
	}()
	hostPath := cfg.hostNS
	if hostPath == "" {
		hostPath = "/proc/self/ns/net"
	}
	hostNS, err := osl.OpenNamespace(ctx, hostPath)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, osl.ErrNotNamespace) {
		return nil, fmt.Errorf("%w: host namespace %q: %w", ErrInvalid, hostPath, err)
	}
	if err != nil { // out of file descriptors, say: not the caller's input
		return nil, fmt.Errorf("host namespace %q: %w", hostPath, err)
	}
	defer func() {
		if retErr != nil {
			hostNS.Close()
		}
	}()
	files := filepath.Join(cfg.runDir, owner.Dir())
	for _, d := range []string{filepath.Join(files, "netns"), filepath.Join(files, "sandboxes")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("make directory %s: %w", d, err)
		}
	}
	fd, err := hostNS.FD()
	if err != nil {
		return nil, err
	}
	fw, err := firewall.New(ctx, fd, owner.Table())
	closeFD(fd)
	if err != nil {
		return nil, fmt.Errorf("set up firewall in %s: %w", hostPath, err)
	}
	defer func() {
		if retErr != nil {
			fw.Close()
		}
	}()
	alloc, err := ipam.New(ipam.Config{DefaultPools: cfg.defaultPools})
	if err != nil {
		return nil, fmt.Errorf("default address pools: %w", err)
	}
	ports, err := portalloc.New(portalloc.Config{HostNS: hostNS, Ephemeral: cfg.ephemeralPorts})
	if err != nil {
		return nil, fmt.Errorf("ephemeral ports: %w", err)
	}
	c := &Controller{
		ports:        ports,
		owner:        owner,
		cfg:          cfg,
		log:          newLogger(cfg),
		files:        files,
		hostNS:       hostNS,
		firewall:     fw,
		store:        st,
		runtime:      rst,
		networks:     map[string]*Network{},
		networkNames: map[string]bool{},
		sandboxes:    map[string]*Sandbox{},
		containerIDs: map[string]bool{},
	}
	c.reaper.init()
	if err := registerBuiltinDrivers(&c.drivers, builtinConfig{hostNS: hostNS, firewall: fw, owner: owner, leaveHostSysctls: cfg.leaveHostSysctls}); err != nil {
		return nil, err
	}
	for _, name := range c.drivers.Names() {
		if d, _ := c.drivers.Driver(name); d != nil {
			if ls, ok := d.(driverapi.LogSetter); ok {
				ls.SetLogger(c.log)
			}
		}
	}
	if err := ipam.RegisterBuiltins(&c.ipams, alloc); err != nil {
		return nil, err
	}
	if err := c.registerPlugins(ctx); err != nil {
		return nil, err
	}
	if cfg.global != nil {
		if c.global, err = c.openGlobal(ctx); err != nil {
			return nil, err
		}
	}
	if err := c.restore(ctx); err != nil {
		c.closeHandles()
		return nil, fmt.Errorf("restore state from %s: %w", cfg.dataDir, err)
	}
	if err := c.startHealer(); err != nil {
		c.closeHandles()
		return nil, err
	}
	if c.global != nil {
		// Restore asked again for every address the records hold: the
		// blocks of the last run that none of them is in go back.
		if err := c.global.addrs.cur().ReturnEmptyBlocks(ctx); err != nil {
			c.log.Warn("cnm: global store: give back empty address blocks", "err", err)
		}
		if err := c.global.sweepOwn(ctx); err != nil {
			c.log.Warn("cnm: global store: remove records of deleted endpoints and fences", "err", err)
		}
		if err := c.global.sweepReservations(ctx); err != nil {
			c.log.Warn("cnm: global store: release pools and VXLAN IDs left by a crash", "err", err)
		}
		c.global.republish()
		c.global.start()
	}
	return c, nil
}

// loadOwner returns the controller identity the data dir records, making
// one the first time.
func loadOwner(ctx context.Context, st store.Store) (mark.Owner, error) {
	kv, err := st.Get(ctx, keyOwner)
	if errors.Is(err, store.ErrNotFound) {
		owner := mark.NewOwner()
		if err := st.Txn(ctx, store.Put(keyOwner, []byte(owner))); err != nil {
			return "", fmt.Errorf("record controller identity: %w", err)
		}
		return owner, nil
	}
	if err != nil {
		return "", err
	}
	owner, err := mark.Parse(string(kv.Value))
	if err != nil {
		return "", fmt.Errorf("%w: %w", store.ErrCorrupt, err)
	}
	return owner, nil
}

// ID returns the controller's identity: 16 hex digits, made when its data
// dir was first used and the same at every New on it. Everything the
// controller makes carries it: bridges the alias "cnm:<id>:<network id>",
// its nftables tables the name "cnm-<id>" ([Controller.FirewallTable]), its
// files the run dir folder "cnm-<id>". Restore removes nothing that does not
// carry it.
func (c *Controller) ID() string { return string(c.owner) }

// FirewallTable returns the name of the controller's nftables table
// ("cnm-" and its ID) in its host namespace.
func (c *Controller) FirewallTable() string { return c.owner.Table() }

// HostNamespace returns the path of the controller's host namespace.
func (c *Controller) HostNamespace() string { return c.hostNS.Path() }

// RunDir returns the controller's run directory.
func (c *Controller) RunDir() string { return c.cfg.runDir }

// Close stops the controller: it waits for operations in flight to finish,
// then releases its file descriptors and sockets. It does not touch the data
// plane: networks and sandboxes keep working. Afterwards every operation
// that would change something (create, delete, join, leave) fails with
// [ErrClosed]; lookups and Info keep answering from memory. Safe to call
// twice.
func (c *Controller) Close() error {
	c.healer.stop() // a heal in progress ends first
	if c.global != nil {
		// Its watches begin operations: they end before Close waits for
		// the operations in flight.
		c.global.stop()
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	sandboxes := c.sandboxListLocked()
	c.mu.Unlock()
	c.closePlugins()
	c.events.close()
	// Background removals stop; the records they would have finished stay,
	// and the next New finishes them.
	c.reaper.stop()
	var gerr error
	if c.global != nil {
		gerr = c.global.closeStore() // after the reaper: it releases addresses
	}
	for _, sb := range sandboxes {
		// Name service stops with the controller; the next New starts it
		// again. The data plane keeps running.
		sb.stopResolver()
		sb.closeServices()
		sb.ns.Close()
	}
	return errors.Join(gerr, c.store.Close(), c.runtime.Close(), c.firewall.Close(), c.hostNS.Close())
}

// closeHandles closes what a failed New opened beyond the store, firewall
// and host namespace (which New's own rollback closes).
func (c *Controller) closeHandles() {
	if c.global != nil {
		c.global.stop()
		_ = c.global.closeStore()
	}
	for _, sb := range c.sandboxes {
		sb.stopResolver()
		sb.closeServices()
		sb.ns.Close()
	}
}

// begin starts an operation: it fails with ErrClosed after Close, and
// otherwise returns the function that ends the operation.
func (c *Controller) begin() (end func(), err error) {
	c.opMu.RLock()
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		c.opMu.RUnlock()
		return nil, ErrClosed
	}
	return c.opMu.RUnlock, nil
}

// Networks returns the controller's networks, sorted by name.
func (c *Controller) Networks() []*Network {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Network, 0, len(c.networks))
	for _, n := range c.networks {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// NetworkByName returns the network called name, or an error wrapping
// [ErrNotFound].
func (c *Controller) NetworkByName(name string) (*Network, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.networks {
		if n.name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("%w: network %q", ErrNotFound, name)
}

// NetworkByID returns the network with that ID, or an error wrapping
// [ErrNotFound].
func (c *Controller) NetworkByID(id string) (*Network, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.networks[id]; ok {
		return n, nil
	}
	return nil, fmt.Errorf("%w: network id %q", ErrNotFound, id)
}

// Sandboxes returns the controller's sandboxes, sorted by container ID.
func (c *Controller) Sandboxes() []*Sandbox {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sandboxListLocked()
}

func (c *Controller) sandboxListLocked() []*Sandbox {
	out := make([]*Sandbox, 0, len(c.sandboxes))
	for _, s := range c.sandboxes {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].containerID < out[j].containerID })
	return out
}

// SandboxByID returns the sandbox with that ID, or an error wrapping
// [ErrNotFound].
func (c *Controller) SandboxByID(id string) (*Sandbox, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.sandboxes[id]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("%w: sandbox id %q", ErrNotFound, id)
}

// SandboxByContainerID returns the sandbox of a container, or an error
// wrapping [ErrNotFound].
func (c *Controller) SandboxByContainerID(containerID string) (*Sandbox, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.sandboxes {
		if s.containerID == containerID {
			return s, nil
		}
	}
	return nil, fmt.Errorf("%w: sandbox of container %q", ErrNotFound, containerID)
}
