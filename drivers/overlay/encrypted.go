package overlay

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/seed53641549/cnm/driverapi"
)

// espProbeTimeout is how long the ESP probe waits for each of its
// datagrams.
const espProbeTimeout = time.Second

// espAnswer is what the ESP probe found out.
type espAnswer struct {
	works bool   // a datagram sent through ESP was delivered
	why   string // when it does not work: what the kernel lacks and what the probe saw
}

// espCache keeps the ESP probe's answer: the probe runs once per Driver.
// A probe that could not tell (it failed to make its namespaces, or its
// context ended) leaves nothing cached and runs again next time.
type espCache struct {
	mu     sync.Mutex // held while the probe runs: one probe at a time
	known  bool
	answer espAnswer
	runs   int // probes run, for tests
}

// checkEncryption decides on network id, which asks for OptionEncrypted
// (with value). Encrypted networks are not implemented, so it always
// refuses, with an error wrapping ErrNotSupported that says why: the
// kernel has no ESP (refuses its xfrm states) or drops it (xfrm installs,
// packets are not delivered), as the probe found on this host; or the
// driver lacks the encrypted data path (key distribution and per-peer
// security associations). Either way no plaintext leaves for a network that asked
// for encryption, and no network is made that would carry nothing.
func (d *Driver) checkEncryption(ctx context.Context, id, value string) error {
	a, err := d.espSupport(ctx)
	if err != nil {
		return fmt.Errorf("%w: overlay network %s: option %s=%q: cannot tell whether the kernel carries ESP: %w",
			driverapi.ErrNotSupported, id, OptionEncrypted, value, err)
	}
	if !a.works {
		return fmt.Errorf("%w: overlay network %s: option %s=%q: %s: an encrypted overlay network cannot carry traffic on this host",
			driverapi.ErrNotSupported, id, OptionEncrypted, value, a.why)
	}
	return fmt.Errorf("%w: overlay network %s: option %s=%q: the kernel carries ESP, but the encrypted overlay data path (key distribution, per-peer security associations) is not implemented yet",
		driverapi.ErrNotSupported, id, OptionEncrypted, value)
}

// espSupport returns the ESP probe's answer, probing on the first call.
func (d *Driver) espSupport(ctx context.Context) (espAnswer, error) {
	d.esp.mu.Lock()
	defer d.esp.mu.Unlock()
	if d.esp.known {
		return d.esp.answer, nil
	}
	d.esp.runs++
	a, err := probeESP(ctx, d.cfg.RunDir, espProbeTimeout)
	if err != nil {
		return espAnswer{}, err
	}
	d.esp.known, d.esp.answer = true, a
	return a, nil
}
