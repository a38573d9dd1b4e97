package macvlan

import "github.com/seed53641549/cnm/internal/parent"

// Driver option keys, as Docker names them. Unknown keys are refused with
// an error wrapping driverapi.ErrInvalid that names the key.
const (
	// OptionParent names the host interface the network's links hang off:
	// an existing link ("eth1"), or "<link>.<vlan id>" for an 802.1Q
	// sub-interface that is made if missing ("eth1.50"). Empty or absent:
	// an internal network with a parent of its own.
	OptionParent = parent.OptionParent
	// OptionMode is the macvlan mode: bridge (default), private, vepa or
	// passthru.
	OptionMode = "macvlan_mode"
	// OptionMTU is the MTU of the containers' interfaces, at most the
	// parent's. Default: the parent's MTU.
	OptionMTU = parent.OptionMTU
)
