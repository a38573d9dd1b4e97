package cnm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/bridge"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/store"
)

// restore takes back everything the data dir records and reconciles it with
// the kernel: networks whose kernel objects are gone are made again;
// sandboxes whose namespace survived are taken back untouched; sandboxes
// whose namespace is gone are removed with their endpoints; deletions a
// crash interrupted are finished; kernel objects that carry this
// controller's marks but that no record explains are removed.
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
	for _, r := range nets {
		if err := c.restoreNetwork(ctx, r); err != nil {
			return fmt.Errorf("network %q: %w", r.Name, err)
		}
	}
	gone := map[string]bool{} // sandboxes removed now: their endpoints go too
	for _, r := range sbs {
		alive, err := c.restoreSandbox(ctx, r)
		if err != nil {
			return fmt.Errorf("sandbox %q: %w", r.ContainerID, err)
		}
		if !alive {
			gone[r.ID] = true
		}
	}
	for _, r := range eps {
		if err := c.restoreEndpoint(ctx, r, gone[r.SandboxID]); err != nil {
			return fmt.Errorf("endpoint %q: %w", r.Name, err)
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
	for _, sb := range c.sandboxes {
		if err := sb.reassert(ctx); err != nil {
			return fmt.Errorf("sandbox %q: %w", sb.containerID, err)
		}
	}
	return c.removeOrphans(ctx)
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

// restoreNetwork takes one network back, or finishes its deletion.
func (c *Controller) restoreNetwork(ctx context.Context, r networkRecord) error {
	drv, err := c.drivers.Driver(r.Driver)
	if err != nil {
		return err
	}
	restorer, ok := drv.(driverapi.Restorer)
	if !ok {
		return fmt.Errorf("%w: driver %s cannot restore networks", ErrNotSupported, r.Driver)
	}
	n := &Network{
		ctrl: c, id: r.ID, name: r.Name, driver: drv, internal: r.Internal, labels: r.Labels, options: r.Options,
		endpoints: map[string]*Endpoint{}, epNames: map[string]bool{},
	}
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
		if *fam.dst, err = c.requestNetworkIPAM(ctx, poolRequest{alloc: alloc, driver: name}, *ipamConfig(fam.rec), fam.v6); err != nil {
			return err
		}
	}
	if err := restorer.RestoreNetwork(ctx, n.driverRequest()); err != nil {
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

// restoreSandbox takes one sandbox back if its namespace survived, and
// reports whether it did. A gone sandbox is removed: its namespace file, its
// files and its record.
func (c *Controller) restoreSandbox(ctx context.Context, r sandboxRecord) (bool, error) {
	key := r.Key
	if r.HostNetwork {
		key = c.hostNS.Path()
	}
	open := osl.OpenNamespace
	if r.Owned {
		open = osl.ReopenNamespace
	}
	ns, err := open(ctx, key)
	if err == nil {
		sb := &Sandbox{
			ctrl: c, id: r.ID, containerID: r.ContainerID, ns: ns, owned: r.Owned,
			dir: r.Dir,
			cfg: sandboxConfig{
				hostname: r.Hostname, domainname: r.Domainname, netnsPath: r.NetnsPath,
				hostsPath: r.HostsPath, resolv: r.ResolvPath, dns: r.DNS, extraHosts: r.ExtraHosts, hostNetwork: r.HostNetwork,
			},
		}
		c.sandboxes[sb.id] = sb
		c.containerIDs[sb.containerID] = true
		return true, nil
	}
	if r.Owned {
		if err := osl.RemoveNamespaceFile(r.Key); err != nil {
			return false, err
		}
	}
	if err := os.RemoveAll(r.Dir); err != nil {
		return false, err
	}
	return false, c.save(ctx, store.Del(sandboxKey(r.ID)))
}

// restoreEndpoint takes one endpoint back: its addresses reserved again, its
// driver told, and, if its sandbox and interface survived, joined again. An
// endpoint of a sandbox that is gone goes with it.
func (c *Controller) restoreEndpoint(ctx context.Context, r endpointRecord, sandboxGone bool) error {
	n, ok := c.networks[r.NetworkID]
	if !ok || sandboxGone {
		return c.save(ctx, store.Del(endpointKey(r.NetworkID, r.ID)))
	}
	ep := &Endpoint{
		nw: n, id: r.ID, name: r.Name, mac: parseMAC(r.MAC), ipv4: r.IPv4, ipv6: r.IPv6,
		aliases: r.Aliases, ports: r.Ports,
	}
	for _, a := range []struct {
		fam  *networkIPAM
		addr netip.Prefix
	}{{n.ipv4, r.IPv4}, {n.ipv6, r.IPv6}} {
		if !a.addr.IsValid() {
			continue
		}
		if _, err := n.requestAddress(ctx, a.fam, a.addr.Addr()); err != nil {
			return fmt.Errorf("reserve %s: %w", a.addr, err)
		}
	}
	var sb *Sandbox
	ifIndex := 0
	if r.SandboxID != "" {
		sb = c.sandboxes[r.SandboxID]
		if sb != nil && !n.driver.Capability().NoInterface {
			l, err := sb.ns.LinkByName(ctx, r.InterfaceName)
			if err != nil {
				sb = nil // the interface is gone: a leave a crash interrupted
			} else {
				ifIndex = l.Index
				if l.MAC.String() != ep.mac.String() {
					ep.ifMAC = l.MAC
				}
			}
		}
		if sb == nil {
			r.SandboxID, r.InterfaceName = "", ""
			if err := c.saveRecord(ctx, endpointKey(n.id, ep.id), r); err != nil {
				return err
			}
		}
	}
	req := driverapi.RestoreEndpointRequest{NetworkID: n.id, EndpointID: ep.id, MAC: ep.mac, IPv4: ep.ipv4, IPv6: ep.ipv6}
	if sb != nil {
		req.Sandbox, req.InterfaceName = sb.ns, r.InterfaceName
		if n.driver.Capability().NoInterface {
			req.InterfaceName = ""
		}
	}
	if err := n.driver.(driverapi.Restorer).RestoreEndpoint(ctx, req); err != nil {
		return err
	}
	if sb != nil {
		ep.joinState = joinState{sandbox: sb, ifName: r.InterfaceName, ifIndex: ifIndex, ifMAC: ep.ifMAC,
			gw4: r.Gateway, gw6: r.GatewayIPv6, gwPriority: r.GatewayPriority}
		sb.endpoints = append(sb.endpoints, ep)
	}
	n.endpoints[ep.id] = ep
	n.epNames[ep.name] = true
	return nil
}

// reassert puts a restored sandbox's endpoints in interface order and makes
// its default routes and hosts file match them again (a crash may have
// interrupted a change); routes that are already right are replaced by
// themselves, which does not disturb traffic. In a namespace cnm made, an
// interface no endpoint names (a crash between a driver's join and its
// record) is deleted.
func (sb *Sandbox) reassert(ctx context.Context) error {
	slices.SortFunc(sb.endpoints, func(a, b *Endpoint) int { return ifNumber(a.ifName) - ifNumber(b.ifName) })
	if sb.owned {
		named := map[string]bool{"lo": true}
		for _, ep := range sb.endpoints {
			named[ep.ifName] = true
		}
		links, err := sb.ns.Links(ctx)
		if err != nil {
			return err
		}
		for _, l := range links {
			if !named[l.Name] {
				if err := sb.ns.DeleteLink(ctx, l.Name); err != nil {
					return err
				}
			}
		}
	}
	if err := sb.updateGateways(ctx, sb.endpoints, nil); err != nil {
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
// explained by no record: namespace files and sandbox directories in the run
// dir, bridges marked with a network ID, and firewall rules tagged with one.
func (c *Controller) removeOrphans(ctx context.Context) error {
	keys, dirs := map[string]bool{}, map[string]bool{}
	for _, sb := range c.sandboxes {
		keys[sb.ns.Path()] = true
		dirs[sb.dir] = true
	}
	nsDir := filepath.Join(c.cfg.runDir, "netns")
	entries, err := os.ReadDir(nsDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if p := filepath.Join(nsDir, e.Name()); !keys[p] {
			if err := osl.RemoveNamespaceFile(p); err != nil {
				return err
			}
		}
	}
	sbDir := filepath.Join(c.cfg.runDir, "sandboxes")
	if entries, err = os.ReadDir(sbDir); err != nil {
		return err
	}
	for _, e := range entries {
		if p := filepath.Join(sbDir, e.Name()); !dirs[p] {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	links, err := c.hostNS.Links(ctx)
	if err != nil {
		return err
	}
	for _, l := range links {
		if id, ok := strings.CutPrefix(l.Alias, bridge.Mark("")); ok && c.networks[id] == nil {
			if err := c.hostNS.DeleteLink(ctx, l.Name); err != nil {
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
