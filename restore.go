package cnm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/store"
)

// restore takes back everything the stores record and reconciles it with
// the kernel:
//
//   - networks whose kernel objects are gone are made again;
//   - sandboxes whose namespace survived, and is the one recorded, are taken
//     back untouched; those whose namespace is gone are removed;
//   - joined endpoints whose interface survived, and is the one recorded, are
//     taken back; deletions a crash interrupted are finished;
//   - kernel objects and files that carry this controller's marks but that
//     no record explains are removed; nothing else is.
//
// Only "no such file", "not a network namespace" and "no such link" mean
// gone. Any other error (out of file descriptors, of memory, of netlink
// buffers) fails restore before it changes anything: a transient error must
// never be read as a dead container.
func (c *Controller) restore(ctx context.Context) error {
	if err := c.checkRunDir(ctx); err != nil {
		return err
	}
	nets, err := loadRecords[networkRecord](ctx, c.store, prefixNetwork)
	if err != nil {
		return err
	}
	sbs, err := loadRecords[sandboxRecord](ctx, c.runtime, prefixSandbox)
	if err != nil {
		return err
	}
	eps, err := loadRecords[endpointRecord](ctx, c.runtime, prefixEndpoint)
	if err != nil {
		return err
	}

	// Look first, change afterwards.
	found := make([]foundSandbox, 0, len(sbs))
	for _, r := range sbs {
		f, err := c.findSandbox(ctx, r)
		if err != nil {
			for _, f := range found {
				f.close()
			}
			return fmt.Errorf("sandbox %q: %w", r.ContainerID, err)
		}
		found = append(found, f)
	}

	for _, r := range nets {
		if err := c.restoreNetwork(ctx, r); err != nil {
			return fmt.Errorf("network %q: %w", r.Name, err)
		}
	}
	if c.global != nil {
		if err := c.global.restoreNetworks(ctx); err != nil {
			return err
		}
	}
	alive := map[string]foundSandbox{}
	for _, f := range found {
		if f.ns == nil {
			if err := c.removeGoneSandbox(ctx, f.rec); err != nil {
				return fmt.Errorf("sandbox %q: %w", f.rec.ContainerID, err)
			}
			continue
		}
		c.adoptSandbox(f)
		alive[f.rec.ID] = f
	}
	var (
		finish []*Endpoint         // deleted: released once FinishRestore ran
		ours   = map[string]bool{} // MACs of this controller's endpoints
	)
	for _, r := range eps {
		ours[r.MAC] = true
		ep, done, err := c.restoreEndpoint(ctx, r, alive)
		if err != nil {
			return fmt.Errorf("endpoint %q: %w", r.Name, err)
		}
		if done {
			finish = append(finish, ep)
		}
	}
	for _, name := range c.drivers.Names() {
		d, _ := c.drivers.Driver(name)
		if r, ok := d.(driverapi.Restorer); ok {
			if err := r.FinishRestore(ctx); err != nil {
				return fmt.Errorf("driver %s: %w", name, err)
			}
		}
	}
	for _, f := range alive {
		if err := c.sandboxes[f.rec.ID].reassert(ctx, f.links, ours); err != nil {
			return fmt.Errorf("sandbox %q: %w", f.rec.ContainerID, err)
		}
	}
	if err := c.restoreLB(ctx); err != nil {
		return err
	}
	// FinishRestore removed every veth port no restored endpoint owns, and
	// reassert every interface of ours that no joined endpoint explains: the
	// interfaces of deleted endpoints are gone now, so their addresses go.
	for _, ep := range finish {
		if err := ep.finishDelete(ctx); err != nil {
			return err
		}
	}
	if err := c.removeOrphans(ctx); err != nil {
		return err
	}
	// An overlay endpoint that came back left (its driver lost the join)
	// leaves its sandbox a gateway bridge endpoint nothing needs; one that
	// came back joined while the endpoint offering its way out did not
	// needs one.
	for _, f := range alive {
		sb := c.sandboxes[f.rec.ID]
		sb.joinMu.Lock()
		err := sb.updateEgress(ctx)
		sb.joinMu.Unlock()
		if err != nil {
			c.log.Warn("cnm: restore: update the gateway bridge endpoint", "sandbox", sb.containerID, "err", err)
		}
	}
	return nil
}

// foundSandbox is what restore found of a recorded sandbox: its namespace,
// open (nil: gone), and the links in it.
type foundSandbox struct {
	rec   sandboxRecord
	ns    *osl.Namespace
	links []osl.Link
}

func (f foundSandbox) close() {
	if f.ns != nil {
		f.ns.Close()
	}
}

// findSandbox opens a recorded sandbox's namespace and lists its links. A
// namespace is gone when its file is missing or is no network namespace, or
// when the path now opens another namespace (a reused /proc/PID/ns/net, a
// re-pointed bind mount): that one is not the sandbox's, and is never
// adopted. Any other error is returned.
func (c *Controller) findSandbox(ctx context.Context, r sandboxRecord) (foundSandbox, error) {
	f := foundSandbox{rec: r}
	key := r.Key
	if r.HostNetwork {
		key = c.hostNS.Path()
	}
	open := osl.OpenNamespace
	if r.Owned {
		open = osl.ReopenNamespace
	}
	ns, err := open(ctx, key)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, osl.ErrNotNamespace):
		return f, nil
	case err != nil:
		return f, err
	}
	want := r.NSID
	if r.HostNetwork {
		want = c.hostNS.ID()
	}
	if !want.IsZero() && ns.ID() != want {
		c.log.Warn("cnm: restore: sandbox path opens another namespace; not adopted",
			"sandbox", r.ContainerID, "path", key, "recorded", want, "found", ns.ID())
		ns.Close()
		return f, nil
	}
	if f.links, err = ns.Links(ctx); err != nil {
		ns.Close()
		return f, err
	}
	f.ns = ns
	return f, nil
}

// adoptSandbox takes a sandbox whose namespace survived back.
func (c *Controller) adoptSandbox(f foundSandbox) {
	r := f.rec
	sb := &Sandbox{ctrl: c, id: r.ID, containerID: r.ContainerID, ns: f.ns, owned: r.Owned, dir: r.Dir, cfg: r.config(c.log)}
	c.sandboxes[sb.id] = sb
	c.containerIDs[sb.containerID] = true
}

// config returns the sandbox's configuration, its file contents passed
// through today's option checks one by one: a value an older cnm accepted
// and this one refuses (an IPv6 zone, a control character) is dropped with
// a warning, and never written to a file again.
func (r sandboxRecord) config(log *slog.Logger) sandboxConfig {
	cfg := sandboxConfig{netnsPath: r.NetnsPath, hostsPath: r.HostsPath, resolv: r.ResolvPath, hostNetwork: r.HostNetwork}
	ok := func(o SandboxOption) bool {
		err := o(&sandboxConfig{})
		if err != nil {
			log.Warn("cnm: restore: sandbox setting refused; dropped", "sandbox", r.ContainerID, "err", err)
		}
		return err == nil
	}
	if r.Hostname != "" && ok(WithHostname(r.Hostname)) {
		cfg.hostname = r.Hostname
	}
	if r.Domainname != "" && ok(WithDomainname(r.Domainname)) {
		cfg.domainname = r.Domainname
	}
	for _, a := range r.DNS {
		if ok(WithDNS(a)) {
			cfg.dns = append(cfg.dns, a)
		}
	}
	for _, h := range r.ExtraHosts {
		if ok(WithExtraHosts(h)) {
			cfg.extraHosts = append(cfg.extraHosts, h)
		}
	}
	return cfg
}

// removeGoneSandbox removes what is left of a sandbox whose namespace is
// gone: its namespace file, when it is cnm's and still names no namespace,
// its files and its record. Its endpoints are finished by restoreEndpoint.
func (c *Controller) removeGoneSandbox(ctx context.Context, r sandboxRecord) error {
	if r.Owned && c.ownsPath(r.Key) {
		if _, err := osl.OpenNamespace(ctx, r.Key); errors.Is(err, fs.ErrNotExist) || errors.Is(err, osl.ErrNotNamespace) {
			if err := osl.RemoveNamespaceFile(r.Key); err != nil {
				return err
			}
		}
	}
	if c.ownsPath(r.Dir) {
		if err := os.RemoveAll(r.Dir); err != nil {
			return err
		}
	}
	return c.save(ctx, store.Del(sandboxKey(r.ID)))
}

// ownsPath reports whether path lies in the controller's own run dir folder.
func (c *Controller) ownsPath(path string) bool {
	rel, err := filepath.Rel(c.files, path)
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..")
}

// checkRunDir refuses a data dir made with another run dir: its sandboxes'
// namespaces live there.
func (c *Controller) checkRunDir(ctx context.Context) error {
	kv, err := c.store.Get(ctx, keyRunDir)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return c.save(ctx, store.Put(keyRunDir, []byte(c.cfg.runDir)))
	case err != nil:
		return err
	case string(kv.Value) != c.cfg.runDir:
		return fmt.Errorf("%w: run dir %q: the data dir %q was made with run dir %q, where its sandboxes live",
			ErrInvalid, c.cfg.runDir, c.cfg.dataDir, kv.Value)
	}
	return nil
}

// loadRecords decodes every record under prefix.
func loadRecords[T any](ctx context.Context, s store.Store, prefix string) ([]T, error) {
	kvs, err := s.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(kvs))
	for _, kv := range kvs {
		var schema struct{ Schema int }
		if err := json.Unmarshal(kv.Value, &schema); err != nil {
			return nil, fmt.Errorf("%w: record %s: %w", store.ErrCorrupt, kv.Key, err)
		}
		if schema.Schema > recordSchema {
			return nil, fmt.Errorf("%w: record %s has schema %d, this cnm reads up to %d", store.ErrSchema, kv.Key, schema.Schema, recordSchema)
		}
		var r T
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("%w: record %s: %w", store.ErrCorrupt, kv.Key, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func ipamConfig(r *ipamRecord) *IPAMConfig {
	if r == nil {
		return nil
	}
	return &IPAMConfig{Subnet: r.Subnet, IPRange: r.IPRange, Gateway: r.Gateway, AuxAddresses: r.Aux}
}

// networkOf returns the Network a record describes, without its
// addressing.
func (c *Controller) networkOf(r networkRecord, drv driverapi.Driver) *Network {
	return &Network{
		ctrl: c, id: r.ID, name: r.Name, driver: drv, internal: r.Internal, labels: r.Labels, options: r.Options,
		endpoints: map[string]*Endpoint{}, epNames: map[string]bool{},
	}
}

// recordedIPAM returns one family's addressing as its record names it,
// asking alloc nothing: for pools the allocator keeps by their ID.
func recordedIPAM(rec *ipamRecord, alloc ipam.Allocator, name string) *networkIPAM {
	return &networkIPAM{alloc: alloc, driver: name, poolID: rec.PoolID, subnet: rec.Subnet,
		ipRange: rec.IPRange, gateway: rec.Gateway, aux: rec.Aux}
}

// restoreInDriver tells drv about a network it had before the restart. A
// driver without Restorer is told as if the network were new; it must
// accept one whose kernel objects exist.
func restoreInDriver(ctx context.Context, drv driverapi.Driver, req driverapi.NetworkRequest) error {
	if rd, ok := drv.(driverapi.Restorer); ok {
		return rd.RestoreNetwork(ctx, req)
	}
	return drv.CreateNetwork(ctx, req)
}

// restoreNetwork takes one network back, or finishes its deletion.
func (c *Controller) restoreNetwork(ctx context.Context, r networkRecord) error {
	drv, err := c.drivers.Driver(r.Driver)
	if err != nil {
		return err
	}
	n := c.networkOf(r, drv)
	for _, fam := range []struct {
		rec *ipamRecord
		v6  bool
		dst **networkIPAM
	}{{r.IPv4, false, &n.ipv4}, {r.IPv6, true, &n.ipv6}} {
		if fam.rec == nil {
			continue
		}
		name, alloc, err := c.allocator(fam.rec.Driver)
		if err != nil {
			return err
		}
		if ipam.KeepsState(alloc) && fam.rec.PoolID != "" {
			// A plugin holds the pool itself: nothing to ask it (it may be
			// down now; calls fail, naming it, until it is back).
			*fam.dst = recordedIPAM(fam.rec, alloc, name)
			continue
		}
		if *fam.dst, err = c.requestNetworkIPAM(ctx, poolRequest{alloc: alloc, driver: name}, *ipamConfig(fam.rec), fam.v6); err != nil {
			return err
		}
	}
	if err := restoreInDriver(ctx, drv, n.driverRequest()); err != nil {
		return err
	}
	if r.Deleting { // a crash interrupted Delete: finish it
		if err := drv.DeleteNetwork(ctx, n.id); err != nil {
			return err
		}
		c.releaseNetworkIPAM(ctx, n.ipv4)
		c.releaseNetworkIPAM(ctx, n.ipv6)
		return c.save(ctx, store.Del(networkKey(n.id)))
	}
	c.networks[n.id] = n
	c.networkNames[n.name] = true
	return nil
}

// restoreEndpoint takes one endpoint back: its addresses reserved again, its
// driver told, and, if its sandbox and its interface (that name, that index,
// that MAC) survived, joined again. A deleted endpoint, or one of a sandbox
// that is gone, keeps its addresses reserved and is returned with done set:
// restore finishes it once the drivers have removed what is left of it.
func (c *Controller) restoreEndpoint(ctx context.Context, r endpointRecord, alive map[string]foundSandbox) (_ *Endpoint, done bool, _ error) {
	n, ok := c.networks[r.NetworkID]
	if !ok {
		return nil, false, c.save(ctx, store.Del(endpointKey(r.NetworkID, r.ID)))
	}
	ep := &Endpoint{
		nw: n, id: r.ID, name: r.Name, mac: parseMAC(r.MAC), ipv4: r.IPv4, ipv6: r.IPv6,
		aliases: r.Aliases, ports: r.Ports, service: r.Service, vip4: r.ServiceIPv4, vip6: r.ServiceIPv6,
	}
	for _, err := range ep.reserveAddresses(ctx) {
		if n.global && errors.Is(err, ErrExists) {
			// This host was away for longer than its lease: another host
			// took the block. Its interface keeps the address; refusing to
			// start would not give it back.
			c.log.Error("cnm: restore: an address of this host was taken by another host while its lease was lost",
				"network", n.name, "endpoint", r.Name, "err", err)
			continue
		}
		return nil, false, err
	}
	f, sbAlive := alive[r.SandboxID]
	if r.Deleting || (r.SandboxID != "" && !sbAlive) {
		return ep, true, nil
	}
	if err := n.addMember(ctx, ep); err != nil {
		return nil, false, err
	}
	var sb *Sandbox
	var link osl.Link
	if r.SandboxID != "" {
		sb = c.sandboxes[r.SandboxID]
		if !n.driver.Capability().NoInterface {
			var ok bool
			if link, ok = r.findInterface(f.links); !ok {
				sb = nil // gone, or not ours: a leave a crash interrupted
			}
		}
		if sb == nil {
			r.SandboxID, r.InterfaceName, r.IfIndex, r.IfMAC = "", "", 0, ""
			if err := c.saveRecord(ctx, endpointKey(n.id, ep.id), r); err != nil {
				return nil, false, err
			}
		}
	}
	req := driverapi.RestoreEndpointRequest{NetworkID: n.id, EndpointID: ep.id, MAC: ep.mac, IPv4: ep.ipv4, IPv6: ep.ipv6}
	if sb != nil {
		req.Sandbox, req.InterfaceName, req.Ports = sb.ns, r.InterfaceName, r.Bindings
		if n.driver.Capability().NoInterface {
			req.InterfaceName = ""
		}
		for _, b := range r.Bindings {
			if err := c.ports.Reserve(b.Proto, b.HostIP, b.HostPort); err != nil {
				return nil, false, fmt.Errorf("published port %s: %w", portString(b), err)
			}
		}
	}
	var err error
	if rd, ok := n.driver.(driverapi.Restorer); ok {
		err = rd.RestoreEndpoint(ctx, req)
		if errors.Is(err, ErrNotFound) && sb != nil {
			// The driver lost what joined the interface (a network
			// namespace removed by hand): the endpoint comes back left,
			// and reassert removes its interface.
			c.log.Warn("cnm: restore: endpoint's join is gone in its driver: left", "endpoint", r.Name, "err", err)
			sb = nil
			req.Sandbox, req.InterfaceName, req.Ports = nil, "", nil
			for _, b := range r.Bindings {
				c.ports.Release(b.Proto, b.HostIP, b.HostPort)
			}
			r.SandboxID, r.InterfaceName, r.IfIndex, r.IfMAC, r.Bindings = "", "", 0, "", nil
			if err = c.saveRecord(ctx, endpointKey(n.id, ep.id), r); err == nil {
				err = rd.RestoreEndpoint(ctx, req)
			}
		}
	} else if p, ok := n.driver.(driverapi.EndpointPreparer); ok {
		err = p.CreateEndpoint(ctx, ep.driverRequest())
	}
	if err != nil {
		return nil, false, err
	}
	if sb != nil {
		ep.joinState = joinState{sandbox: sb, ifName: r.InterfaceName, ifIndex: link.Index, ifMAC: link.MAC,
			gw4: r.Gateway, gw6: r.GatewayIPv6, gwPriority: r.GatewayPriority, bindings: r.Bindings}
		ep.external = len(r.Bindings) > 0
		sb.endpoints = append(sb.endpoints, ep)
	}
	n.endpoints[ep.id] = ep
	n.epNames[ep.name] = true
	return ep, false, nil
}

// reserveAddresses asks IPAM again for the endpoint's addresses (at
// restore, and under a new lease for a global network), one error per
// family that failed. Addresses of a plugin that keeps its own state are
// not asked for: it holds them itself.
func (ep *Endpoint) reserveAddresses(ctx context.Context) []error {
	n := ep.nw
	var errs []error
	for _, a := range []struct {
		fam  *networkIPAM
		addr netip.Prefix
	}{{n.ipv4, ep.ipv4}, {n.ipv6, ep.ipv6}} {
		if !a.addr.IsValid() || a.fam == nil || ipam.KeepsState(a.fam.alloc) {
			continue
		}
		if _, err := n.requestAddress(ctx, a.fam, a.addr.Addr()); err != nil {
			errs = append(errs, fmt.Errorf("reserve %s: %w", a.addr, err))
		}
	}
	return errs
}

// findInterface finds the endpoint's interface among a sandbox's links: the
// one with the recorded name, index (if recorded) and MAC.
func (r endpointRecord) findInterface(links []osl.Link) (osl.Link, bool) {
	mac := r.IfMAC
	if mac == "" {
		mac = r.MAC
	}
	for _, l := range links {
		if l.Name == r.InterfaceName {
			ok := (r.IfIndex == 0 || l.Index == r.IfIndex) && l.MAC.String() == mac
			return l, ok
		}
	}
	return osl.Link{}, false
}

// reassert puts a restored sandbox's endpoints in interface order and makes
// its default routes and hosts file match them again (a crash may have
// interrupted a change); routes that are already right are replaced by
// themselves, which does not disturb traffic. An interface that carries the
// MAC of one of this controller's endpoints but is no joined endpoint's (a
// crash interrupted a join, or the removal of a left one) is deleted; every
// other interface (a user's device, another tool's) is left alone.
func (sb *Sandbox) reassert(ctx context.Context, links []osl.Link, ours map[string]bool) error {
	slices.SortFunc(sb.endpoints, func(a, b *Endpoint) int { return ifNumber(a.ifName) - ifNumber(b.ifName) })
	joined := map[int]bool{}
	for _, ep := range sb.endpoints {
		joined[ep.ifIndex] = true
	}
	if !sb.cfg.hostNetwork {
		for _, l := range links {
			if !joined[l.Index] && ours[l.MAC.String()] {
				if err := sb.ns.DeleteLinkIndex(ctx, l.Index, l.Name); err != nil {
					return err
				}
			}
		}
	}
	if err := sb.updateGateways(ctx, sb.endpoints, nil); err != nil {
		return err
	}
	for _, ep := range sb.endpoints {
		ep.publishNames(sb)
	}
	if _, err := sb.updateResolver(sb.endpoints); err != nil {
		return err
	}
	return sb.writeHosts(sb.endpoints)
}

func ifNumber(name string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(name, "eth"))
	if err != nil {
		return -1
	}
	return n
}

// removeOrphans removes what carries this controller's marks but is
// explained by no record: entries of its own run dir folder (namespace files
// and sandbox directories named by a sandbox ID), links whose alias names
// this controller and an unknown network, and rules of unknown networks in
// its own nftables table. Nothing outside those is touched.
func (c *Controller) removeOrphans(ctx context.Context) error {
	keys, dirs := map[string]bool{}, map[string]bool{}
	for _, sb := range c.sandboxes {
		keys[sb.ns.Path()] = true
		dirs[sb.dir] = true
	}
	for _, sub := range []struct {
		dir    string
		known  map[string]bool
		remove func(string) error
	}{
		{filepath.Join(c.files, "netns"), keys, osl.RemoveNamespaceFile},
		{filepath.Join(c.files, "sandboxes"), dirs, os.RemoveAll},
	} {
		entries, err := os.ReadDir(sub.dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			p := filepath.Join(sub.dir, e.Name())
			if sub.known[p] {
				continue
			}
			if uuid.Validate(e.Name()) != nil {
				c.log.Warn("cnm: restore: not a sandbox of cnm's; left alone", "path", p)
				continue
			}
			if err := sub.remove(p); err != nil {
				return err
			}
		}
	}
	links, err := c.hostNS.Links(ctx)
	if err != nil {
		return err
	}
	for _, l := range links {
		// cnm marks bridges and VLAN sub-interfaces only: a link of another
		// kind with a look-alike mark is not one it made.
		if l.Kind != "bridge" && l.Kind != "vlan" {
			continue
		}
		if id, ok := c.owner.NetworkOf(l.Alias); ok && c.networks[id] == nil {
			if err := c.hostNS.DeleteLinkIndex(ctx, l.Index, l.Name); err != nil {
				return err
			}
		}
	}
	ids, err := c.firewall.NetworkIDs(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if c.networks[id] == nil {
			if err := c.firewall.RemoveNetwork(ctx, id); err != nil {
				return err
			}
		}
	}
	return nil
}
