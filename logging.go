package cnm

import (
	"fmt"
	"log/slog"
)

// Logging: a controller logs to the logger given with [WithLogger] and to
// nothing else; without one it is silent. Every operation logs at debug
// level with the IDs of its network, endpoint and sandbox; heals log at
// info, refusals and failures that an operation survives (a rollback step,
// a background removal) at warn.

// WithLogger makes the controller log to l. Default: no logging.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return fmt.Errorf("%w: logger: nil", ErrInvalid)
		}
		c.logger = l
		return nil
	}
}

// newLogger returns the logger of a controller made with cfg.
func newLogger(cfg config) *slog.Logger {
	if cfg.logger != nil {
		return cfg.logger
	}
	return slog.New(slog.DiscardHandler)
}

// logOp logs the end of an operation at debug level: its name, the IDs it
// concerns (alternating keys and values) and its error, if any.
func (c *Controller) logOp(op string, err error, ids ...any) {
	if err != nil {
		c.log.Debug("cnm: "+op+" failed", append(ids, "err", err)...)
		return
	}
	c.log.Debug("cnm: "+op, ids...)
}
