package cnm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/remote"
	"github.com/seed53641549/cnm/ipam"
	ipamremote "github.com/seed53641549/cnm/ipam/remote"
	"github.com/seed53641549/cnm/plugin"
)

// Network plugins: drivers and IPAM drivers served by separate processes
// over Docker's plugin protocol (drivers/remote, ipam/remote).
//
// A network whose driver name is not a built-in driver's is looked up as a
// plugin, the way Docker does: a socket <name>.sock in the socket
// directories, else a <name>.spec or <name>.json in the spec directories
// ([WithPluginDirs]). [WithPlugin] names a plugin at an address instead.
// The plugin is activated (handshake and capabilities) when it is first
// used and registered under its name for the controller's lifetime.
//
// Networks of a plugin are recorded like any other. When the controller
// restarts, they are taken back without asking the plugin, so a plugin that
// is down does not stop New; calls to it fail with an error naming it
// (wrapping [plugin.ErrUnavailable]) until it is back, then work again.

// pluginConfig is the plugin part of the controller's config.
type pluginConfig struct {
	socketDirs []string          // WithPluginDirs; nil: Docker's
	specDirs   []string          // WithPluginDirs; nil: Docker's
	dirsSet    bool              // WithPluginDirs was given
	addrs      map[string]string // WithPlugin: name -> address
	timeout    time.Duration     // WithPluginTimeout; zero: plugin.DefaultTimeout
	state      *pluginState      // made by registerPlugins
}

// pluginState is what the controller keeps of its plugins.
type pluginState struct {
	disc    plugin.Discovery
	timeout time.Duration

	// mu guards clients.
	mu      sync.Mutex
	clients []*plugin.Client
}

// WithPluginDirs sets where plugins are looked up by name: unix sockets
// <name>.sock (or <name>/<name>.sock) in socketDirs, then <name>.spec and
// <name>.json files in specDirs. Default: Docker's directories,
// /run/docker/plugins for sockets, /etc/docker/plugins then
// /usr/lib/docker/plugins for spec files. Each directory must be an
// absolute path; an empty list looks nowhere.
func WithPluginDirs(socketDirs, specDirs []string) Option {
	return func(c *config) error {
		for _, d := range slices.Concat(socketDirs, specDirs) {
			if err := absDir("plugin dir", d); err != nil {
				return err
			}
		}
		c.plugins.socketDirs = append([]string{}, socketDirs...)
		c.plugins.specDirs = append([]string{}, specDirs...)
		c.plugins.dirsSet = true
		return nil
	}
}

// WithPlugin registers the plugin called name at addr ("unix:///path",
// an absolute socket path, or "tcp://host:port") as a network driver and as
// an IPAM driver of that name, whichever it implements (it is asked at
// first use). A name that is not a valid file name, or an address that
// cannot be parsed, is an error wrapping [ErrInvalid] from [New]; a name a
// built-in driver has is an error wrapping [ErrExists].
func WithPlugin(name, addr string) Option {
	return func(c *config) error {
		if err := plugin.ValidName(name); err != nil {
			return err
		}
		if _, err := plugin.ParseAddress(name, addr); err != nil {
			return err
		}
		if c.plugins.addrs == nil {
			c.plugins.addrs = map[string]string{}
		}
		c.plugins.addrs[name] = addr
		return nil
	}
}

// WithPluginTimeout bounds each call to a plugin, retries included. Default
// [plugin.DefaultTimeout] (30 s). It must be positive.
func WithPluginTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("%w: plugin timeout %v: must be positive", ErrInvalid, d)
		}
		c.plugins.timeout = d
		return nil
	}
}

// registerPlugins sets up plugins, before restore: it registers the
// plugins of WithPlugin, and the plugins that recorded networks use, by
// name, without contacting them; and it makes the driver registry look up
// names it does not know as plugins. Calling it twice does nothing.
func (c *Controller) registerPlugins(ctx context.Context) error {
	pc := &c.cfg.plugins
	if pc.state != nil {
		return nil
	}
	st := &pluginState{timeout: pc.timeout}
	if pc.dirsSet {
		st.disc = plugin.Discovery{SocketDirs: pc.socketDirs, SpecDirs: pc.specDirs}
	}
	pc.state = st
	for _, name := range slices.Sorted(maps.Keys(pc.addrs)) {
		spec, err := plugin.ParseAddress(name, pc.addrs[name])
		if err != nil {
			return err
		}
		drv, alloc, _, err := c.newPlugin(name, plugin.Fixed(spec))
		if err != nil {
			return err
		}
		if err := c.drivers.RegisterDriver(name, drv); err != nil {
			return fmt.Errorf("plugin %q: %w", name, err)
		}
		if err := c.ipams.RegisterAllocator(name, alloc); err != nil {
			return fmt.Errorf("plugin %q: %w", name, err)
		}
	}
	// Networks of plugins come back even if their plugin is not there now.
	// A store that cannot be read is restore's to report.
	recs, _ := loadRecords[networkRecord](ctx, c.store, prefixNetwork)
	for _, r := range recs {
		if _, err := c.drivers.Driver(r.Driver); errors.Is(err, driverapi.ErrNotFound) {
			drv, _, _, err := c.newPlugin(r.Driver, st.disc.Locator(r.Driver))
			if err != nil {
				return err
			}
			if err := c.drivers.RegisterDriver(r.Driver, drv); err != nil {
				return err
			}
		}
		for _, fam := range []*ipamRecord{r.IPv4, r.IPv6} {
			if fam == nil || fam.Driver == "" {
				continue
			}
			if _, err := c.ipams.Allocator(fam.Driver); errors.Is(err, ErrNotFound) {
				_, alloc, _, err := c.newPlugin(fam.Driver, st.disc.Locator(fam.Driver))
				if err != nil {
					return err
				}
				if err := c.ipams.RegisterAllocator(fam.Driver, alloc); err != nil {
					return err
				}
			}
		}
	}
	c.drivers.SetResolver(c.resolveDriverPlugin)
	c.ipams.SetResolver(c.resolveIPAMPlugin)
	return nil
}

// newPlugin makes a client of the plugin called name, and a network driver
// and an allocator on it; none contacts the plugin yet. The controller
// keeps the client, to close its connections at Close.
func (c *Controller) newPlugin(name string, locate plugin.Locator) (*remote.Driver, *ipamremote.Allocator, *plugin.Client, error) {
	st := c.cfg.plugins.state
	client, err := plugin.NewClient(plugin.Config{Name: name, Locate: locate, Timeout: st.timeout})
	if err != nil {
		return nil, nil, nil, err
	}
	drv, err := remote.New(remote.Config{Client: client, HostNS: c.hostNS})
	if err != nil {
		return nil, nil, nil, err
	}
	alloc, err := ipamremote.New(client)
	if err != nil {
		return nil, nil, nil, err
	}
	st.mu.Lock()
	st.clients = append(st.clients, client)
	st.mu.Unlock()
	return drv, alloc, client, nil
}

// forget closes and drops the client of a plugin that failed to activate.
func (st *pluginState) forget(client *plugin.Client) {
	client.Close()
	st.mu.Lock()
	defer st.mu.Unlock()
	st.clients = slices.DeleteFunc(st.clients, func(c *plugin.Client) bool { return c == client })
}

// resolveDriverPlugin finds the plugin called name, activates it as a
// network driver and returns it. A plugin found nowhere is an error
// wrapping ErrNotFound; one that does not answer, or is no network driver,
// is the activation's error, naming the plugin.
func (c *Controller) resolveDriverPlugin(name string) (driverapi.Driver, error) {
	drv, _, err := c.activatePlugin(name, func(ctx context.Context, drv *remote.Driver, _ *ipamremote.Allocator) error {
		return drv.Activate(ctx)
	})
	if err != nil {
		return nil, err
	}
	return drv, nil
}

// resolveIPAMPlugin finds the plugin called name and activates it as an
// IPAM driver. (For ipam.Registry's resolver.)
func (c *Controller) resolveIPAMPlugin(name string) (ipam.Allocator, error) {
	_, alloc, err := c.activatePlugin(name, func(ctx context.Context, _ *remote.Driver, alloc *ipamremote.Allocator) error {
		return alloc.Activate(ctx)
	})
	if err != nil {
		return nil, err
	}
	return alloc, nil
}

// activatePlugin finds the plugin called name and activates it with
// activate, within the plugin timeout; on failure its client is closed
// and forgotten.
func (c *Controller) activatePlugin(name string, activate func(context.Context, *remote.Driver, *ipamremote.Allocator) error) (*remote.Driver, *ipamremote.Allocator, error) {
	st := c.cfg.plugins.state
	if _, err := st.disc.Lookup(name); err != nil {
		return nil, nil, err
	}
	drv, alloc, client, err := c.newPlugin(name, st.disc.Locator(name))
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), client.Timeout())
	defer cancel()
	if err := activate(ctx, drv, alloc); err != nil {
		st.forget(client)
		return nil, nil, err
	}
	return drv, alloc, nil
}

// closePlugins closes the plugin clients' idle connections.
func (c *Controller) closePlugins() {
	st := c.cfg.plugins.state
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, cl := range st.clients {
		cl.Close()
	}
}
