package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/store"
)

// reconnectMax caps the wait between two attempts to reach an endpoint
// (gRPC adds up to 20% jitter): a client finds an endpoint that refused it
// back within about 1.2 s of its return. An endpoint that drops packets
// instead costs each attempt up to the dial timeout.
const reconnectMax = time.Second

// ErrClosed reports a call on a [Store] after [Store.Close].
var ErrClosed = errors.New("etcd store is closed")

// Store is a [store.Store] on an etcd cluster. Make one with [Open]. It is
// safe for concurrent use.
type Store struct {
	cfg     Config
	cli     *clientv3.Client
	kv      clientv3.KV
	watcher clientv3.Watcher
	lease   clientv3.Lease

	closeOnce sync.Once
	closed    chan struct{}
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open connects to the cluster of cfg.Endpoints and returns the store. It
// validates cfg first (an error wrapping errdefs.ErrInvalid names the bad
// field and value) and then waits up to cfg.DialTimeout, and no longer than
// ctx, for an endpoint to answer a read; otherwise it fails naming the
// endpoints.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.DialTimeout,
		Context:     context.WithoutCancel(ctx),
		// The client's own log would write to stderr behind the
		// program's back; its failures come back as errors.
		Logger: zap.NewNop(),
		// gRPC's own reconnect backoff grows to 120 s: after a long
		// outage a client would find etcd back only minutes later.
		// (The minimum connect timeout stays the dial timeout: a slow
		// TLS handshake must be able to finish.)
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMax},
			MinConnectTimeout: cfg.DialTimeout,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", cfg.Endpoints, err)
	}
	s := &Store{cfg: cfg, cli: cli, kv: cli.KV, watcher: cli.Watcher, lease: cli.Lease, closed: make(chan struct{})}
	if cfg.Prefix != "" {
		s.kv = namespace.NewKV(cli.KV, cfg.Prefix)
		s.watcher = namespace.NewWatcher(cli.Watcher, cfg.Prefix)
		s.lease = namespace.NewLease(cli.Lease, cfg.Prefix)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := s.kv.Get(pctx, "\x00probe", clientv3.WithKeysOnly()); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("etcd %v: no endpoint answered within %s: %w", cfg.Endpoints, cfg.DialTimeout, err)
	}
	return s, nil
}

// Close stops every watch and keep-alive of the store and closes the
// connection. Leases are not revoked: their keys live until they expire.
// Safe to call twice.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.closeErr = s.cli.Close()
	})
	return s.closeErr
}

// reqCtx derives the context of one request: the caller's, bounded by the
// request timeout, and refused once the store is closed.
func (s *Store) reqCtx(ctx context.Context) (context.Context, context.CancelFunc, error) {
	select {
	case <-s.closed:
		return nil, nil, ErrClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	c, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	return c, cancel, nil
}

func checkKey(field, key string) error {
	if key == "" {
		return fmt.Errorf("%w: %s is empty", errdefs.ErrInvalid, field)
	}
	return nil
}

func toKV(kv interface {
	GetKey() []byte
	GetValue() []byte
	GetModRevision() int64
}) store.KV {
	return store.KV{Key: string(kv.GetKey()), Value: kv.GetValue(), Revision: uint64(kv.GetModRevision())}
}

// Get returns the key's value and revision, or an error wrapping
// store.ErrNotFound that names the key.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := checkKey("key", key); err != nil {
		return store.KV{}, err
	}
	c, cancel, err := s.reqCtx(ctx)
	if err != nil {
		return store.KV{}, fmt.Errorf("get %q: %w", key, err)
	}
	defer cancel()
	resp, err := s.kv.Get(c, key)
	if err != nil {
		return store.KV{}, fmt.Errorf("get %q: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KV{}, fmt.Errorf("get %q: %w", key, store.ErrNotFound)
	}
	return toKV(resp.Kvs[0]), nil
}

// List returns every key with the prefix, sorted by key, read at one
// revision. An empty prefix lists every key of the store.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, error) {
	kvs, _, err := s.Snapshot(ctx, prefix)
	return kvs, err
}

// Snapshot returns every key with the prefix, sorted by key, and the store
// revision they were read at: a watch started after that revision
// ([Store.Watch]) then misses nothing.
func (s *Store) Snapshot(ctx context.Context, prefix string) ([]store.KV, uint64, error) {
	c, cancel, err := s.reqCtx(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("list %q: %w", prefix, err)
	}
	defer cancel()
	resp, err := s.kv.Get(c, prefixKey(prefix), prefixOpts(prefix, clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))...)
	if err != nil {
		return nil, 0, fmt.Errorf("list %q: %w", prefix, err)
	}
	out := make([]store.KV, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = toKV(kv)
	}
	return out, uint64(resp.Header.Revision), nil
}

// prefixKey and prefixOpts select every key with prefix; the empty prefix
// selects the whole key space (of the store's namespace).
func prefixKey(prefix string) string {
	if prefix == "" {
		return "\x00"
	}
	return prefix
}

func prefixOpts(prefix string, more ...clientv3.OpOption) []clientv3.OpOption {
	if prefix == "" {
		return append(more, clientv3.WithFromKey())
	}
	return append(more, clientv3.WithPrefix())
}

// Txn applies all ops atomically: all of them or none. Deleting a missing
// key is not an error. When ops name one key twice, the last op on it wins.
func (s *Store) Txn(ctx context.Context, ops ...store.Op) error {
	if len(ops) == 0 {
		return nil
	}
	last := make(map[string]int, len(ops))
	for i, op := range ops {
		if err := checkKey(fmt.Sprintf("ops[%d].key", i), op.Key); err != nil {
			return err
		}
		last[op.Key] = i
	}
	w := make([]Op, 0, len(last))
	for i, op := range ops {
		if last[op.Key] == i {
			w = append(w, Op{Key: op.Key, Value: op.Value, Delete: op.Delete})
		}
	}
	_, err := s.TxnIf(ctx, nil, w...)
	return err
}

// CompareAndSwap writes value at key only if the key's revision is rev (0:
// only if the key does not exist), and returns the new revision. A mismatch
// is an error wrapping store.ErrConflict naming the key and both revisions.
func (s *Store) CompareAndSwap(ctx context.Context, key string, rev uint64, value []byte) (uint64, error) {
	return s.TxnIf(ctx, []Cond{{Key: key, Revision: rev}}, Op{Key: key, Value: value})
}

// KV is the part of [Store] that users of the global store build on (the
// global address allocators, the overlay key ring): reads, conditional
// transactions and watches. Tests may serve it otherwise.
type KV interface {
	Get(ctx context.Context, key string) (store.KV, error)
	Snapshot(ctx context.Context, prefix string) ([]store.KV, uint64, error)
	TxnIf(ctx context.Context, conds []Cond, ops ...Op) (uint64, error)
	Watch(ctx context.Context, prefix string, after uint64) <-chan WatchBatch
}

var _ KV = (*Store)(nil)
