package overlay

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
	"github.com/seed53641549/cnm/osl"
)

// A controller that restarts leaves its overlay data plane running: the
// networks' namespaces in Config.RunDir, their bridges, VXLAN devices, FDB
// and neighbour entries, and the joined endpoints' veth pairs. The new
// process's Driver (same Config) takes them back:
//
//   - RestoreNetwork records each network, as CreateNetwork does;
//   - RestoreEndpoint records each endpoint; for a joined one it adopts
//     the network's namespace (the first time) and finds the endpoint's
//     veth end on br0 through the sandbox interface's peer index;
//   - FinishRestore drops what no restored endpoint explains and programs
//     the peers known by then again.
//
// Nothing that a restored endpoint uses is made again or moved, so
// established connections carry on.

// RestoreNetwork takes a network back after the controller restarted. It
// validates and records it as [Driver.CreateNetwork] does (the VNI comes
// in req.Options) and touches no kernel object: the network's namespace,
// if it still exists, is taken back by the RestoreEndpoint of its first
// joined endpoint, or dropped by FinishRestore if none comes.
func (d *Driver) RestoreNetwork(ctx context.Context, req driverapi.NetworkRequest) error {
	return d.CreateNetwork(ctx, req)
}

// RestoreEndpoint takes an endpoint back after the controller restarted.
// With req.Sandbox nil it records the endpoint as not joined. Otherwise
// the endpoint is joined and its interface req.InterfaceName exists in
// req.Sandbox: the first such endpoint of the network takes back the
// network's namespace (see [Driver.adoptSandbox]), and the endpoint's veth
// end in it, the peer of the sandbox interface, must be a port of br0 (one
// that was taken off br0 is put back, and one that is down is set up).
//
// A namespace that is gone (removed by hand while its veths lived on,
// held by something else) or has no br0, and an interface whose peer is
// not in it, are reported with an error wrapping ErrNotFound: the
// interface cannot be reconnected, and the controller is to treat the
// endpoint as not joined (remove the sandbox interface, join again after
// FinishRestore, which drops the stale namespace). On error nothing is
// recorded, and the network's namespace is neither changed (but for a
// VXLAN device made again, see adoptSandbox) nor dropped.
func (d *Driver) RestoreEndpoint(ctx context.Context, req driverapi.RestoreEndpointRequest) error {
	if req.EndpointID == "" {
		return fmt.Errorf("%w: overlay endpoint on network %s: empty EndpointID", driverapi.ErrInvalid, req.NetworkID)
	}
	if req.MAC != nil {
		if err := linkrules.CheckMAC(req.MAC); err != nil {
			return fmt.Errorf("overlay endpoint %s: MAC %q: %w", req.EndpointID, req.MAC, err)
		}
	}
	if req.Sandbox != nil {
		if err := linkrules.CheckIfName(req.InterfaceName); err != nil {
			return fmt.Errorf("overlay restore of endpoint %s: interface name %q: %w", req.EndpointID, req.InterfaceName, err)
		}
	}
	n, err := d.network(req.NetworkID)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.endpoints[req.EndpointID]; ok {
		return fmt.Errorf("%w: endpoint %s on overlay network %s", driverapi.ErrExists, req.EndpointID, n.id)
	}
	ep := &endpoint{}
	if req.Sandbox != nil {
		port, err := d.adoptPort(ctx, n, req)
		if err != nil {
			return err
		}
		ep.hostIf = port
		n.joined++
	}
	n.endpoints[req.EndpointID] = ep
	return nil
}

// adoptPort returns the name of the veth end on br0 of a joined
// endpoint's interface, taking the network's namespace back first if this
// is its first joined endpoint. The caller holds n.mu. On error a
// namespace taken back here is let go again (closed, not dropped).
func (d *Driver) adoptPort(ctx context.Context, n *network, req driverapi.RestoreEndpointRequest) (_ string, retErr error) {
	what := fmt.Sprintf("overlay restore of endpoint %s: interface %s in sandbox %s", req.EndpointID, req.InterfaceName, req.Sandbox)
	l, err := req.Sandbox.LinkByName(ctx, req.InterfaceName)
	if errors.Is(err, osl.ErrLinkNotFound) {
		return "", fmt.Errorf("%w: %s: %w", driverapi.ErrNotFound, what, err)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if l.Kind != "veth" || l.PeerIndex == 0 {
		return "", fmt.Errorf("%w: %s: a %s, not one end of a veth pair", driverapi.ErrNotFound, what, l.Kind)
	}
	if n.sb == nil {
		if err := d.adoptSandbox(ctx, n); err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		defer func() {
			if retErr != nil && n.joined == 0 {
				d.releaseSandbox(n)
			}
		}()
	}
	sb := n.sb
	p, err := sb.ns.LinkByIndex(ctx, l.PeerIndex)
	if errors.Is(err, osl.ErrLinkNotFound) {
		return "", fmt.Errorf("%w: %s: its peer (index %d) is not in the network's namespace %s", driverapi.ErrNotFound, what, l.PeerIndex, sb.ns)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	// The index names a link of the peer's namespace: a veth here that
	// points back at the interface is the peer.
	if p.Kind != "veth" || p.PeerIndex != l.Index {
		return "", fmt.Errorf("%w: %s: its peer (index %d) is not in the network's namespace %s (link %d there is %s %q)",
			driverapi.ErrNotFound, what, l.PeerIndex, sb.ns, p.Index, p.Kind, p.Name)
	}
	for id, o := range n.endpoints {
		if o.hostIf == p.Name {
			return "", fmt.Errorf("%w: %s: its peer %s is endpoint %s's", driverapi.ErrExists, what, p.Name, id)
		}
	}
	switch p.MasterIndex {
	case sb.bridge:
	case 0:
		if err := sb.ns.SetLinkMaster(ctx, p.Index, sb.bridge); err != nil {
			return "", fmt.Errorf("%s: put %s back on %s: %w", what, p.Name, bridgeName, err)
		}
	default:
		return "", fmt.Errorf("%w: %s: its peer %s is a port of link %d, not of %s (%d)", driverapi.ErrNotFound, what, p.Name, p.MasterIndex, bridgeName, sb.bridge)
	}
	if !p.Up {
		if err := sb.ns.SetLinkUp(ctx, p.Index); err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
	}
	return p.Name, nil
}

// adoptSandbox takes back network n's namespace, made by an earlier Driver
// (the controller before its restart), and publishes it as n.sb with every
// known peer programmed. What is missing is made again without touching
// the rest: a gateway address of br0, br0 up, and vxlan0 — made anew if
// gone, or if its VNI, local address or port differ from the network's
// and this driver's (Config.AdvertiseAddress or Port changed); a vxlan0
// that matches is kept, so traffic through it carries on. A namespace that
// is gone, or without br0, is an error wrapping ErrNotFound. The caller
// holds n.mu. On error n.sb stays nil and the namespace is closed, not
// dropped (a vxlan0 made again stays in it).
func (d *Driver) adoptSandbox(ctx context.Context, n *network) (retErr error) {
	path := d.sandboxPath(n.id)
	ns, err := osl.ReopenNamespace(ctx, path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, osl.ErrNotNamespace) {
		return fmt.Errorf("%w: overlay network %s: its namespace is gone: %w", driverapi.ErrNotFound, n.id, err)
	}
	if err != nil {
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}
	sb := &sandbox{ns: ns}
	defer func() {
		if retErr != nil {
			sb.close()
		}
	}()
	br, err := ns.LinkByName(ctx, bridgeName)
	if errors.Is(err, osl.ErrLinkNotFound) {
		return fmt.Errorf("%w: overlay network %s: %w", driverapi.ErrNotFound, n.id, err)
	}
	if err != nil {
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}
	if br.Kind != "bridge" {
		return fmt.Errorf("%w: overlay network %s: %s in %s is a %s, not a bridge", driverapi.ErrNotFound, n.id, bridgeName, ns, br.Kind)
	}
	sb.bridge = br.Index
	have, err := ns.Addresses(ctx, br.Index)
	if err != nil {
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}
	for _, gw := range n.gws {
		if !slices.Contains(have, gw) {
			if err := ns.AddAddress(ctx, br.Index, gw); err != nil {
				return fmt.Errorf("overlay network %s: gateway: %w", n.id, err)
			}
		}
	}
	if !br.Up {
		if err := ns.LinkUp(ctx, br.Index, n.ipv6); err != nil {
			return fmt.Errorf("overlay network %s: %w", n.id, err)
		}
	}
	if err := d.step("adopt vxlan"); err != nil {
		return err
	}
	if sb.vxlan, err = d.adoptVXLAN(ctx, n, sb); err != nil {
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}
	if err := d.step("adopt peers"); err != nil {
		return err
	}
	return d.publish(ctx, n, sb)
}

// adoptVXLAN returns the index of sb's vxlan0, a port of br0 and up,
// keeping the device there if it is as the network needs it, making it
// otherwise.
func (d *Driver) adoptVXLAN(ctx context.Context, n *network, sb *sandbox) (int, error) {
	spec := d.vxlanSpec(n, sb.bridge)
	l, err := sb.ns.LinkByName(ctx, vxlanName)
	switch {
	case errors.Is(err, osl.ErrLinkNotFound):
	case err != nil:
		return 0, err
	default:
		if vxlanMatches(l, spec) {
			if l.MasterIndex != sb.bridge {
				if err := sb.ns.SetLinkMaster(ctx, l.Index, sb.bridge); err != nil {
					return 0, err
				}
			}
			if !l.Up {
				if err := sb.ns.SetLinkUp(ctx, l.Index); err != nil {
					return 0, err
				}
			}
			return l.Index, nil
		}
		if err := sb.ns.DeleteLinkIndex(ctx, l.Index, vxlanName); err != nil {
			return 0, err
		}
	}
	return addVXLAN(ctx, d.cfg.HostNS, sb.ns, spec)
}

// releaseSandbox unpublishes network n's namespace and closes the
// driver's handles on it, leaving it as it is. The caller holds n.mu.
func (d *Driver) releaseSandbox(n *network) {
	if sb := d.unpublish(n); sb != nil {
		sb.close()
	}
}

// FinishRestore ends a restore. It
//
//   - drops every namespace of the driver in Config.RunDir (a file named
//     "ov-…") that no restored joined endpoint explains: the namespace of
//     a network deleted, or left by its last endpoint, while the
//     controller was down, of a network whose endpoints were restored as
//     not joined, or a file a crash left halfway; its vxlan0 is deleted
//     first, so its VNI and port are free at once;
//   - deletes, in each namespace kept, the veth ends on br0 that no
//     restored endpoint owns (their peers in sandboxes go with them).
//
// The peers known are programmed in a namespace when RestoreEndpoint
// takes it back, and AddPeer programs later ones. FDB and neighbour
// entries of peers it does not know are kept: those of peers removed while
// the controller was down go with the control plane's [Driver.SyncPeers]
// of the network.
//
// It is meant to run once, after RestoreNetwork and RestoreEndpoint of
// everything recorded and before the controller joins anything else;
// AddPeer and RemovePeer may run at any time. It goes on past an error and
// returns them all.
func (d *Driver) FinishRestore(ctx context.Context) error {
	nets := d.snapshot()
	slices.SortFunc(nets, func(a, b *network) int { return strings.Compare(a.id, b.id) })
	for _, n := range nets {
		n.mu.Lock()
		defer n.mu.Unlock()
	}

	var errs []error
	keep := map[string]bool{}
	for _, n := range nets {
		if n.sb == nil {
			continue
		}
		keep[d.sandboxPath(n.id)] = true
		errs = append(errs, d.dropStalePorts(ctx, n))
	}
	// A network recorded since the snapshot (not locked here) is its
	// joins' business.
	locked := map[*network]bool{}
	for _, n := range nets {
		locked[n] = true
	}
	d.mu.Lock()
	for id, n := range d.networks {
		if !locked[n] {
			keep[d.sandboxPath(id)] = true
		}
	}
	d.mu.Unlock()
	errs = append(errs, d.dropStaleNamespaces(ctx, keep))
	return errors.Join(errs...)
}

// dropStalePorts deletes the veth ends on network n's br0 that none of its
// endpoints owns. The caller holds n.mu; n.sb is set.
func (d *Driver) dropStalePorts(ctx context.Context, n *network) error {
	owned := map[string]bool{}
	for _, ep := range n.endpoints {
		if ep.hostIf != "" {
			owned[ep.hostIf] = true
		}
	}
	links, err := n.sb.ns.Links(ctx)
	if err != nil {
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}
	var errs []error
	for _, l := range links {
		if l.Kind != "veth" || l.MasterIndex != n.sb.bridge || owned[l.Name] {
			continue
		}
		if err := n.sb.ns.DeleteLinkIndex(ctx, l.Index, l.Name); err != nil {
			errs = append(errs, fmt.Errorf("overlay network %s: stale port: %w", n.id, err))
		}
	}
	return errors.Join(errs...)
}

// dropStaleNamespaces drops every file of Config.RunDir named like the
// driver's namespaces but those in keep.
func (d *Driver) dropStaleNamespaces(ctx context.Context, keep map[string]bool) error {
	entries, err := os.ReadDir(d.cfg.RunDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(d.cfg.RunDir, e.Name())
		if !strings.HasPrefix(e.Name(), nsPrefix) || e.IsDir() || keep[path] {
			continue
		}
		if err := dropNamespace(ctx, path); err != nil {
			errs = append(errs, fmt.Errorf("overlay: stale namespace: %w", err))
		}
	}
	return errors.Join(errs...)
}

// dropNamespace drops the namespace at path, deleting its vxlan0 first; a
// file at path that is no namespace (a crash came between making the file
// and mounting the namespace on it) is removed.
func dropNamespace(ctx context.Context, path string) error {
	ns, err := osl.ReopenNamespace(ctx, path)
	if errors.Is(err, osl.ErrNotNamespace) || errors.Is(err, fs.ErrNotExist) {
		return osl.RemoveNamespaceFile(path)
	}
	if err != nil {
		return err
	}
	sb := &sandbox{ns: ns}
	l, err := ns.LinkByName(ctx, vxlanName)
	switch {
	case err == nil && l.Kind == "vxlan":
		sb.vxlan = l.Index
	case err != nil && !errors.Is(err, osl.ErrLinkNotFound):
		ns.Close()
		return err
	}
	return sb.destroy(ctx)
}
