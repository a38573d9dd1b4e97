package mac

import (
	"net/netip"
	"testing"

	"github.com/seed53641549/cnm/internal/linkrules"
)

func TestRandomIsLocalUnicastAndVaries(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		m := Random()
		if err := linkrules.CheckMAC(m); err != nil || m[0]&2 == 0 {
			t.Fatalf("%s is not a locally administered unicast address: %v", m, err)
		}
		seen[m.String()] = true
	}
	if len(seen) < 100 {
		t.Fatalf("only %d distinct addresses in 100", len(seen))
	}
}

func TestFromIPv4(t *testing.T) {
	m := FromIPv4(netip.MustParseAddr("10.0.1.2"))
	if m.String() != "02:42:0a:00:01:02" {
		t.Fatalf("got %s", m)
	}
}
