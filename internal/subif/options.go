package subif

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
	"github.com/seed53641549/cnm/internal/parent"
)

// Options is the parsed, validated form of a network's driver options.
type Options[M any] struct {
	Parent string  // "": internal network with its own parent
	Mode   Mode[M] // default: the Kind's first mode
	MTU    int     // 0: the parent's
}

// ParseOptions validates every key and value of a network's driver options
// (parent.OptionParent, k.ModeOption and parent.OptionMTU), and rejects keys
// it does not know. Errors wrap driverapi.ErrInvalid and name the key and
// value; with several bad keys, the first in sorted order.
func (k Kind[M]) ParseOptions(m map[string]string) (Options[M], error) {
	o := Options[M]{Mode: k.Modes[0]}
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	sort.Strings(keys) // report the same first error every time
	for _, key := range keys {
		v := m[key]
		switch key {
		case parent.OptionParent:
			if v == "" {
				continue // Docker's `-o parent=`: internal
			}
			if err := linkrules.CheckIfName(v); err != nil {
				return o, fmt.Errorf("%w: option %s=%q: %v", driverapi.ErrInvalid, key, v, err)
			}
			if _, _, _, err := parent.ParseVLAN(v); err != nil {
				return o, err
			}
			o.Parent = v
		case k.ModeOption:
			mode, ok := k.mode(v)
			if !ok {
				return o, fmt.Errorf("%w: option %s=%q: unknown mode (known: %s)", driverapi.ErrInvalid, key, v, k.modeNames())
			}
			o.Mode = mode
		case parent.OptionMTU:
			n, err := strconv.Atoi(v)
			if err != nil {
				return o, fmt.Errorf("%w: option %s=%q: not a number", driverapi.ErrInvalid, key, v)
			}
			if err := checkMTU(n, false); err != nil {
				return o, err
			}
			o.MTU = n
		default:
			return o, fmt.Errorf("%w: unknown %s driver option %q (known: %s, %s, %s)",
				driverapi.ErrInvalid, k.Type, key, parent.OptionParent, k.ModeOption, parent.OptionMTU)
		}
	}
	return o, nil
}

// checkMTU checks the MTU option's value n, for a network with IPv6 or
// without.
func checkMTU(n int, ipv6 bool) error {
	if err := linkrules.CheckMTU(n, ipv6); err != nil {
		return fmt.Errorf("%w: option %s=%d: %v", driverapi.ErrInvalid, parent.OptionMTU, n, err)
	}
	return nil
}

// checkIPv6 checks what ParseOptions cannot, not knowing the network's
// address families: a network with IPv6 needs an MTU of at least 1280.
// An MTU left to the parent's is not checked here.
func (o Options[M]) checkIPv6() error {
	if o.MTU == 0 {
		return nil
	}
	return checkMTU(o.MTU, true)
}

// mode returns the mode named name.
func (k Kind[M]) mode(name string) (Mode[M], bool) {
	for _, m := range k.Modes {
		if m.Name == name {
			return m, true
		}
	}
	return Mode[M]{}, false
}

// modeNames lists the modes for an error: "l2, l3".
func (k Kind[M]) modeNames() string {
	names := make([]string, len(k.Modes))
	for i, m := range k.Modes {
		names[i] = m.Name
	}
	return strings.Join(names, ", ")
}
