package overlay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/osl"
)

// SyncPeers is the control plane's resync of one network's peers (after
// the controller restarted, or when a watch had to list everything
// again): it makes the driver's peers of network networkID exactly peers.
// Peers not in the list are removed, new ones added, and ones with a new
// MAC or VTEP replaced; a peer whose VTEP is this host's own address is
// ignored, as by [Driver.AddPeer]. For a network that has no namespace on
// this host (not created yet, or no endpoint joined) the peers are
// remembered and programmed when it gets one; an empty list forgets them.
//
// When the network has a namespace, its vxlan0 follows: every permanent
// FDB entry (MAC → VTEP) and every permanent neighbour entry (IP → MAC)
// that no peer of the list explains is deleted, and the listed peers'
// entries that are missing or differ are set; entries already right are
// not touched. Those deleted are what a restore leaves of peers removed
// while the controller was down ([Driver.FinishRestore] keeps them), which
// would otherwise make vxlan0's proxy answer ARP for a reused address with
// a dead MAC. A MAC given at several VTEPs (one FDB entry per MAC) goes to
// the VTEP of the peer with the lowest IP.
//
// Every peer is checked as AddPeer checks it, its NetworkID must be
// networkID, and an IP may be given twice only with the same MAC and VTEP;
// any refusal (wrapping ErrInvalid, naming the field and value) comes
// before anything changes. On an error of the kernel the changes made to
// vxlan0 are undone and the peer table is as it was; the error says
// whether undoing failed too, and what is left then. Another SyncPeers
// finishes the job: it compares with what vxlan0 holds, not with what the
// driver believes it holds.
func (d *Driver) SyncPeers(ctx context.Context, networkID string, peers []Peer) error {
	if networkID == "" {
		return fmt.Errorf("%w: overlay sync of peers: network ID: missing", driverapi.ErrInvalid)
	}
	what := fmt.Sprintf("overlay sync of the %d peers of network %s", len(peers), networkID)
	table := make(map[netip.Addr]peerEntry, len(peers))
	given := make(map[netip.Addr]int, len(peers)) // IP → index in peers
	for i, p := range peers {
		if err := p.check(d.cfg.AdvertiseAddress); err != nil {
			return fmt.Errorf("%s: peer #%d: %w", what, i, err)
		}
		if p.NetworkID != networkID {
			return fmt.Errorf("%w: %s: peer #%d (%s): NetworkID=%q: not that network", driverapi.ErrInvalid, what, i, p.IP, p.NetworkID)
		}
		if j, ok := given[p.IP]; ok {
			q := peers[j]
			if !bytes.Equal(q.MAC, p.MAC) || q.VTEP != p.VTEP {
				return fmt.Errorf("%w: %s: peer #%d: IP=%s: given twice, as %s at %s (#%d) and as %s at %s",
					driverapi.ErrInvalid, what, i, p.IP, q.MAC, q.VTEP, j, p.MAC, p.VTEP)
			}
			continue
		}
		given[p.IP] = i
		if p.VTEP != d.cfg.AdvertiseAddress {
			table[p.IP] = p.entry() // a copy of the MAC's bytes
		}
	}

	d.peerMu.Lock()
	defer d.peerMu.Unlock()
	if sb := d.liveSandbox(networkID); sb != nil {
		if err := d.syncVXLAN(ctx, sb, table); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	if len(table) == 0 {
		delete(d.peers, networkID)
	} else {
		d.peers[networkID] = table
	}
	return nil
}

// syncChange is one change syncVXLAN makes to vxlan0, with its undoing.
type syncChange struct {
	what string
	do   func(context.Context) error
	undo func(context.Context) error
}

// syncVXLAN makes sb's vxlan0 hold exactly the FDB and neighbour entries
// of table. On error it undoes what it did, as far as it can, and says
// what is left. The caller holds peerMu.
func (d *Driver) syncVXLAN(ctx context.Context, sb *sandbox, table map[netip.Addr]peerEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fdbs, err := sb.listFDB(ctx)
	if err != nil {
		return err
	}
	neighs, err := sb.ns.Neighbours(ctx, sb.vxlan)
	if err != nil {
		return err
	}
	changes := planSync(sb, table, fdbs, neighs)
	for i, c := range changes {
		err := d.step("sync")
		if err == nil {
			err = c.do(ctx)
		}
		if err == nil {
			continue
		}
		err = fmt.Errorf("%s: %w", c.what, err)
		if i == 0 {
			return fmt.Errorf("%w (nothing was changed)", err)
		}
		bg := context.WithoutCancel(ctx)
		var undoErrs []error
		for j := i - 1; j >= 0; j-- {
			if uerr := changes[j].undo(bg); uerr != nil {
				undoErrs = append(undoErrs, fmt.Errorf("undo %s: %w", changes[j].what, uerr))
			}
		}
		if len(undoErrs) == 0 {
			return fmt.Errorf("%w (the %d changes made before were undone: %s is as it was)", err, i, vxlanName)
		}
		return fmt.Errorf("%w; %d of %d changes were made, and undoing them failed: %s is left part old, part new "+
			"(the peer table is as it was; SyncPeers again finishes the job): %w",
			err, i, len(changes), vxlanName, errors.Join(undoErrs...))
	}
	return nil
}

// planSync returns the changes that make vxlan0, holding the FDB entries
// fdbs and neighbour entries neighs, hold those of table: first the FDB
// entries set (added, or replaced with a new VTEP), then the neighbour
// entries set, then the neighbour entries and the FDB entries deleted, so
// that no neighbour entry points at a MAC without an FDB entry longer
// than it must. Each step goes in a fixed order (by IP, by MAC).
func planSync(sb *sandbox, table map[netip.Addr]peerEntry, fdbs []fdbRecord, neighs []osl.Neighbour) []syncChange {
	ips := make([]netip.Addr, 0, len(table))
	for ip := range table {
		ips = append(ips, ip)
	}
	slices.SortFunc(ips, netip.Addr.Compare)

	// What should be: one VTEP per MAC (the lowest IP's).
	type dest struct {
		mac  net.HardwareAddr
		vtep netip.Addr
	}
	wantFDB := map[string]dest{} // by MAC as formatted
	var macs []string
	for _, ip := range ips {
		e := table[ip]
		mac := net.HardwareAddr(e.mac)
		if _, ok := wantFDB[mac.String()]; !ok {
			wantFDB[mac.String()] = dest{mac: mac, vtep: e.vtep}
			macs = append(macs, mac.String())
		}
	}
	slices.Sort(macs)

	// What is.
	haveFDB := map[string][]netip.Addr{} // by MAC as formatted: its remotes, in order
	for _, r := range fdbs {
		haveFDB[r.MAC] = append(haveFDB[r.MAC], r.VTEP)
	}
	haveNeigh := map[netip.Addr]net.HardwareAddr{}
	for _, n := range neighs {
		haveNeigh[n.IP] = n.MAC
	}

	var out []syncChange
	for _, m := range macs {
		w := wantFDB[m]
		had := haveFDB[m]
		if slices.Contains(had, w.vtep) {
			continue
		}
		c := syncChange{
			what: fmt.Sprintf("set fdb %s dst %s", w.mac, w.vtep),
			do:   func(ctx context.Context) error { return sb.setFDB(ctx, w.mac, w.vtep) },
		}
		if len(had) > 0 {
			// A set replaces the first remote.
			c.undo = func(ctx context.Context) error { return sb.setFDB(ctx, w.mac, had[0]) }
		} else {
			c.undo = func(ctx context.Context) error { return sb.delFDB(ctx, w.mac, w.vtep) }
		}
		out = append(out, c)
	}
	for _, ip := range ips {
		mac := net.HardwareAddr(table[ip].mac)
		old, had := haveNeigh[ip]
		if had && bytes.Equal(old, mac) {
			continue
		}
		c := syncChange{
			what: fmt.Sprintf("set neighbour %s lladdr %s", ip, mac),
			do:   func(ctx context.Context) error { return sb.setNeighbour(ctx, ip, mac) },
		}
		if had {
			c.undo = func(ctx context.Context) error { return sb.setNeighbour(ctx, ip, old) }
		} else {
			c.undo = func(ctx context.Context) error { return sb.deleteNeighbour(ctx, ip, mac) }
		}
		out = append(out, c)
	}
	var stale []netip.Addr
	for ip := range haveNeigh {
		if _, ok := table[ip]; !ok {
			stale = append(stale, ip)
		}
	}
	slices.SortFunc(stale, netip.Addr.Compare)
	for _, ip := range stale {
		mac := haveNeigh[ip]
		out = append(out, syncChange{
			what: fmt.Sprintf("delete stale neighbour %s lladdr %s", ip, mac),
			do:   func(ctx context.Context) error { return sb.deleteNeighbour(ctx, ip, mac) },
			undo: func(ctx context.Context) error { return sb.setNeighbour(ctx, ip, mac) },
		})
	}
	staleFDB := slices.Clone(fdbs)
	slices.SortFunc(staleFDB, func(a, b fdbRecord) int {
		if c := strings.Compare(a.MAC, b.MAC); c != 0 {
			return c
		}
		return a.VTEP.Compare(b.VTEP)
	})
	for _, r := range staleFDB {
		if w, ok := wantFDB[r.MAC]; ok && w.vtep == r.VTEP {
			continue
		}
		mac, err := net.ParseMAC(r.MAC)
		if err != nil {
			continue // not an Ethernet address: not an entry of ours
		}
		// A remote a set above replaced is gone already: its deletion
		// finds nothing, which is no error; undoing it puts it back
		// before the set is undone.
		out = append(out, syncChange{
			what: fmt.Sprintf("delete stale fdb %s dst %s", mac, r.VTEP),
			do:   func(ctx context.Context) error { return sb.delFDB(ctx, mac, r.VTEP) },
			undo: func(ctx context.Context) error { return sb.setFDB(ctx, mac, r.VTEP) },
		})
	}
	return out
}
