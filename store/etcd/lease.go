package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/seed53641549/cnm/errdefs"
)

// ErrLeaseLost reports a lease that is no longer alive: revoked, expired
// (not renewed within its TTL, e.g. while etcd was unreachable), or ended
// with its store. Keys written under it are gone or about to go.
var ErrLeaseLost = errors.New("lease lost")

// Lease is an etcd lease kept alive in the background by its [Store]. Keys
// put under it ([Op].Lease, [Store.PutWithLease]) are deleted by etcd when
// it ends. It is safe for concurrent use.
type Lease struct {
	s      *Store
	id     clientv3.LeaseID
	ttl    time.Duration
	cancel context.CancelFunc // stops the keep-alive
	lost   chan struct{}      // closed when the lease ends, for whatever reason

	mu  sync.Mutex
	err error // why it ended; nil while alive
}

// GrantLease grants a lease of the given TTL (at least one second; etcd
// counts in whole seconds and rounds up) and keeps it alive until
// [Lease.Revoke], [Store.Close], or a failure to renew it within the TTL,
// which is reported on [Lease.Lost]. The client checks renewals once a
// second, so a loss is reported at most about a second after the TTL has
// passed without a renewal (before the first renewal has come back, only
// after the dial timeout plus a second).
func (s *Store) GrantLease(ctx context.Context, ttl time.Duration) (*Lease, error) {
	if ttl < time.Second {
		return nil, fmt.Errorf("%w: lease ttl %s is below the minimum of 1s", errdefs.ErrInvalid, ttl)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	c, cancel, err := s.reqCtx(ctx)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	defer cancel()
	resp, err := s.lease.Grant(c, secs)
	if err != nil {
		return nil, fmt.Errorf("grant lease of %ds: %w", secs, err)
	}
	return s.keepAlive(resp.ID, time.Duration(resp.TTL)*time.Second)
}

// AdoptLease takes over the lease id that an earlier client granted (this
// host's previous run, e.g. a controller restarted within the TTL), so that
// the keys put under it stay. From then on it is kept alive exactly as
// [Store.GrantLease]'s leases are, with the same [Lease.Lost] and
// [Lease.Err]; its [Lease.TTL] is the TTL etcd granted it. AdoptLease
// renews it once before it returns. A lease that no longer exists (it
// expired or was revoked; its keys are gone) is an error wrapping
// [ErrLeaseLost] naming it; an id of 0 or below is an error wrapping
// errdefs.ErrInvalid. Only one live Lease should keep one lease ID alive:
// the caller drops the earlier holder (another process, or the Lease of a
// closed Store) first.
func (s *Store) AdoptLease(ctx context.Context, id int64) (*Lease, error) {
	if id <= 0 {
		return nil, fmt.Errorf("%w: lease id %d is not a lease (ids are positive)", errdefs.ErrInvalid, id)
	}
	lid := clientv3.LeaseID(id)
	c, cancel, err := s.reqCtx(ctx)
	if err != nil {
		return nil, fmt.Errorf("adopt lease %x: %w", id, err)
	}
	defer cancel()
	// Renew it now: it may have had well under a second left. A lease that
	// ended is reported here (the client turns etcd's TTL of -1 into "not
	// found"), and a renewed one answers with its granted TTL.
	ka, err := s.lease.KeepAliveOnce(c, lid)
	if err != nil {
		if isLeaseNotFound(err) {
			return nil, fmt.Errorf("adopt lease %x: expired or revoked: %w", id, ErrLeaseLost)
		}
		return nil, fmt.Errorf("adopt lease %x: renew: %w", id, err)
	}
	return s.keepAlive(lid, time.Duration(ka.TTL)*time.Second)
}

// keepAlive starts keeping lease id alive in the background and returns its
// Lease.
func (s *Store) keepAlive(id clientv3.LeaseID, ttl time.Duration) (*Lease, error) {
	kctx, kcancel := context.WithCancel(context.Background())
	ka, err := s.lease.KeepAlive(kctx, id)
	if err != nil {
		kcancel()
		return nil, fmt.Errorf("keep lease %x alive: %w", int64(id), err)
	}
	l := &Lease{s: s, id: id, ttl: ttl, cancel: kcancel, lost: make(chan struct{})}
	go l.keepAlive(ka)
	return l, nil
}

// keepAlive drains the keep-alive responses until the client gives up, then
// reports the loss.
func (l *Lease) keepAlive(ka <-chan *clientv3.LeaseKeepAliveResponse) {
	for range ka {
	}
	reason := "not renewed within its ttl"
	select {
	case <-l.s.closed:
		reason = "store closed"
	default:
	}
	l.end(fmt.Errorf("lease %x (ttl %s): %s: %w", int64(l.id), l.ttl, reason, ErrLeaseLost))
}

// end records why the lease ended, once, and closes Lost.
func (l *Lease) end(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
		close(l.lost)
	}
}

// ID returns etcd's ID of the lease.
func (l *Lease) ID() int64 { return int64(l.id) }

// TTL returns the lease's time to live as granted by etcd.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Lost returns a channel closed when the lease ends: revoked, expired, or
// ended with its store. [Lease.Err] then says why.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Err returns nil while the lease is alive, and afterwards an error wrapping
// [ErrLeaseLost] that says why it ended.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Revoke ends the lease now: etcd deletes every key put under it. Revoking a
// lease that already ended is not an error.
func (l *Lease) Revoke(ctx context.Context) error {
	if l.Err() != nil {
		return nil
	}
	c, cancel, err := l.s.reqCtx(ctx)
	if err != nil {
		return fmt.Errorf("revoke lease %x: %w", int64(l.id), err)
	}
	defer cancel()
	if _, err := l.s.lease.Revoke(c, l.id); err != nil && !isLeaseNotFound(err) {
		return fmt.Errorf("revoke lease %x: %w", int64(l.id), err)
	}
	l.end(fmt.Errorf("lease %x: revoked: %w", int64(l.id), ErrLeaseLost))
	l.cancel()
	return nil
}

// Keys returns, sorted, the keys under prefix put under the lease, as
// etcd keeps them with it: a host's own records without a listing of
// everyone's. A lease that ended is an error wrapping [ErrLeaseLost].
func (l *Lease) Keys(ctx context.Context, prefix string) ([]string, error) {
	if err := l.Err(); err != nil {
		return nil, err
	}
	c, cancel, err := l.s.reqCtx(ctx)
	if err != nil {
		return nil, fmt.Errorf("keys of lease %x: %w", int64(l.id), err)
	}
	defer cancel()
	resp, err := l.s.lease.TimeToLive(c, l.id, clientv3.WithAttachedKeys())
	if err != nil {
		return nil, fmt.Errorf("keys of lease %x: %w", int64(l.id), err)
	}
	if resp.TTL < 0 {
		err := fmt.Errorf("lease %x: expired or revoked: %w", int64(l.id), ErrLeaseLost)
		l.end(err)
		return nil, fmt.Errorf("keys of %w", err)
	}
	var keys []string
	for _, k := range resp.Keys {
		if strings.HasPrefix(string(k), prefix) {
			keys = append(keys, string(k))
		}
	}
	slices.Sort(keys)
	return keys, nil
}

// PutWithLease writes value at key under the lease and returns the new
// revision. It fails with an error wrapping [ErrLeaseLost] when the lease
// has ended.
func (s *Store) PutWithLease(ctx context.Context, key string, value []byte, l *Lease) (uint64, error) {
	if l == nil {
		return 0, fmt.Errorf("%w: put %q: lease is nil", errdefs.ErrInvalid, key)
	}
	return s.TxnIf(ctx, nil, Op{Key: key, Value: value, Lease: l})
}

func isLeaseNotFound(err error) bool {
	return errors.Is(err, rpctypes.ErrLeaseNotFound)
}
