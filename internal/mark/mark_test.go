package mark

import "testing"

func TestOwnerMarks(t *testing.T) {
	a, b := NewOwner(), NewOwner()
	if a == b {
		t.Fatalf("two fresh identities are equal: %s", a)
	}
	if _, err := Parse(string(a)); err != nil {
		t.Fatalf("Parse(%s): %v", a, err)
	}
	for _, bad := range []string{"", "abc", "ABCDEF0123456789", "zzzzzzzzzzzzzzzz", string(a) + "0"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	if id, ok := a.NetworkOf(a.Link("n1")); !ok || id != "n1" {
		t.Errorf("NetworkOf(Link(n1)) = %q, %v", id, ok)
	}
	for _, alias := range []string{b.Link("n1"), "cnm:n1", "cnm:" + string(a) + ":", "user link", ""} {
		if id, ok := a.NetworkOf(alias); ok {
			t.Errorf("owner %s claims alias %q (network %q)", a, alias, id)
		}
	}
	if a.Table() == b.Table() || len(a.Table()) > 32 {
		t.Errorf("tables %q and %q", a.Table(), b.Table())
	}
}
