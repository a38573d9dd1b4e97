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
	"sync/atomic"
	"time"

	"github.com/seed53641549/cnm/drivers/overlay"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// The peer table: one etcd key per endpoint of a global network, written
// by its host under the host's lease. Every host watches the part of it of
// each global network it has endpoints on, and turns other hosts'
// endpoints into overlay peers (static FDB and neighbour entries) and
// their joined ones into names for service discovery.

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

func (r peerRecord) addrs() []netip.Addr { return addrsOf(r.IPv4, r.IPv6) }

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
	key := gEndpointKey(ep.nw.id, ep.id)
	err := g.outbox.write(ctx, g, key, g.peerRecordOf(ep, nil), conds)
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%w: network %q was deleted by another host", ErrNotFound, ep.nw.name)
	}
	if err != nil {
		// It may have landed all the same (a timeout on the answer):
		// its deletion follows, once etcd answers.
		g.outbox.post(key, nil)
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

// postEndpoint writes ep's record (joined to sb; not joined when sb is
// nil) in the background; postWithdraw deletes it in the background.
func (g *globalPlane) postEndpoint(ep *Endpoint, sb *Sandbox) {
	g.outbox.post(gEndpointKey(ep.nw.id, ep.id), g.peerRecordOf(ep, sb))
}

func (g *globalPlane) postWithdraw(ep *Endpoint) { g.outbox.post(gEndpointKey(ep.nw.id, ep.id), nil) }

// republish writes again, in the background, the record of every endpoint
// of this host on a global network (after restore, or under a new lease).
func (g *globalPlane) republish() {
	for _, n := range g.c.Networks() {
		if !n.global {
			continue
		}
		for _, ep := range n.Endpoints() {
			// A deleted endpoint's record goes; one in a join, leave or
			// delete gets its record from that operation.
			ep.mu.Lock()
			if !ep.deleted && !ep.busy {
				g.postEndpoint(ep, ep.sandbox)
			}
			ep.mu.Unlock()
		}
	}
}

// outbox serialises this host's writes of each endpoint's record. A write
// that must fail when etcd is down (CreateEndpoint) is made at once; one
// that must not (a join, a leave, a sandbox's deletion) is posted and
// retried in the background until it lands. A later write of a key
// replaces a posted one that has not landed.
type outbox struct {
	mu      sync.Mutex
	pending map[string][]byte   // nil value: delete
	locks   map[string]*keyLock // held while a key is written
	kick    chan struct{}
}

// keyLock is one key's write lock, dropped from outbox.locks when nobody
// holds or waits for it.
type keyLock struct {
	sync.Mutex
	refs int // guarded by outbox.mu
}

func (o *outbox) init() {
	o.pending, o.locks, o.kick = map[string][]byte{}, map[string]*keyLock{}, make(chan struct{}, 1)
}

// acquire locks key for writing; release unlocks it.
func (o *outbox) acquire(key string) *keyLock {
	o.mu.Lock()
	l := o.locks[key]
	if l == nil {
		l = &keyLock{}
		o.locks[key] = l
	}
	l.refs++
	o.mu.Unlock()
	l.Lock()
	return l
}

func (o *outbox) release(key string, l *keyLock) {
	l.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	if l.refs--; l.refs == 0 {
		delete(o.locks, key)
	}
}

// write writes val at key (nil: deletes key) now, if conds hold.
func (o *outbox) write(ctx context.Context, g *globalPlane, key string, val []byte, conds []etcdstore.Cond) error {
	l := o.acquire(key)
	defer o.release(key, l)
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

// run writes what is posted until g stops, retrying with backoff.
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
		failed := o.flushAll(g.ctx, g, "") != nil
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

// flushAll writes every posted value whose key has the prefix now; the
// error is the first failure (what failed stays posted).
func (o *outbox) flushAll(ctx context.Context, g *globalPlane, prefix string) error {
	o.mu.Lock()
	var keys []string
	for k := range o.pending {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	o.mu.Unlock()
	var first error
	for _, k := range keys {
		if err := o.flush(ctx, g, k); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// flush writes key's posted value, if it is still posted; on failure it
// stays posted, unless a newer one replaced it meanwhile.
func (o *outbox) flush(ctx context.Context, g *globalPlane, key string) error {
	l := o.acquire(key)
	defer o.release(key, l)
	o.mu.Lock()
	val, ok := o.pending[key]
	delete(o.pending, key)
	o.mu.Unlock()
	if !ok {
		return nil
	}
	err := g.put(ctx, key, val, nil)
	if err == nil {
		return nil
	}
	if g.ctx.Err() == nil {
		g.c.log.Warn("cnm: global store: write endpoint record: retrying", "key", key, "err", err)
	}
	o.mu.Lock()
	if _, newer := o.pending[key]; !newer {
		o.pending[key] = val
	}
	o.mu.Unlock()
	return fmt.Errorf("write %s: %w", key, err)
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
//
// Lock order: watchMu, then Network.mu; mu is taken with no other lock of
// the controller's held, and held while the overlay driver programs a peer
// (so that the kernel follows the table in the table's order) and while a
// network's name index (its own lock, taken last) changes.
type peerTable struct {
	mu   sync.Mutex
	nets map[string]map[string]peerRecord // network ID → endpoint ID → other hosts' records

	watchMu sync.Mutex
	watches map[string]*peerWatch // by network ID
	started atomic.Int64          // watches started (tests count them)
}

// peerWatch is the watch of one network's peers.
type peerWatch struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when its goroutine has returned
	idle   *time.Timer   // set while this host has no endpoint on the network
}

// peerWatchIdle is how long the watch of a network's peers outlives this
// host's last endpoint on it. A container's restart deletes its endpoints
// and makes new ones: without it, the watch of a network where it was the
// host's only container would stop and start again (a listing of the
// network's peers, two kernel syncs). The same as the network namespace's
// idle time, so that a namespace that stays has its peers.
const peerWatchIdle = overlayIdle

// followIfUsed starts the watch of n's peers when this host has an
// endpoint on it, and stops it peerWatchIdle after it has none any more
// (unfollow stops it at once).
func (g *globalPlane) followIfUsed(n *Network) {
	if !n.global {
		return
	}
	t := &g.peers
	t.watchMu.Lock()
	defer t.watchMu.Unlock()
	n.mu.Lock()
	used := len(n.endpoints) > 0
	n.mu.Unlock()
	w := t.watches[n.id]
	switch {
	case used && w == nil && g.ctx.Err() == nil:
		if t.watches == nil {
			t.watches = map[string]*peerWatch{}
		}
		// The peers are listed now, so that the first Join on this host
		// finds them (a container's first packets go to them); if etcd
		// does not answer, the watch lists them when it can.
		var rev uint64
		if kvs, r, err := g.kv.Snapshot(g.ctx, gEndpoints+n.id+"/"); err == nil {
			t.resync(g, n.id, kvs)
			rev = r
		}
		ctx, cancel := context.WithCancel(g.ctx)
		w = &peerWatch{cancel: cancel, done: make(chan struct{})}
		t.watches[n.id] = w
		t.started.Add(1)
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			defer close(w.done)
			g.watchPeers(ctx, n.id, rev)
		}()
	case used && w != nil && w.idle != nil:
		w.idle.Stop()
		w.idle = nil
	case !used && w != nil && w.idle == nil:
		w.idle = time.AfterFunc(peerWatchIdle, func() {
			t.watchMu.Lock()
			defer t.watchMu.Unlock()
			if t.watches[n.id] != w || w.idle == nil || g.ctx.Err() != nil {
				return // used again, unfollowed, or stopping
			}
			t.stopLocked(g, n.id, w)
		})
	}
}

// unfollow stops the watch of network id's peers now and forgets them
// (the network is gone from this host).
func (g *globalPlane) unfollow(id string) {
	t := &g.peers
	t.watchMu.Lock()
	defer t.watchMu.Unlock()
	if w := t.watches[id]; w != nil {
		t.stopLocked(g, id, w)
	}
}

// stopLocked stops w, network id's watch, and forgets its peers; its
// goroutine has returned and no batch of it is applied after. The caller
// holds watchMu.
func (t *peerTable) stopLocked(g *globalPlane, id string, w *peerWatch) {
	if w.idle != nil {
		w.idle.Stop()
		w.idle = nil
	}
	delete(t.watches, id)
	w.cancel()
	<-w.done
	t.resync(g, id, nil)
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
// record's peers and names go, the new one's come; without program, only
// in the table and the names (a resync programs the driver once after).
func (t *peerTable) set(g *globalPlane, key string, rec *peerRecord, program bool) {
	nid, eid, ok := splitEndpointKey(key)
	if !ok {
		return
	}
	if rec != nil && rec.Host == string(g.c.owner) {
		rec = nil // this host's own: reached through the bridge
	}
	n := g.network(nid) // before t.mu: it takes the controller's lock
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nets == nil {
		t.nets = map[string]map[string]peerRecord{}
	}
	recs := t.nets[nid]
	old, had := recs[eid]
	delete(recs, eid)
	if rec != nil {
		if recs == nil {
			recs = map[string]peerRecord{}
			t.nets[nid] = recs
		}
		recs[eid] = *rec
	} else if len(recs) == 0 {
		delete(t.nets, nid)
	}
	samePeer := had && rec != nil && old.VTEP == rec.VTEP && old.MAC == rec.MAC && old.IPv4 == rec.IPv4 && old.IPv6 == rec.IPv6
	sameNames := had && rec != nil && old.Joined == rec.Joined && slices.Equal(old.Names, rec.Names)
	if had && !samePeer && program {
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
	if !samePeer && program {
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

// network returns the global network id of this host, nil if unknown.
func (g *globalPlane) network(id string) *Network {
	g.c.mu.Lock()
	defer g.c.mu.Unlock()
	if n := g.c.networks[id]; n != nil && n.global {
		return n
	}
	return nil
}

// resync replaces network nid's part of the table by a listing, then
// makes the overlay driver's peers of nid exactly the table's, in one go.
func (t *peerTable) resync(g *globalPlane, nid string, kvs []store.KV) {
	seen := map[string]bool{}
	for _, kv := range kvs {
		seen[kv.Key] = true
		t.apply(g, kv, false)
	}
	t.mu.Lock()
	var gone []string
	for eid := range t.nets[nid] {
		if k := gEndpointKey(nid, eid); !seen[k] {
			gone = append(gone, k)
		}
	}
	t.mu.Unlock()
	for _, k := range gone {
		t.set(g, k, nil, false)
	}
	t.syncKernel(g, nid)
}

// syncKernel makes the overlay driver's peers of network nid, in its table
// and on its VXLAN device, exactly the table's: entries a restart or a
// missed change left (peers gone meanwhile) go. One address with two
// records (a dead host's, not yet expired, and a new one) takes the newer.
func (t *peerTable) syncKernel(g *globalPlane, nid string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	newest := map[netip.Addr]peerRecord{}
	for _, r := range t.nets[nid] {
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

// apply applies one written key (see set for program).
func (t *peerTable) apply(g *globalPlane, kv store.KV, program bool) {
	var r peerRecord
	if err := json.Unmarshal(kv.Value, &r); err != nil || parseMAC(r.MAC) == nil {
		// What it said before is not true any more: the peer goes.
		g.c.log.Warn("cnm: peer record unreadable: taken as deleted", "key", kv.Key, "err", err)
		t.set(g, kv.Key, nil, program)
		return
	}
	r.rev = kv.Revision
	t.set(g, kv.Key, &r, program)
}

// watchPeers follows network nid's peers from revision rev (0: it lists
// them first) until ctx ends.
func (g *globalPlane) watchPeers(ctx context.Context, nid string, rev uint64) {
	prefix := gEndpoints + nid + "/"
	failed := func(err error) {
		g.c.log.Warn("cnm: watch of the peer table ended: restarting", "prefix", prefix, "err", err)
	}
	etcdstore.ListAndFollow(ctx, g.kv, prefix, rev, time.Second, failed, func(b etcdstore.WatchBatch) bool {
		if b.Resync {
			g.peers.resync(g, nid, b.Snapshot)
		}
		for _, ev := range b.Events {
			if ev.Type == etcdstore.EventPut {
				g.peers.apply(g, ev.KV, true)
			} else {
				g.peers.set(g, ev.KV.Key, nil, true)
			}
		}
		return true
	})
}
