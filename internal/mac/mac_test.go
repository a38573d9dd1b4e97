package mac

import "testing"

func TestRandomIsLocalUnicastAndVaries(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		m := Random()
		if len(m) != 6 || m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("%s is not a locally administered unicast address", m)
		}
		seen[m.String()] = true
	}
	if len(seen) < 100 {
		t.Fatalf("only %d distinct addresses in 100", len(seen))
	}
}
