package overlay

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// Names of the links inside a network's namespace.
const (
	bridgeName = "br0"
	vxlanName  = "vxlan0"
)

// sandbox is a network's namespace on this host, with its bridge and VXLAN
// device.
type sandbox struct {
	ns     *osl.Namespace
	bridge int // br0's index
	vxlan  int // vxlan0's index
}

// nsPrefix starts the file name of every network namespace of the driver
// in Config.RunDir: [Driver.FinishRestore] drops those it cannot explain.
const nsPrefix = "ov-"

// idPrefixLen is how much of a network ID names its namespace. The
// controller's IDs are random UUIDs: 12 characters hold 44 random bits.
// Two recorded networks whose namespaces would share a path are refused.
const idPrefixLen = 12

// sandboxPath returns where network id's namespace is bind-mounted.
func (d *Driver) sandboxPath(id string) string {
	if len(id) > idPrefixLen {
		id = id[:idPrefixLen]
	}
	return filepath.Join(d.cfg.RunDir, nsPrefix+id)
}

// makeSandbox makes network n's namespace with br0 (gateway addresses, up)
// and vxlan0 (a port of br0, up), programs every known peer of n, and
// publishes it as n.sb. The caller holds n.mu. On error nothing is left.
func (d *Driver) makeSandbox(ctx context.Context, n *network) (retErr error) {
	if err := d.step("namespace"); err != nil {
		return err
	}
	if err := os.MkdirAll(d.cfg.RunDir, 0o755); err != nil {
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}
	ns, err := osl.NewNamespace(ctx, d.sandboxPath(n.id))
	if errors.Is(err, fs.ErrExist) {
		// Left by an earlier driver and neither taken back nor dropped:
		// see FinishRestore.
		return fmt.Errorf("%w: overlay network %s: make namespace: %w", driverapi.ErrExists, n.id, err)
	}
	if err != nil {
		return fmt.Errorf("overlay network %s: make namespace: %w", n.id, err)
	}
	if err := noBridgeNetfilter(ns); err != nil {
		_ = ns.Delete()
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}
	sb := &sandbox{ns: ns}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, sb.destroy(context.WithoutCancel(ctx)))
		}
	}()

	if err := d.step("bridge"); err != nil {
		return err
	}
	if sb.bridge, err = ns.AddBridge(ctx, osl.BridgeSpec{Name: bridgeName, MTU: n.mtu}); err != nil {
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}
	for _, gw := range n.gws {
		if err := ns.AddAddress(ctx, sb.bridge, gw); err != nil {
			return fmt.Errorf("overlay network %s: gateway: %w", n.id, err)
		}
	}
	if err := ns.LinkUp(ctx, sb.bridge, n.ipv6); err != nil {
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}

	if err := d.step("vxlan"); err != nil {
		return err
	}
	sb.vxlan, err = addVXLAN(ctx, d.cfg.HostNS, ns, d.vxlanSpec(n, sb.bridge))
	if err != nil {
		return fmt.Errorf("overlay network %s: %w", n.id, err)
	}

	if err := d.step("peers"); err != nil {
		return err
	}
	return d.publish(ctx, n, sb)
}

// publish programs every known peer of network n in sb and makes sb n's
// namespace, under peerMu, so that no AddPeer falls between the two. The
// caller holds n.mu; on error n.sb is unchanged.
func (d *Driver) publish(ctx context.Context, n *network, sb *sandbox) error {
	d.peerMu.Lock()
	defer d.peerMu.Unlock()
	for ip, p := range d.peers[n.id] {
		if err := sb.program(ctx, ip, p); err != nil {
			return fmt.Errorf("overlay network %s: %w", n.id, err)
		}
	}
	n.sb = sb
	return nil
}

// dropSandbox unpublishes and destroys network n's namespace. The caller
// holds n.mu.
func (d *Driver) dropSandbox(ctx context.Context, n *network) error {
	if sb := d.unpublish(n); sb != nil {
		return sb.destroy(ctx)
	}
	return nil
}

// unpublish takes network n's namespace away from it, under peerMu, and
// returns it (nil if it had none). The caller holds n.mu.
func (d *Driver) unpublish(n *network) *sandbox {
	d.peerMu.Lock()
	defer d.peerMu.Unlock()
	sb := n.sb
	n.sb = nil
	return sb
}

// close closes the driver's handles on the namespace and keeps it: the
// kernel objects in it live on.
func (sb *sandbox) close() {
	sb.ns.Close()
}

// destroy deletes vxlan0 (so that its VNI and UDP port are free at once,
// not when the kernel gets round to the dropped namespace), then drops the
// namespace: the bridge and the veth ends in it go with it.
func (sb *sandbox) destroy(ctx context.Context) error {
	var errs []error
	if sb.vxlan != 0 {
		if err := sb.ns.DeleteLinkIndex(ctx, sb.vxlan, vxlanName); err != nil {
			errs = append(errs, err)
		}
	}
	if err := sb.ns.Delete(); err != nil {
		errs = append(errs, fmt.Errorf("drop namespace %s: %w", sb.ns, err))
	}
	return errors.Join(errs...)
}

// noBridgeNetfilter turns off, in a network's namespace, the passing of
// bridged frames through the IP firewall hooks (br_netfilter, when loaded,
// turns it on in every new namespace). Nothing filters there: the
// namespace holds only br0, vxlan0 and the endpoints' ports, and the hooks
// and the connection tracking they bring cost every packet.
func noBridgeNetfilter(ns *osl.Namespace) error {
	for _, name := range []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables", "net/bridge/bridge-nf-call-arptables"} {
		if err := ns.SetSysctl(name, "0"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
