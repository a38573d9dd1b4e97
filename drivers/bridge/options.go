package bridge

import (
	"fmt"
	"sort"
	"strconv"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
)

// Driver option keys, as Docker names them.
const (
	OptionBridgeName = "com.docker.network.bridge.name"
	OptionICC        = "com.docker.network.bridge.enable_icc"
	OptionMasquerade = "com.docker.network.bridge.enable_ip_masquerade"
	OptionMTU        = "com.docker.network.driver.mtu"
)

// options is the parsed, validated form of a network's driver options.
type options struct {
	bridgeName string // "" until defaulted from the network ID
	icc        bool   // default true
	masquerade bool   // default true
	mtu        int    // 0: the kernel's default (1500)
}

// parseOptions validates every key and value, and rejects keys it does not
// know, naming the key and value in the error.
func parseOptions(m map[string]string) (options, error) {
	o := options{icc: true, masquerade: true}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same first error every time
	for _, k := range keys {
		v := m[k]
		switch k {
		case OptionBridgeName:
			if err := linkrules.CheckIfName(v); err != nil {
				return o, fmt.Errorf("%w: option %s=%q: %v", driverapi.ErrInvalid, k, v, err)
			}
			o.bridgeName = v
		case OptionICC, OptionMasquerade:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, fmt.Errorf("%w: option %s=%q: not a boolean", driverapi.ErrInvalid, k, v)
			}
			if k == OptionICC {
				o.icc = b
			} else {
				o.masquerade = b
			}
		case OptionMTU:
			n, err := strconv.Atoi(v)
			if err != nil {
				return o, fmt.Errorf("%w: option %s=%q: not a number", driverapi.ErrInvalid, k, v)
			}
			if err := checkMTU(n, false); err != nil {
				return o, err
			}
			o.mtu = n
		default:
			return o, fmt.Errorf("%w: unknown bridge driver option %q (known: %s, %s, %s, %s)",
				driverapi.ErrInvalid, k, OptionBridgeName, OptionICC, OptionMasquerade, OptionMTU)
		}
	}
	return o, nil
}

// checkMTU checks the MTU option's value n, for a network with IPv6 or
// without.
func checkMTU(n int, ipv6 bool) error {
	if err := linkrules.CheckMTU(n, ipv6); err != nil {
		return fmt.Errorf("%w: option %s=%d: %v", driverapi.ErrInvalid, OptionMTU, n, err)
	}
	return nil
}

// checkIPv6 checks what parseOptions cannot, not knowing the network's
// address families: a network with IPv6 needs an MTU of at least 1280.
// CreateNetwork calls it for a network with IPv6, before any kernel work.
func (o options) checkIPv6() error {
	if o.mtu == 0 {
		return nil // the kernel's default, 1500
	}
	return checkMTU(o.mtu, true)
}
