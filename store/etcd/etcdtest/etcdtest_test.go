package etcdtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// TestRestart: keys written before Stop are read after Restart through the
// same client, which reconnects by itself, over several rounds; while the
// server is stopped its data dir stays and requests fail.
func TestRestart(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%t", tls), func(t *testing.T) {
			srv := Start(t, Options{TLS: tls})
			endpoints := srv.Endpoints()
			st, err := etcdstore.Open(t.Context(), etcdstore.Config{
				Endpoints: endpoints, TLS: srv.ClientTLS(), Prefix: "restart/", RequestTimeout: 300 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			// Open streams (a lease keep-alive, a watch) must not hold Stop up.
			l, err := st.GrantLease(t.Context(), 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			w := st.Watch(t.Context(), "", 0)
			for round := range 3 {
				key := fmt.Sprintf("k%d", round)
				if _, err := st.CompareAndSwap(t.Context(), key, 0, []byte(key)); err != nil {
					t.Fatalf("round %d: put %s: %v", round, key, err)
				}
				t0 := time.Now()
				srv.Stop()
				srv.Stop() // twice is fine
				if d := time.Since(t0); d > 2*time.Second {
					t.Fatalf("round %d: stop with open streams took %s", round, d)
				}
				if _, err := os.Stat(filepath.Join(srv.dir, "member", "wal")); err != nil {
					t.Fatalf("round %d: data dir after stop: %v", round, err)
				}
				if _, err := st.Get(t.Context(), key); err == nil {
					t.Fatalf("round %d: get from a stopped server succeeded", round)
				}

				t0 = time.Now()
				srv.Restart(t)
				if got := srv.Endpoints(); fmt.Sprint(got) != fmt.Sprint(endpoints) {
					t.Fatalf("round %d: endpoints %v after restart, want %v", round, got, endpoints)
				}
				for i := 0; i <= round; i++ {
					k := fmt.Sprintf("k%d", i)
					kv := getEventually(t, st, k)
					if string(kv) != k {
						t.Fatalf("round %d: %s = %q after restart", round, k, kv)
					}
				}
				t.Logf("round %d: restart and reconnect took %s", round, time.Since(t0).Round(time.Millisecond))
			}
			// The watch resumed: it sees a write made after the last restart.
			if _, err := st.CompareAndSwap(t.Context(), "after", 0, []byte("x")); err != nil {
				t.Fatal(err)
			}
			deadline := time.After(20 * time.Second)
			for seen := false; !seen; {
				select {
				case b := <-w:
					for _, ev := range b.Events {
						seen = seen || ev.KV.Key == "after"
					}
				case <-deadline:
					t.Fatal("watch did not resume after the restarts")
				}
			}
			if err := l.Err(); err != nil {
				t.Fatalf("lease of 30s after the restarts: %v", err)
			}
		})
	}
}

// TestRestartRunning: Restart of a running server stops it first.
func TestRestartRunning(t *testing.T) {
	srv := Start(t, Options{})
	st, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: srv.Endpoints(), Prefix: "rr/"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CompareAndSwap(t.Context(), "k", 0, []byte("v")); err != nil {
		t.Fatal(err)
	}
	_ = st.Close() // no open streams: the stop is quick
	srv.Restart(t)
	st2, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: srv.Endpoints(), Prefix: "rr/"})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if kv := getEventually(t, st2, "k"); string(kv) != "v" {
		t.Fatalf("k = %q after restart", kv)
	}
}

// getEventually reads key, retrying while the client reconnects.
func getEventually(t *testing.T, st *etcdstore.Store, key string) []byte {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		kv, err := st.Get(ctx, key)
		cancel()
		if err == nil {
			return kv.Value
		}
		if time.Now().After(deadline) {
			t.Fatalf("get %s after restart: %v", key, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
