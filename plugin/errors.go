package plugin

import (
	"errors"
	"fmt"
)

var (
	// ErrUnavailable reports that a plugin could not be reached, or did not
	// answer within the call's timeout (then context.DeadlineExceeded is
	// wrapped too). A plugin that is restarted is reached again.
	ErrUnavailable = errors.New("plugin unavailable")
	// ErrProtocol reports an answer that breaks the protocol: an HTTP
	// error without the plugin's error text, malformed JSON, an answer
	// larger than the limit, or a field with a value that cannot be used.
	ErrProtocol = errors.New("protocol error")
	// ErrPlugin reports that the plugin refused the call: the error text
	// is the plugin's own (its Err field).
	ErrPlugin = errors.New("plugin error")
)

// CallError is the error of a call to a plugin: which plugin, which call,
// and why. Err wraps ErrUnavailable, ErrProtocol or ErrPlugin, and for some
// failures a sentinel of package errdefs too.
type CallError struct {
	Plugin string // the plugin's name
	Call   string // "NetworkDriver.Join"
	Err    error
}

// Error reports the plugin, the call and the cause:
// `plugin "weave": NetworkDriver.Join: plugin error: no such endpoint`.
func (e *CallError) Error() string {
	return fmt.Sprintf("plugin %q: %s: %v", e.Plugin, e.Call, e.Err)
}

// Unwrap returns the cause.
func (e *CallError) Unwrap() error { return e.Err }
