package subif

import (
	"context"
	"log/slog"

	"github.com/seed53641549/cnm/driverapi"
)

var (
	_ driverapi.Healer    = (*driver[struct{}])(nil)
	_ driverapi.LogSetter = (*driver[struct{}])(nil)
)

// Heal puts back the parent links the driver's table made (see
// parent.Table.Heal). The links inside sandboxes are the sandboxes'.
func (d *driver[M]) Heal(ctx context.Context, req driverapi.HealRequest) ([]driverapi.Healed, error) {
	return d.cfg.Parents.Heal(ctx, req)
}

// SetLogger makes the driver's parent table log to l.
func (d *driver[M]) SetLogger(l *slog.Logger) { d.cfg.Parents.SetLogger(l) }
