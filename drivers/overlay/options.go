package overlay

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/internal/linkrules"
)

// Driver option keys, as Docker names them.
const (
	// OptionVNI is the network's VXLAN ID (Docker: a list, one per subnet;
	// here exactly one, 1 to 16777215). Required until the global store
	// allocates VNIs.
	OptionVNI = "com.docker.network.driver.overlay.vxlanid_list"
	// OptionMTU is the MTU of the network's interfaces.
	OptionMTU = "com.docker.network.driver.mtu"
	// OptionEncrypted asks for ESP between VTEPs. As in Docker, its
	// presence asks, whatever its value ("" or "true"). Not supported yet:
	// such a network is refused with ErrNotSupported, saying whether the
	// kernel drops ESP (probed once per Driver) or the driver lacks the
	// encrypted data path.
	OptionEncrypted = "encrypted"
)

// MaxVNI is the largest VXLAN network identifier (24 bits).
const MaxVNI = 1<<24 - 1

// options is the parsed, validated form of a network's driver options.
type options struct {
	vni uint32
	mtu int // 0: the driver's default

	encrypted      bool   // OptionEncrypted is present
	encryptedValue string // its value, for errors
}

// parseOptions validates every key and value, and rejects keys it does not
// know, naming the key and value in the error.
func parseOptions(m map[string]string, ipv6 bool) (options, error) {
	var o options
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same first error every time
	for _, k := range keys {
		v := m[k]
		switch k {
		case OptionVNI:
			vni, err := ParseVNI(v)
			if err != nil {
				return o, err
			}
			o.vni = vni
		case OptionMTU:
			mtu, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return o, fmt.Errorf("%w: overlay option %s=%q: not a number", driverapi.ErrInvalid, k, v)
			}
			if err := checkMTU("option "+k, mtu, ipv6); err != nil {
				return o, err
			}
			o.mtu = mtu
		case OptionEncrypted:
			o.encrypted, o.encryptedValue = true, v
		default:
			return o, fmt.Errorf("%w: overlay option %q: unknown key", driverapi.ErrInvalid, k)
		}
	}
	if o.vni == 0 {
		return o, fmt.Errorf("%w: overlay option %s: missing (the network's VXLAN ID, 1-%d)", driverapi.ErrInvalid, OptionVNI, MaxVNI)
	}
	return o, nil
}

// ParseVNI parses the value of [OptionVNI]: one VXLAN ID, 1 to [MaxVNI].
// Docker's key holds a comma-separated list, one per subnet: a network of
// cnm has one VXLAN device, so one ID. Bad input is an error wrapping
// driverapi.ErrInvalid naming the option and value.
func ParseVNI(v string) (uint32, error) {
	s := strings.TrimSpace(v)
	if strings.Contains(s, ",") {
		return 0, fmt.Errorf("%w: overlay option %s=%q: one VXLAN ID per network", driverapi.ErrInvalid, OptionVNI, v)
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > MaxVNI {
		return 0, fmt.Errorf("%w: overlay option %s=%q: VNI must be 1-%d", driverapi.ErrInvalid, OptionVNI, v, MaxVNI)
	}
	return uint32(n), nil
}

// checkMTU checks an MTU given as field.
func checkMTU(field string, mtu int, ipv6 bool) error {
	if err := linkrules.CheckMTU(mtu, ipv6); err != nil {
		return fmt.Errorf("overlay %s=%d: %w", field, mtu, err)
	}
	return nil
}

// checkVTEP checks an underlay address given as field: a unicast address
// of either family.
func checkVTEP(field string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%w: overlay %s: missing", driverapi.ErrInvalid, field)
	case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.IPv4Unspecified() ||
		(a.Is4() && a.As4() == [4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%w: overlay %s=%s: a VTEP needs a unicast, non-loopback address", driverapi.ErrInvalid, field, a)
	case a.Zone() != "":
		return fmt.Errorf("%w: overlay %s=%s: a VTEP address has no zone", driverapi.ErrInvalid, field, a)
	}
	return nil
}
