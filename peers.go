package cnm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/seed53641549/cnm/drivers/overlay"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// The peer table: one etcd key per endpoint of a global network, written
// by its host under the host's lease. Every host watches endpoints/ and
// turns other hosts' joined endpoints into overlay peers (static FDB and
// neighbour entries) and into names for service discovery.

// peerRecord is the value of an endpoint's key in the peer table.
type peerRecord struct {
	Host   string       `json:"host"` // the controller's ID
	VTEP   netip.Addr   `json:"vtep"`
	MAC    string       `json:"mac"`
	IPv4   netip.Prefix `json:"ipv4,omitzero"`
	IPv6   netip.Prefix `json:"ipv6,omitzero"`
	Joined bool         `json:"joined,omitempty"`
	Names  []string     `json:"names,omitempty"` // for service discovery, while joined

	rev uint64 // etcd revision of the record, in the table only
}

func (r peerRecord) addrs() []netip.Addr {
	var out []netip.Addr
	for _, p := range []netip.Prefix{r.IPv4, r.IPv6} {
		if p.IsValid() {
			out = append(out, p.Addr())
		}
	}
	return out
}

// peerRecordOf returns ep's record, joined to sb when sb is set.
func (g *globalPlane) peerRecordOf(ep *Endpoint, sb *Sandbox) []byte {
	r := peerRecord{Host: string(g.c.owner), VTEP: g.vtep, MAC: ep.mac.String(), IPv4: ep.ipv4, IPv6: ep.ipv6}
	if sb != nil {
		r.Joined, r.Names = true, ep.dnsNames(sb)
	}
	b, _ := json.Marshal(r)
	return b
}

// publishEndpoint writes a new endpoint's record now (a global operation:
// it fails within the request timeout when etcd is down), or fails with
// ErrNotFound if the network was deleted meanwhile.
func (g *globalPlane) publishEndpoint(ctx context.Context, ep *Endpoint) error {
	conds := []etcdstore.Cond{{Key: gNetworkKey(ep.nw.id), Revision: ep.nw.globalRev}}
	err := g.outbox.write(ctx, g, gEndpointKey(ep.nw.id, ep.id), g.peerRecordOf(ep, nil), conds)
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%w: network %q was deleted by another host", ErrNotFound, ep.nw.name)
	}
	if err != nil {
		return fmt.Errorf("global store: publish endpoint: %w", err)
	}
	return nil
}

// withdrawEndpoint deletes ep's record now.
func (g *globalPlane) withdrawEndpoint(ctx context.Context, ep *Endpoint) error {
	if err := g.outbox.write(ctx, g, gEndpointKey(ep.nw.id, ep.id), nil, nil); err != nil {
		return fmt.Errorf("global store: withdraw endpoint: %w", err)
	}
	return nil
}

// republish writes again, in the background, the record of every endpoint
// of this host on a global network (after restore, or under a new lease).
func (g *globalPlane) republish() {
	for _, n := range g.c.Networks() {
		if !n.global {
			continue
		}
		for _, ep := range n.Endpoints() {
			ep.mu.Lock()
			sb := ep.sandbox
			ep.mu.Unlock()
			g.outbox.post(gEndpointKey(n.id, ep.id), g.peerRecordOf(ep, sb))
		}
	}
}

// outbox serialises this host's writes of each endpoint's record. A write
// that must fail when etcd is down (create, join) is made at once; one
// that must not (a leave, a sandbox's deletion) is posted and retried in
// the background until it lands. A later write of a key replaces a
// posted one that has not landed.
type outbox struct {
	mu      sync.Mutex
	pending map[string][]byte // nil value: delete
	locks   map[string]*sync.Mutex
	kick    chan struct{}
}

func (o *outbox) init() {
	o.pending, o.locks, o.kick = map[string][]byte{}, map[string]*sync.Mutex{}, make(chan struct{}, 1)
}

// lock returns key's lock, held while the key is written.
func (o *outbox) lock(key string) *sync.Mutex {
	o.mu.Lock()
	defer o.mu.Unlock()
	l := o.locks[key]
	if l == nil {
		l = &sync.Mutex{}
		o.locks[key] = l
	}
	return l
}

// write writes val at key (nil: deletes key) now, if conds hold.
func (o *outbox) write(ctx context.Context, g *globalPlane, key string, val []byte, conds []etcdstore.Cond) error {
	l := o.lock(key)
	l.Lock()
	defer l.Unlock()
	o.mu.Lock()
	delete(o.pending, key)
	o.mu.Unlock()
	return g.put(ctx, key, val, conds)
}

// post writes val at key in the background.
func (o *outbox) post(key string, val []byte) {
	o.mu.Lock()
	o.pending[key] = val
	o.mu.Unlock()
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// run writes what is posted until g closes, retrying with backoff.
func (o *outbox) run(g *globalPlane) {
	backoff := time.Duration(0)
	for {
		var retry <-chan time.Time
		if backoff > 0 {
			retry = time.After(backoff)
		}
		select {
		case <-g.ctx.Done():
			return
		case <-o.kick:
		case <-retry:
		}
		o.mu.Lock()
		keys := make([]string, 0, len(o.pending))
		for k := range o.pending {
			keys = append(keys, k)
		}
		o.mu.Unlock()
		failed := false
		for _, k := range keys {
			if !o.flush(g, k) {
				failed = true
			}
		}
		switch {
		case !failed:
			backoff = 0
		case backoff == 0:
			backoff = 100 * time.Millisecond
		default:
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}

// flush writes key's posted value, if it is still posted; false if the
// write failed (it stays posted).
func (o *outbox) flush(g *globalPlane, key string) bool {
	l := o.lock(key)
	l.Lock()
	defer l.Unlock()
	o.mu.Lock()
	val, ok := o.pending[key]
	delete(o.pending, key)
	o.mu.Unlock()
	if !ok {
		return true
	}
	err := g.put(g.ctx, key, val, nil)
	if err == nil {
		if val == nil {
			o.mu.Lock()
			delete(o.locks, key)
			o.mu.Unlock()
		}
		return true
	}
	if g.ctx.Err() == nil {
		g.c.log.Warn("cnm: global store: write endpoint record: retrying", "key", key, "err", err)
	}
	o.mu.Lock()
	if _, newer := o.pending[key]; !newer {
		o.pending[key] = val
	}
	o.mu.Unlock()
	return false
}

// put writes one endpoint record under the host's lease, or deletes it.
func (g *globalPlane) put(ctx context.Context, key string, val []byte, conds []etcdstore.Cond) error {
	op := etcdstore.Op{Key: key, Delete: true}
	if val != nil {
		op = etcdstore.Op{Key: key, Value: val, Lease: g.currentLease()}
	}
	_, err := g.kv.TxnIf(ctx, conds, op)
	return err
}

// peerTable is what this host knows of other hosts' endpoints: those of
// the global networks this host has endpoints on, each followed by a
// watch of its own (a host on one network of a hundred hears of that one
// only; see docs/overlay-scale.md).
type peerTable struct {
	mu    sync.Mutex
	byKey map[string]peerRecord // endpoints/<network>/<endpoint> of other hosts

	watchMu sync.Mutex
	watches map[string]context.CancelFunc // by network ID
}

// follow starts the watch of network n's peers, unless it runs.
func (t *peerTable) follow(g *globalPlane, n *Network) {
	t.watchMu.Lock()
	defer t.watchMu.Unlock()
	if t.watches == nil {
		t.watches = map[string]context.CancelFunc{}
	}
	if _, ok := t.watches[n.id]; ok || g.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(g.ctx)
	t.watches[n.id] = cancel
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.watchPeers(ctx, gEndpoints+n.id+"/")
	}()
}

// unfollow stops the watch of network id's peers and forgets them: this
// host has no endpoint on it any more.
func (t *peerTable) unfollow(g *globalPlane, id string) {
	t.watchMu.Lock()
	cancel := t.watches[id]
	delete(t.watches, id)
	t.watchMu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	t.resync(g, gEndpoints+id+"/", nil)
}

// followIfUsed starts or stops the watch of n's peers as this host has
// endpoints on it or not.
func (g *globalPlane) followIfUsed(n *Network) {
	if !n.global {
		return
	}
	n.mu.Lock()
	used := len(n.endpoints) > 0
	n.mu.Unlock()
	if used {
		g.peers.follow(g, n)
	} else {
		g.peers.unfollow(g, n.id)
	}
}

// splitEndpointKey returns the network and endpoint IDs of an endpoint key.
func splitEndpointKey(key string) (nid, eid string, ok bool) {
	nid, eid, ok = strings.Cut(strings.TrimPrefix(key, gEndpoints), "/")
	return nid, eid, ok && nid != "" && eid != ""
}

// set applies one record of the table (nil: deleted). An endpoint is a
// peer (FDB and neighbour entries) from the moment it is made, so that
// when its Join returns on its host, the other hosts reach it already: the
// record written at CreateEndpoint carries it, and Join's own write, in
// the background, only adds its names for service discovery. The old
// record's peers and names go, the new one's come.
func (t *peerTable) set(g *globalPlane, key string, rec *peerRecord) {
	nid, eid, ok := splitEndpointKey(key)
	if !ok {
		return
	}
	if rec != nil && rec.Host == string(g.c.owner) {
		rec = nil // this host's own: reached through the bridge
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byKey == nil {
		t.byKey = map[string]peerRecord{}
	}
	old, had := t.byKey[key]
	delete(t.byKey, key)
	if rec != nil {
		t.byKey[key] = *rec
	}
	samePeer := had && rec != nil && old.VTEP == rec.VTEP && old.MAC == rec.MAC && old.IPv4 == rec.IPv4 && old.IPv6 == rec.IPv6
	sameNames := had && rec != nil && old.Joined == rec.Joined && slices.Equal(old.Names, rec.Names)
	n := g.network(nid)
	if had && !samePeer {
		for _, a := range old.addrs() {
			if err := g.ov.RemovePeer(g.ctx, overlay.Peer{NetworkID: nid, IP: a, MAC: parseMAC(old.MAC), VTEP: old.VTEP}); err != nil {
				g.c.log.Warn("cnm: remove overlay peer", "network", nid, "ip", a, "err", err)
			}
		}
	}
	if had && old.Joined && !sameNames && n != nil {
		n.names.remove(eid)
	}
	if rec == nil {
		return
	}
	if !samePeer {
		mac := parseMAC(rec.MAC)
		for _, a := range rec.addrs() {
			if err := g.ov.AddPeer(g.ctx, overlay.Peer{NetworkID: nid, IP: a, MAC: mac, VTEP: rec.VTEP}); err != nil {
				g.c.log.Warn("cnm: add overlay peer", "network", nid, "ip", a, "vtep", rec.VTEP, "err", err)
			}
		}
	}
	if rec.Joined && !sameNames && n != nil {
		n.names.add(eid, rec.Names, rec.addrs())
	}
}

// networkAdded indexes the names of the peers of a network this host just
// took (their FDB entries the driver remembered already).
func (t *peerTable) networkAdded(g *globalPlane, n *Network) {
	t.mu.Lock()
	defer t.mu.Unlock()
	prefix := gEndpoints + n.id + "/"
	for key, rec := range t.byKey {
		if rec.Joined && strings.HasPrefix(key, prefix) {
			n.names.add(strings.TrimPrefix(key, prefix), rec.Names, rec.addrs())
		}
	}
}

// network returns the global network id of this host, nil if unknown.
func (g *globalPlane) network(id string) *Network {
	g.c.mu.Lock()
	defer g.c.mu.Unlock()
	if n := g.c.networks[id]; n != nil && n.global {
		return n
	}
	return nil
}

// resync replaces the part of the table under prefix by a listing.
func (t *peerTable) resync(g *globalPlane, prefix string, kvs []store.KV) {
	seen := map[string]bool{}
	for _, kv := range kvs {
		seen[kv.Key] = true
		t.apply(g, kv)
	}
	t.mu.Lock()
	var gone []string
	for k := range t.byKey {
		if strings.HasPrefix(k, prefix) && !seen[k] {
			gone = append(gone, k)
		}
	}
	t.mu.Unlock()
	for _, k := range gone {
		t.set(g, k, nil)
	}
	if nid, _, ok := splitEndpointKey(prefix + "x"); ok {
		t.syncKernel(g, nid)
	}
}

// syncKernel makes the overlay driver's peers of network nid, in its table
// and on its VXLAN device, exactly the table's: entries a restart or a
// missed change left (peers gone meanwhile) go. One address with two
// records (a dead host's, not yet expired, and a new one) takes the newer.
func (t *peerTable) syncKernel(g *globalPlane, nid string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	prefix := gEndpoints + nid + "/"
	newest := map[netip.Addr]peerRecord{}
	for key, r := range t.byKey {
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		for _, a := range r.addrs() {
			if o, ok := newest[a]; !ok || r.rev > o.rev {
				newest[a] = r
			}
		}
	}
	peers := make([]overlay.Peer, 0, len(newest))
	for a, r := range newest {
		peers = append(peers, overlay.Peer{NetworkID: nid, IP: a, MAC: parseMAC(r.MAC), VTEP: r.VTEP})
	}
	if err := g.ov.SyncPeers(g.ctx, nid, peers); err != nil {
		g.c.log.Warn("cnm: sync overlay peers", "network", nid, "err", err)
	}
}

// apply applies one written key.
func (t *peerTable) apply(g *globalPlane, kv store.KV) {
	var r peerRecord
	if err := json.Unmarshal(kv.Value, &r); err != nil || parseMAC(r.MAC) == nil {
		g.c.log.Warn("cnm: peer record unreadable: skipped", "key", kv.Key, "err", err)
		return
	}
	r.rev = kv.Revision
	t.set(g, kv.Key, &r)
}

// watchPeers lists the peers under prefix (one network's), then follows
// them until ctx ends.
func (g *globalPlane) watchPeers(ctx context.Context, prefix string) {
	var rev uint64
	for ctx.Err() == nil {
		if rev == 0 {
			kvs, r, err := g.kv.Snapshot(ctx, prefix)
			if err != nil {
				if ctx.Err() == nil {
					g.c.log.Warn("cnm: global store: list peers: retrying", "prefix", prefix, "err", err)
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
				continue
			}
			g.peers.resync(g, prefix, kvs)
			rev = r
		}
		for b := range g.kv.Watch(ctx, prefix, rev) {
			if b.Err != nil {
				g.c.log.Warn("cnm: watch of the peer table ended: restarting", "prefix", prefix, "err", b.Err)
				break
			}
			if b.Resync {
				g.peers.resync(g, prefix, b.Snapshot)
			}
			for _, ev := range b.Events {
				if ev.Type == etcdstore.EventPut {
					g.peers.apply(g, ev.KV)
				} else {
					g.peers.set(g, ev.KV.Key, nil)
				}
			}
			rev = b.Revision
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
