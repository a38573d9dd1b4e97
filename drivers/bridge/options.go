package bridge

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/seed53641549/cnm/driverapi"
)

// Driver option keys, as Docker names them.
const (
	OptionBridgeName = "com.docker.network.bridge.name"
	OptionICC        = "com.docker.network.bridge.enable_icc"
	OptionMasquerade = "com.docker.network.bridge.enable_ip_masquerade"
	OptionMTU        = "com.docker.network.driver.mtu"
)

// MTU limits: 68 is IPv4's minimum (RFC 791), 65535 the largest a veth takes.
const (
	minMTU = 68
	maxMTU = 65535
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
			if err := validIfName(v); err != nil {
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
			if n < minMTU || n > maxMTU {
				return o, fmt.Errorf("%w: option %s=%d: out of range %d-%d", driverapi.ErrInvalid, k, n, minMTU, maxMTU)
			}
			o.mtu = n
		default:
			return o, fmt.Errorf("%w: unknown bridge driver option %q (known: %s, %s, %s, %s)",
				driverapi.ErrInvalid, k, OptionBridgeName, OptionICC, OptionMasquerade, OptionMTU)
		}
	}
	return o, nil
}

// validIfName applies the kernel's rules for interface names (dev_valid_name).
func validIfName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty interface name")
	case len(s) > 15:
		return fmt.Errorf("longer than 15 characters")
	case s == "." || s == "..":
		return fmt.Errorf("not a valid interface name")
	case strings.ContainsAny(s, "/: \t\n"):
		return fmt.Errorf("contains '/', ':' or white space")
	}
	return nil
}
