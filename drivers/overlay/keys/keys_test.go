package keys

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed53641549/cnm/errdefs"
)

// both runs f for host 0 and host 1 at the same moment and waits for both.
func both(hs [2]*host, f func(i int, h *host)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, h := range hs {
		wg.Go(func() {
			<-start
			f(i, h)
		})
	}
	close(start)
	wg.Wait()
}

func TestCreateOnTwoHostsAtOnce(t *testing.T) {
	_, hs := twoHosts(t, Config{}, nil)
	views := [2]*view{watchView(t, hs[0].ring), watchView(t, hs[1].ring)}
	ctx := t.Context()

	const n = 10
	for i := range n {
		id := fmt.Sprintf("net%d", i)
		var got [2]Set
		var errs [2]error
		both(hs, func(i int, h *host) { got[i], errs[i] = h.ring.Create(ctx, id) })
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("create %s: %v, %v", id, errs[0], errs[1])
		}
		sameSet(t, got[0], got[1])
		if got[0].Primary != 1 || len(got[0].Keys) != 2 || got[0].Keys[0].Generation != 1 || got[0].Keys[1].Generation != 2 {
			t.Fatalf("first set of %s: %v, want generations 1 (primary) and 2", id, got[0])
		}
		// Creating again returns the same set too.
		again, err := hs[1].ring.Create(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		sameSet(t, got[0], again)
	}
	if w := hs[0].kv.writes.Load() + hs[1].kv.writes.Load(); w != n {
		t.Fatalf("%d writes for %d networks created twice at once: want one each", w, n)
	}

	// Both hosts' watchers hold the same sets, which are the store's.
	for _, v := range views {
		v.waitFor("10 sets", func(sets map[string]Set) bool { return len(sets) == n })
	}
	for i := range n {
		id := fmt.Sprintf("net%d", i)
		want, err := hs[0].ring.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range views {
			s, _ := v.get(id)
			sameSet(t, want, s)
		}
	}
}

func TestRotateOnTwoHostsAtOnce(t *testing.T) {
	_, hs := twoHosts(t, Config{}, nil)
	views := [2]*view{watchView(t, hs[0].ring), watchView(t, hs[1].ring)}
	ctx := t.Context()
	s, err := hs[0].ring.Create(ctx, "n")
	if err != nil {
		t.Fatal(err)
	}
	for round := range 8 {
		from := s.Primary
		writes := hs[0].kv.writes.Load() + hs[1].kv.writes.Load()
		var got [2]Set
		var errs [2]error
		both(hs, func(i int, h *host) { got[i], errs[i] = h.ring.Rotate(ctx, "n", from) })
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("round %d: rotate: %v, %v", round, errs[0], errs[1])
		}
		// Both got the one rotation that happened.
		sameSet(t, got[0], got[1])
		s = got[0]
		if w := hs[0].kv.writes.Load() + hs[1].kv.writes.Load() - writes; w != 1 {
			t.Fatalf("round %d: %d writes for two rotations from generation %d at once, want 1", round, w, from)
		}
		if s.Primary != from+1 || s.Keys[len(s.Keys)-1].Generation != from+2 {
			t.Fatalf("round %d: rotated from %d to %v, want primary %d and next %d", round, from, s, from+1, from+2)
		}
		// A late rotation from the same generation changes nothing.
		late, err := hs[1].ring.Rotate(ctx, "n", from)
		if err != nil {
			t.Fatal(err)
		}
		sameSet(t, s, late)
		for _, v := range views {
			v.waitFor(fmt.Sprintf("primary %d", s.Primary), func(sets map[string]Set) bool {
				return sets["n"].Revision == s.Revision
			})
			got, _ := v.get("n")
			sameSet(t, s, got)
		}
	}
}

func TestRotationKeepsKeepKeys(t *testing.T) {
	for _, keep := range []int{0, 3, 5} {
		t.Run(fmt.Sprintf("keep=%d", keep), func(t *testing.T) {
			clk := newClock()
			_, hs := twoHosts(t, Config{Keep: keep}, clk)
			if keep == 0 {
				keep = DefaultKeep
			}
			ctx := t.Context()
			s, err := hs[0].ring.Create(ctx, "n")
			if err != nil {
				t.Fatal(err)
			}
			materials := map[string]uint64{} // every material made → its generation
			spis := map[uint32]uint64{}
			note := func(s Set) {
				for _, k := range s.Keys {
					m := hex.EncodeToString(k.Material())
					if g, ok := materials[m]; ok && g != k.Generation {
						t.Fatalf("generations %d and %d have the same material", g, k.Generation)
					}
					materials[m] = k.Generation
					spis[k.SPI] = k.Generation
				}
			}
			note(s)
			for i := range keep + 2 {
				clk.Advance(time.Minute)
				if s, err = hs[i%2].ring.Rotate(ctx, "n", s.Primary); err != nil {
					t.Fatal(err)
				}
				if !s.Rotated().Equal(clk.Now()) {
					t.Fatalf("rotated at %v, want the clock's %v", s.Rotated(), clk.Now())
				}
				note(s)
			}
			// Read back as another host sees it.
			s, err = hs[1].ring.Get(ctx, "n")
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Keys) != keep {
				t.Fatalf("%d keys after %d rotations: want %d: %v", len(s.Keys), keep+2, keep, s)
			}
			newest := uint64(2 + keep + 2)
			for i, k := range s.Keys {
				if want := newest - uint64(keep-1-i); k.Generation != want {
					t.Fatalf("keys[%d] is generation %d, want %d: %v", i, k.Generation, want, s)
				}
				if k.SPI < MinSPI {
					t.Fatalf("keys[%d] spi %d", i, k.SPI)
				}
				m := k.Material()
				if len(m) != KeySize || bytes.Equal(m, make([]byte, KeySize)) {
					t.Fatalf("keys[%d]: material of %d bytes (or all zero), want %d random", i, len(m), KeySize)
				}
			}
			if s.Primary != newest-1 || s.PrimaryKey().Generation != newest-1 {
				t.Fatalf("primary %d (%v), want %d, the second newest", s.Primary, s.PrimaryKey(), newest-1)
			}
			if len(materials) != int(newest) || len(spis) != int(newest) {
				t.Fatalf("%d materials, %d SPIs for %d generations: want all distinct", len(materials), len(spis), newest)
			}
		})
	}
}

// script is a Rand that hands out its bytes, then fails.
type script struct{ r io.Reader }

func (s *script) Read(p []byte) (int, error) { return s.r.Read(p) }

func TestRandomDraws(t *testing.T) {
	_, hs := twoHosts(t, Config{}, nil)
	mat := func(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }
	var src bytes.Buffer
	src.Write(mat(1))
	src.Write([]byte{0, 0, 0, 0})             // SPI 0: reserved
	src.Write([]byte{0, 0, 0, 255})           // 255: reserved
	src.Write([]byte{0x12, 0x34, 0x56, 0x78}) // generation 1 takes it
	src.Write(mat(2))
	src.Write([]byte{0x12, 0x34, 0x56, 0x78}) // used by generation 1: drawn again
	src.Write([]byte{0, 0, 1, 0})             // 256
	r, err := New(Config{Store: hs[0].kv, Rand: &script{&src}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.Create(t.Context(), "n")
	if err != nil {
		t.Fatal(err)
	}
	if s.Keys[0].SPI != 0x12345678 || s.Keys[1].SPI != 256 ||
		!bytes.Equal(s.Keys[0].Material(), mat(1)) || !bytes.Equal(s.Keys[1].Material(), mat(2)) {
		t.Fatalf("set from scripted random bytes: %v", s)
	}
	// Material() is a copy.
	s.Keys[0].Material()[0] = 9
	if !bytes.Equal(s.Keys[0].Material(), mat(1)) {
		t.Fatal("Material returned the key's own bytes")
	}
	// Out of random bytes: an error, and nothing written.
	_, err = r.Rotate(t.Context(), "n", 1)
	if err == nil || !strings.Contains(err.Error(), "network n: rotate from generation 1: generation 3: key material") {
		t.Fatalf("rotate without random bytes: %v", err)
	}
	if got, _ := r.Get(t.Context(), "n"); got.Revision != s.Revision {
		t.Fatalf("failed rotation wrote %v", got)
	}
}

func TestRunRotation(t *testing.T) {
	clk := newClock()
	_, hs := twoHosts(t, Config{Rotate: time.Hour, Check: 5 * time.Millisecond}, clk)
	ctx := t.Context()
	if _, err := hs[0].ring.Create(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	created := hs[0].kv.writes.Load()
	networks := func() []string { return []string{"n", "no-set-yet"} }

	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Go(func() { h.ring.RunRotation(runCtx, networks) })
	}
	defer func() { stop(); wg.Wait() }()

	rotations := func() int64 { return hs[0].kv.writes.Load() + hs[1].kv.writes.Load() - created }
	settle := func() { time.Sleep(100 * time.Millisecond) } // 20 checks of each host
	primary := func() Set {
		s, err := hs[1].ring.Get(ctx, "n")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	settle()
	if n := rotations(); n != 0 {
		t.Fatalf("%d rotations before the interval passed", n)
	}
	for i := range 4 {
		clk.Advance(59 * time.Minute)
		settle()
		if n := rotations(); n != int64(i) {
			t.Fatalf("interval %d: %d rotations a minute before it ends, want %d", i+1, n, i)
		}
		clk.Advance(time.Minute)
		deadline := time.Now().Add(10 * time.Second)
		for primary().Primary != uint64(i+2) {
			if time.Now().After(deadline) {
				t.Fatalf("interval %d: not rotated within 10s: %v", i+1, primary())
			}
			time.Sleep(5 * time.Millisecond)
		}
		settle()
		s := primary()
		if n := rotations(); n != int64(i+1) || s.Primary != uint64(i+2) {
			t.Fatalf("interval %d: %d rotations, primary %d: want %d rotations, primary %d", i+1, n, s.Primary, i+1, i+2)
		}
		if !s.Rotated().Equal(clk.Now()) {
			t.Fatalf("interval %d: rotated at %v, want %v", i+1, s.Rotated(), clk.Now())
		}
	}
	// Each host did some of the work or none; together exactly one per interval.
	t.Logf("rotations by host 0: %d, host 1: %d", hs[0].kv.writes.Load()-created, hs[1].kv.writes.Load())
}

func TestDeleteSeenByWatchers(t *testing.T) {
	_, hs := twoHosts(t, Config{}, nil)
	views := [2]*view{watchView(t, hs[0].ring), watchView(t, hs[1].ring)}
	ctx := t.Context()
	for _, id := range []string{"a", "b"} {
		if _, err := hs[0].ring.Create(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range views {
		v.waitFor("a and b", func(sets map[string]Set) bool { return len(sets) == 2 })
	}
	if err := hs[1].ring.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	for _, v := range views {
		v.waitFor("a deleted", func(sets map[string]Set) bool { _, ok := sets["a"]; return !ok && len(sets) == 1 })
	}
	if err := hs[0].ring.Delete(ctx, "a"); err != nil {
		t.Fatalf("delete again: %v", err)
	}
	_, err := hs[0].ring.Get(ctx, "a")
	wantErr(t, err, errdefs.ErrNotFound, "network a", "no key set")
	_, err = hs[0].ring.Rotate(ctx, "a", 1)
	wantErr(t, err, errdefs.ErrNotFound, "network a", "rotate from generation 1")

	// Made again after its deletion: a new first set, seen by both.
	s, err := hs[1].ring.Create(ctx, "a")
	if err != nil || s.Primary != 1 {
		t.Fatalf("create after delete: %v, %v", s, err)
	}
	for _, v := range views {
		v.waitFor("a again", func(sets map[string]Set) bool { return sets["a"].Revision == s.Revision })
	}
}

// logBuffer is a concurrency-safe log destination.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestWatchResyncAfterCompaction(t *testing.T) {
	srv, hs := twoHosts(t, Config{}, nil)
	ctx := t.Context()
	for _, id := range []string{"n1", "n2"} {
		if _, err := hs[1].ring.Create(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	// Host 0's watch lists n1 and n2, then is held back before it starts
	// watching, while the sets change and etcd compacts the changes away.
	gate := &gatedKV{KV: hs[0].st, open: make(chan struct{}), watching: make(chan uint64, 4)}
	var logs logBuffer
	r, err := New(Config{Store: gate, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	v := watchView(t, r)
	v.waitFor("n1 and n2", func(sets map[string]Set) bool { return len(sets) == 2 })
	after := <-gate.watching

	s1, err := hs[1].ring.Rotate(ctx, "n1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := hs[1].ring.Delete(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	s3, err := hs[1].ring.Create(ctx, "n3")
	if err != nil {
		t.Fatal(err)
	}
	if s3.Revision <= after+1 {
		t.Fatalf("revision %d after three writes since %d", s3.Revision, after)
	}
	srv.Compact(t, s3.Revision)
	close(gate.open)

	v.waitFor("n1 rotated, n2 gone, n3", func(sets map[string]Set) bool {
		_, has2 := sets["n2"]
		return sets["n1"].Revision == s1.Revision && !has2 && sets["n3"].Revision == s3.Revision
	})
	got1, _ := v.get("n1")
	sameSet(t, s1, got1)
	got3, _ := v.get("n3")
	sameSet(t, s3, got3)
	if !strings.Contains(logs.String(), "resynced after compaction") {
		t.Fatalf("the watch did not resync; log:\n%s", logs.String())
	}

	// And it goes on watching.
	s3, err = hs[0].ring.Rotate(ctx, "n3", 1)
	if err != nil {
		t.Fatal(err)
	}
	v.waitFor("n3 rotated", func(sets map[string]Set) bool { return sets["n3"].Revision == s3.Revision })
}

// TestWatchResumesAfterFailure: when the watch fails, Watch starts it again
// from the last change it delivered, without listing the sets again: every
// change made while the watch was broken is delivered exactly once, in
// order, intermediate ones included. Then, when the store closes, the
// channel closes.
func TestWatchResumesAfterFailure(t *testing.T) {
	_, hs := twoHosts(t, Config{}, nil)
	ctx := t.Context()
	var created [2]Set
	for i, id := range []string{"n1", "n2"} {
		s, err := hs[1].ring.Create(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		created[i] = s
	}

	kv := &breakableKV{KV: hs[0].st, watching: make(chan uint64, 4), fail: make(chan struct{}), resume: make(chan struct{})}
	var logs logBuffer
	r, err := New(Config{Store: kv, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	v := watchView(t, r)
	v.waitFor("n1 and n2", func(sets map[string]Set) bool { return len(sets) == 2 })
	recv := func(what string) uint64 {
		t.Helper()
		select {
		case after := <-kv.watching:
			return after
		case <-time.After(10 * time.Second):
			t.Fatalf("waited 10s for %s", what)
			return 0
		}
	}
	recv("the first watch")
	s1, err := hs[1].ring.Rotate(ctx, "n1", 1)
	if err != nil {
		t.Fatal(err)
	}
	v.waitFor("n1 rotated", func(sets map[string]Set) bool { return sets["n1"].Revision == s1.Revision })

	// Break the watch, and while it is broken (before it is started again,
	// watchRetry later, and held back): n1 rotated twice, n2 deleted, n3
	// created.
	select {
	case kv.fail <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatal("waited 10s to break the watch")
	}
	s2, err := hs[1].ring.Rotate(ctx, "n1", 2)
	if err != nil {
		t.Fatal(err)
	}
	s3, err := hs[1].ring.Rotate(ctx, "n1", 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := hs[1].ring.Delete(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	s4, err := hs[1].ring.Create(ctx, "n3")
	if err != nil {
		t.Fatal(err)
	}
	if after := recv("the watch started again"); after != s1.Revision {
		t.Fatalf("watch started again after revision %d, want %d (the last change delivered)", after, s1.Revision)
	}
	close(kv.resume)
	v.waitFor("n1 rotated twice, n2 gone, n3", func(sets map[string]Set) bool {
		_, has2 := sets["n2"]
		return sets["n1"].Revision == s3.Revision && !has2 && sets["n3"].Revision == s4.Revision
	})
	got1, _ := v.get("n1")
	sameSet(t, s3, got1)

	if n := kv.snapshots.Load(); n != 1 {
		t.Fatalf("the sets were listed %d times, want once", n)
	}
	if !strings.Contains(logs.String(), "watch failed") || !strings.Contains(logs.String(), "injected watch failure") {
		t.Fatalf("the failure was not logged; log:\n%s", logs.String())
	}
	v.mu.Lock()
	var got []string
	for _, u := range v.log {
		switch {
		case u.Err != nil:
			got = append(got, fmt.Sprintf("%s: %v", u.NetworkID, u.Err))
		case u.Deleted:
			got = append(got, u.NetworkID+" deleted")
		default:
			got = append(got, fmt.Sprintf("%s@%d", u.NetworkID, u.Set.Revision))
		}
	}
	v.mu.Unlock()
	want := []string{
		fmt.Sprintf("n1@%d", created[0].Revision), fmt.Sprintf("n2@%d", created[1].Revision),
		fmt.Sprintf("n1@%d", s1.Revision),
		fmt.Sprintf("n1@%d", s2.Revision), fmt.Sprintf("n1@%d", s3.Revision), "n2 deleted", fmt.Sprintf("n3@%d", s4.Revision),
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("updates:\n%v\nwant (each change once, in order):\n%v", got, want)
	}

	// It goes on watching.
	s5, err := hs[1].ring.Rotate(ctx, "n3", 1)
	if err != nil {
		t.Fatal(err)
	}
	v.waitFor("n3 rotated", func(sets map[string]Set) bool { return sets["n3"].Revision == s5.Revision })

	// The store closes: the channel closes.
	_ = hs[0].st.Close()
	select {
	case <-v.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch's channel is still open 10s after the store closed")
	}
}

// leaks returns the forms of material that text must not contain.
func leaks(material []byte) []string {
	dec := strings.Trim(fmt.Sprint(material), "[]")
	return []string{
		hex.EncodeToString(material),
		strings.ToUpper(hex.EncodeToString(material)),
		base64.StdEncoding.EncodeToString(material),
		base64.RawStdEncoding.EncodeToString(material),
		base64.URLEncoding.EncodeToString(material),
		dec,
		fmt.Sprintf("%#v", material)[len("[]byte{"):],
		string(material),
	}
}

func noLeak(t *testing.T, what, text string, materials [][]byte) {
	t.Helper()
	for _, m := range materials {
		for _, l := range leaks(m) {
			if strings.Contains(text, l) {
				t.Fatalf("%s shows key material (as %q): %s", what, l, text)
			}
		}
	}
}

func TestRedaction(t *testing.T) {
	_, hs := twoHosts(t, Config{}, nil)
	s, err := hs[0].ring.Create(t.Context(), "n")
	if err != nil {
		t.Fatal(err)
	}
	var materials [][]byte
	for _, k := range s.Keys {
		materials = append(materials, k.Material())
	}
	k := s.Keys[0]
	type hidden struct {
		s Set
		k Key
	}
	values := map[string]any{
		"Key": k, "*Key": &k, "Set": s, "*Set": &s, "[]Key": s.Keys,
		"Update": Update{NetworkID: "n", Set: s}, "*Update": &Update{NetworkID: "n", Set: s},
		"unexported fields": hidden{s, k}, "*unexported fields": &hidden{s, k},
		"map": map[string]Set{"n": s},
	}
	for name, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
			noLeak(t, fmt.Sprintf("%s printed with %s", name, verb), fmt.Sprintf(verb, v), materials)
		}
		var logs bytes.Buffer
		slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "v", v)
		slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "v", v)
		noLeak(t, name+" logged", logs.String(), materials)
		if b, err := json.Marshal(v); err == nil {
			noLeak(t, name+" in JSON", string(b), materials)
		}
	}
	if str := k.String(); !strings.Contains(str, "redacted") || !strings.Contains(str, fmt.Sprintf("%#08x", k.SPI)) {
		t.Fatalf("Key.String: %s", str)
	}
	if str := s.String(); !strings.Contains(str, "redacted") || !strings.Contains(str, "primary generation 1") {
		t.Fatalf("Set.String: %s", str)
	}

	// Errors about a record name the field, never the material next to it.
	for _, c := range []struct {
		field  string
		modify func(rec *record)
	}{
		{"keys[1].spi: 0", func(rec *record) { rec.Keys[1].SPI = 0 }},
		{"keys[0].material: 19 bytes", func(rec *record) { rec.Keys[0].Material = rec.Keys[0].Material[:19] }},
		{"primary: 2", func(rec *record) { rec.Primary = 2 }},
	} {
		rec := rawRecord(t, s)
		c.modify(&rec)
		b, _ := json.Marshal(rec)
		put(t, hs[0].st, "bad", string(b))
		_, err := hs[0].ring.Get(t.Context(), "bad")
		wantErr(t, err, errdefs.ErrInvalid, "network bad", c.field)
		noLeak(t, "error", err.Error(), materials)
	}
	// A syntax error inside the material's string.
	b64 := base64.StdEncoding.EncodeToString(materials[0])
	put(t, hs[0].st, "bad", strings.Replace(string(encode(s)), b64, b64[:10]+"\"\x01"+b64[10:], 1))
	_, err = hs[0].ring.Get(t.Context(), "bad")
	wantErr(t, err, errdefs.ErrInvalid, "network bad", "malformed JSON at byte")
	noLeak(t, "error", err.Error(), materials)
	if strings.Contains(err.Error(), b64[:10]) {
		t.Fatalf("error quotes the material: %v", err)
	}
}

// rawRecord returns s as a record to tamper with.
func rawRecord(t *testing.T, s Set) record {
	t.Helper()
	var rec record
	if err := json.Unmarshal(encode(s), &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestErrors(t *testing.T) {
	_, hs := twoHosts(t, Config{}, nil)
	ctx := t.Context()
	for _, c := range []struct {
		cfg   Config
		words []string
	}{
		{Config{}, []string{"Config.Store", "nil"}},
		{Config{Store: hs[0].kv, Keep: 2}, []string{"Config.Keep", "2", "at least 3"}},
		{Config{Store: hs[0].kv, Keep: -1}, []string{"Config.Keep", "-1"}},
		{Config{Store: hs[0].kv, Rotate: time.Second}, []string{"Config.Rotate", "1s", "1m0s"}},
		{Config{Store: hs[0].kv, Check: -time.Second}, []string{"Config.Check", "-1s"}},
	} {
		_, err := New(c.cfg)
		wantErr(t, err, errdefs.ErrInvalid, c.words...)
	}

	r := hs[0].ring
	for _, id := range []string{"", "a/b", "a b", "a\x00", strings.Repeat("x", 256)} {
		_, err := r.Create(ctx, id)
		wantErr(t, err, errdefs.ErrInvalid, "network id", fmt.Sprintf("%q", id))
		_, err = r.Rotate(ctx, id, 1)
		wantErr(t, err, errdefs.ErrInvalid, "network id")
		wantErr(t, r.Delete(ctx, id), errdefs.ErrInvalid, "network id")
	}
	_, err := r.Rotate(ctx, "missing", 3)
	wantErr(t, err, errdefs.ErrNotFound, "network missing", "rotate from generation 3", "no key set")

	// Records this code cannot read.
	v := watchView(t, hs[1].ring)
	s, err := r.Create(ctx, "n")
	if err != nil {
		t.Fatal(err)
	}
	rec := rawRecord(t, s)
	rec.Version = 2
	b, _ := json.Marshal(rec)
	put(t, hs[0].st, "newer", string(b))
	_, err = r.Get(ctx, "newer")
	wantErr(t, err, errdefs.ErrNotSupported, "network newer", "version 2", "overlay/keys/newer")
	_, err = r.Rotate(ctx, "newer", 1)
	wantErr(t, err, errdefs.ErrNotSupported, "network newer", "rotate from generation 1")
	put(t, hs[0].st, "junk", "{}")
	_, err = r.Get(ctx, "junk")
	wantErr(t, err, errdefs.ErrInvalid, "network junk", "version 0")

	// The watch reports them and goes on.
	v.waitFor("n", func(sets map[string]Set) bool { _, ok := sets["n"]; return ok })
	deadline := time.Now().Add(10 * time.Second)
	for {
		v.mu.Lock()
		errs := errors.Join(v.errs...)
		v.mu.Unlock()
		if errs != nil && errors.Is(errs, errdefs.ErrNotSupported) && errors.Is(errs, errdefs.ErrInvalid) {
			wantErr(t, errs, errdefs.ErrNotSupported, "network newer: watch", "network junk: watch")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch errors: %v", errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := v.get("newer"); ok {
		t.Fatal("the watch delivered a set it cannot read")
	}
}
