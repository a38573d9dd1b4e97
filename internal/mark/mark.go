// Package mark is the one place that says how cnm marks what it makes, so
// that a controller can tell its own kernel objects and files from anyone
// else's: another tool's, a user's, or another controller's in the same host
// namespace.
//
// Every mark carries the controller's persistent identity (an [Owner]), kept
// in its data dir, the same across restarts. A controller removes only what
// carries its own identity:
//
//   - links (bridges, VLAN sub-interfaces, internal parents) carry the alias
//     "cnm:<owner>:<network id>";
//   - the controller's nftables table is "cnm-<owner>";
//   - its files live in the run dir folder "cnm-<owner>".
package mark

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
)

// Owner is a controller's persistent identity: 16 lowercase hex digits.
type Owner string

// NewOwner returns a fresh random identity.
func NewOwner() Owner {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return Owner(hex.EncodeToString(b[:]))
}

// Parse checks that s is an identity made by [NewOwner].
func Parse(s string) (Owner, error) {
	if len(s) != 16 {
		return "", fmt.Errorf("controller identity %q: want 16 hex digits", s)
	}
	if _, err := hex.DecodeString(s); err != nil || strings.ToLower(s) != s {
		return "", fmt.Errorf("controller identity %q: want 16 lowercase hex digits", s)
	}
	return Owner(s), nil
}

// Link returns the alias of a link the owner made for network id.
func (o Owner) Link(networkID string) string { return "cnm:" + string(o) + ":" + networkID }

// NetworkOf returns the network ID in a link alias made by [Owner.Link] for
// this owner; ok is false for any other alias, another owner's included.
func (o Owner) NetworkOf(alias string) (id string, ok bool) {
	id, ok = strings.CutPrefix(alias, "cnm:"+string(o)+":")
	return id, ok && id != ""
}

// IsAnyControllers reports whether a link alias is a mark of any
// controller's, this one's or another's.
func IsAnyControllers(alias string) bool { return strings.HasPrefix(alias, "cnm:") }

// Table returns the name of the owner's nftables tables.
func (o Owner) Table() string { return "cnm-" + string(o) }

// Dir returns the name of the owner's folder in the run dir.
func (o Owner) Dir() string { return "cnm-" + string(o) }
