package etcdstore

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/store"
)

// Cond is one condition of [Store.TxnIf]: the key's revision is Revision,
// or, with Revision 0, the key does not exist.
//
// With Prefix set, Key is a prefix and the condition holds when no key
// that begins with it exists ("endpoints/<id>/" is empty); Revision must
// then be 0, anything else is refused with errdefs.ErrInvalid.
type Cond struct {
	Key      string
	Revision uint64
	Prefix   bool
}

// Op is one write of [Store.TxnIf]: a put of Value at Key, or with Delete a
// delete of Key (and with Prefix as well, of every key that begins with
// Key). A put with a Lease is attached to it: the key is deleted when the
// lease is revoked or expires.
type Op struct {
	Key    string
	Value  []byte
	Delete bool
	Prefix bool
	Lease  *Lease
}

// TxnIf applies ops atomically if every condition holds, and returns the
// store revision after the transaction. When a condition fails nothing is
// written and the error wraps store.ErrConflict, naming the first key whose
// revision differs with its expected and actual revisions, or the first
// prefix condition's prefix with a key found under it. Ops must not
// name one key twice (etcd refuses it). A put under a lost lease fails with
// an error wrapping [ErrLeaseLost].
func (s *Store) TxnIf(ctx context.Context, conds []Cond, ops ...Op) (uint64, error) {
	cmps := make([]clientv3.Cmp, len(conds))
	gets := make([]clientv3.Op, len(conds))
	for i, c := range conds {
		if err := checkKey(fmt.Sprintf("conds[%d].key", i), c.Key); err != nil {
			return 0, err
		}
		if c.Prefix {
			if c.Revision != 0 {
				return 0, fmt.Errorf("%w: conds[%d] %q: revision %d with prefix set (a prefix condition only says no key exists under it: revision 0)",
					errdefs.ErrInvalid, i, c.Key, c.Revision)
			}
			// etcd evaluates a compare over a range on every key in it, and
			// on an empty range as on one missing key (create revision 0):
			// so it holds exactly when no key has the prefix.
			cmps[i] = clientv3.Compare(clientv3.CreateRevision(c.Key), "=", 0).WithPrefix()
			gets[i] = clientv3.OpGet(c.Key, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1))
			continue
		}
		cmps[i] = clientv3.Compare(clientv3.ModRevision(c.Key), "=", int64(c.Revision))
		gets[i] = clientv3.OpGet(c.Key, clientv3.WithKeysOnly())
	}
	thens := make([]clientv3.Op, len(ops))
	for i, op := range ops {
		if err := checkKey(fmt.Sprintf("ops[%d].key", i), op.Key); err != nil {
			return 0, err
		}
		switch {
		case op.Delete && op.Prefix:
			thens[i] = clientv3.OpDelete(op.Key, clientv3.WithPrefix())
		case op.Delete:
			thens[i] = clientv3.OpDelete(op.Key)
		case op.Prefix:
			return 0, fmt.Errorf("%w: ops[%d] %q: prefix is set on a put", errdefs.ErrInvalid, i, op.Key)
		case op.Lease != nil:
			if err := op.Lease.Err(); err != nil {
				return 0, fmt.Errorf("put %q: %w", op.Key, err)
			}
			thens[i] = clientv3.OpPut(op.Key, string(op.Value), clientv3.WithLease(op.Lease.id))
		default:
			thens[i] = clientv3.OpPut(op.Key, string(op.Value))
		}
	}
	what := describe(ops)
	c, cancel, err := s.reqCtx(ctx)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	defer cancel()
	resp, err := s.kv.Txn(c).If(cmps...).Then(thens...).Else(gets...).Commit()
	if err != nil {
		if isLeaseNotFound(err) {
			err = fmt.Errorf("%w: %w", ErrLeaseLost, err)
		}
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if !resp.Succeeded {
		for i, r := range resp.Responses {
			kvs := r.GetResponseRange().GetKvs()
			if conds[i].Prefix {
				if len(kvs) > 0 {
					return 0, fmt.Errorf("%s: keys under %q exist (%q): %w",
						what, conds[i].Key, kvs[0].Key, store.ErrConflict)
				}
				continue
			}
			var got uint64
			if len(kvs) > 0 {
				got = uint64(kvs[0].ModRevision)
			}
			if got != conds[i].Revision {
				return 0, fmt.Errorf("%s: key %q has revision %d, expected %d: %w",
					what, conds[i].Key, got, conds[i].Revision, store.ErrConflict)
			}
		}
		// The key changed back between the transaction and our reading.
		return 0, fmt.Errorf("%s: a condition failed: %w", what, store.ErrConflict)
	}
	return uint64(resp.Header.Revision), nil
}

// describe names the keys of ops for error messages.
func describe(ops []Op) string {
	if len(ops) == 1 {
		verb := "put"
		if ops[0].Delete {
			verb = "delete"
		}
		return fmt.Sprintf("%s %q", verb, ops[0].Key)
	}
	keys := make([]string, 0, min(len(ops), 4))
	for i, op := range ops {
		if i == 3 {
			keys = append(keys, fmt.Sprintf("... (%d keys)", len(ops)))
			break
		}
		keys = append(keys, fmt.Sprintf("%q", op.Key))
	}
	return "txn " + strings.Join(keys, ", ")
}
