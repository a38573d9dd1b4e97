package keys

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/store"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// Prefix is the prefix of the key sets' keys in the global store:
// Prefix + network ID.
const Prefix = "overlay/keys/"

// Defaults and limits of [Config].
const (
	// DefaultKeep is the default number of keys a set keeps: the previous,
	// the current (primary) and the next key.
	DefaultKeep = 3
	// DefaultRotate is the default rotation interval, Docker's.
	DefaultRotate = 12 * time.Hour
	// MinRotate is the shortest rotation interval: a new key must reach
	// every host, and be installed there for receive, before it becomes
	// primary one interval later.
	MinRotate = time.Minute
	// maxCheck bounds RunRotation's default check interval.
	maxCheck = time.Minute
)

// KV is what a [Ring] needs of the global store; [etcdstore.Store] has it.
type KV = etcdstore.KV

// Config configures [New].
type Config struct {
	// Store is the global store shared by every host. Required.
	Store KV
	// Keep is how many keys a set keeps, at least 3 (the previous, the
	// primary and the next key); zero means [DefaultKeep]. Every host
	// should use the same.
	Keep int
	// Rotate is how old a set's newest key gets before [Ring.RunRotation]
	// rotates the set; zero means [DefaultRotate], otherwise at least
	// [MinRotate].
	Rotate time.Duration
	// Check is how often [Ring.RunRotation] looks at the sets; zero means
	// Rotate/12, at most a minute.
	Check time.Duration
	// Now tells the time (for tests); nil means time.Now.
	Now func() time.Time
	// Rand is the source of key material and SPIs (for tests); nil means
	// crypto/rand.
	Rand io.Reader
	// Logger receives what RunRotation and Watch cannot return (failures
	// they retry, rotations done); nil discards it.
	Logger *slog.Logger
}

// Ring creates, rotates, deletes and watches the key sets of encrypted
// overlay networks. Every host has its own on the shared store. It is safe
// for concurrent use.
type Ring struct {
	cfg    Config
	randMu sync.Mutex // serialises reads of cfg.Rand
}

// New returns a Ring on cfg.Store. A bad field of cfg is an error wrapping
// [errdefs.ErrInvalid] that names it and its value.
func New(cfg Config) (*Ring, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("%w: encryption keys: Config.Store: nil", errdefs.ErrInvalid)
	}
	if cfg.Keep == 0 {
		cfg.Keep = DefaultKeep
	}
	if cfg.Keep < 3 {
		return nil, fmt.Errorf("%w: encryption keys: Config.Keep: %d: want at least 3 (the previous, the primary and the next key)",
			errdefs.ErrInvalid, cfg.Keep)
	}
	if cfg.Rotate == 0 {
		cfg.Rotate = DefaultRotate
	}
	if cfg.Rotate < MinRotate {
		return nil, fmt.Errorf("%w: encryption keys: Config.Rotate: %v: want at least %v", errdefs.ErrInvalid, cfg.Rotate, MinRotate)
	}
	if cfg.Check == 0 {
		cfg.Check = min(cfg.Rotate/12, maxCheck)
	}
	if cfg.Check < 0 {
		return nil, fmt.Errorf("%w: encryption keys: Config.Check: %v: negative", errdefs.ErrInvalid, cfg.Check)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Ring{cfg: cfg}, nil
}

// checkID refuses a network ID that cannot be a key's last element.
func checkID(id string) error {
	if id == "" || len(id) > 255 || strings.ContainsFunc(id, func(r rune) bool {
		return r == '/' || !unicode.IsPrint(r) || unicode.IsSpace(r)
	}) {
		return fmt.Errorf("%w: encryption keys: network id %q: want 1 to 255 printable characters without '/' or spaces", errdefs.ErrInvalid, id)
	}
	return nil
}

// Get returns network id's key set. A network without one is an error
// wrapping [errdefs.ErrNotFound].
func (r *Ring) Get(ctx context.Context, id string) (Set, error) {
	return r.get(ctx, id, "get")
}

func (r *Ring) get(ctx context.Context, id, op string) (Set, error) {
	if err := checkID(id); err != nil {
		return Set{}, err
	}
	kv, err := r.cfg.Store.Get(ctx, Prefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return Set{}, fmt.Errorf("%w: encryption keys of network %s: %s: no key set: %w", errdefs.ErrNotFound, id, op, err)
	}
	if err != nil {
		return Set{}, fmt.Errorf("encryption keys of network %s: %s: %w", id, op, err)
	}
	s, err := decode(id, kv.Value, kv.Revision)
	if err != nil {
		return Set{}, fmt.Errorf("encryption keys of network %s: %s: %w", id, op, err)
	}
	return s, nil
}

// Create makes network id's first key set: generation 1, the primary, and
// generation 2, the next key. If the network has a set already (another
// host made it first, even at the same moment) Create returns that one, so
// every host that creates gets the same set.
func (r *Ring) Create(ctx context.Context, id string) (Set, error) {
	if err := checkID(id); err != nil {
		return Set{}, err
	}
	key := Prefix + id
	for {
		s := Set{NetworkID: id, Primary: 1}
		for gen := uint64(1); gen <= 2; gen++ {
			k, err := r.newKey(gen, s.Keys)
			if err != nil {
				return Set{}, fmt.Errorf("encryption keys of network %s: create: %w", id, err)
			}
			s.Keys = append(s.Keys, k)
		}
		rev, err := r.cfg.Store.TxnIf(ctx, []etcdstore.Cond{{Key: key}}, etcdstore.Op{Key: key, Value: encode(s)})
		if err == nil {
			s.Revision = rev
			return s, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return Set{}, fmt.Errorf("encryption keys of network %s: create: %w", id, err)
		}
		cur, err := r.get(ctx, id, "create")
		if !errors.Is(err, errdefs.ErrNotFound) {
			return cur, err
		}
		// Deleted since: try again.
	}
}

// Rotate rotates network id's key set if its primary is still generation
// from: the next key becomes primary, a new next key is added, and the
// oldest keys beyond Keep are dropped. If the primary is another
// generation (another host rotated first, even at the same moment),
// Rotate returns the set as it is, so that one rotation of all hosts that
// rotate from one generation makes exactly one new generation.
//
// A network without a set is an error wrapping [errdefs.ErrNotFound].
func (r *Ring) Rotate(ctx context.Context, id string, from uint64) (Set, error) {
	s, _, err := r.rotate(ctx, id, from)
	return s, err
}

// rotate is Rotate, and tells whether it wrote the rotation.
func (r *Ring) rotate(ctx context.Context, id string, from uint64) (Set, bool, error) {
	op := fmt.Sprintf("rotate from generation %d", from)
	for {
		cur, err := r.get(ctx, id, op)
		if err != nil || cur.Primary != from {
			return cur, false, err
		}
		next := Set{NetworkID: id, Primary: from + 1, Keys: cur.Keys}
		k, err := r.newKey(cur.Keys[len(cur.Keys)-1].Generation+1, cur.Keys)
		if err != nil {
			return Set{}, false, fmt.Errorf("encryption keys of network %s: %s: %w", id, op, err)
		}
		next.Keys = append(next.Keys[:len(next.Keys):len(next.Keys)], k)
		if n := len(next.Keys) - r.cfg.Keep; n > 0 {
			next.Keys = next.Keys[n:]
		}
		key := Prefix + id
		rev, err := r.cfg.Store.TxnIf(ctx, []etcdstore.Cond{{Key: key, Revision: cur.Revision}}, etcdstore.Op{Key: key, Value: encode(next)})
		if err == nil {
			next.Revision = rev
			return next, true, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return Set{}, false, fmt.Errorf("encryption keys of network %s: %s: %w", id, op, err)
		}
		// Changed since we read it (rotated, or deleted): read again.
	}
}

// Delete deletes network id's key set, when the network is deleted.
// Deleting a set that does not exist is not an error: every host of the
// network may delete it.
func (r *Ring) Delete(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if _, err := r.cfg.Store.TxnIf(ctx, nil, etcdstore.Op{Key: Prefix + id, Delete: true}); err != nil {
		return fmt.Errorf("encryption keys of network %s: delete: %w", id, err)
	}
	return nil
}

// newKey makes a key of generation gen with random material and an SPI
// that none of others has.
func (r *Ring) newKey(gen uint64, others []Key) (Key, error) {
	r.randMu.Lock()
	defer r.randMu.Unlock()
	material := make([]byte, KeySize)
	k := Key{Generation: gen, Created: r.cfg.Now().UTC(), material: secret(material)}
	if _, err := io.ReadFull(r.cfg.Rand, material); err != nil {
		return Key{}, fmt.Errorf("generation %d: key material: %w", gen, err)
	}
	var b [4]byte
	for tries := 0; ; tries++ {
		if tries == 100 {
			return Key{}, fmt.Errorf("generation %d: no usable SPI in %d random draws", gen, tries)
		}
		if _, err := io.ReadFull(r.cfg.Rand, b[:]); err != nil {
			return Key{}, fmt.Errorf("generation %d: SPI: %w", gen, err)
		}
		k.SPI = binary.BigEndian.Uint32(b[:])
		if k.SPI >= MinSPI && !hasSPI(others, k.SPI) {
			return k, nil
		}
	}
}

func hasSPI(ks []Key, spi uint32) bool {
	for _, k := range ks {
		if k.SPI == spi {
			return true
		}
	}
	return false
}
