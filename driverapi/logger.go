package driverapi

import "log/slog"

// LogSetter is an optional interface of a driver that logs: the controller
// gives it its own logger (see cnm.WithLogger) when it registers the
// driver, so a program's log has one destination. A driver without a
// logger logs nothing.
type LogSetter interface {
	SetLogger(l *slog.Logger)
}
