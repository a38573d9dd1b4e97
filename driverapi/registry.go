package driverapi

import (
	"fmt"
	"sort"
	"sync"
)

// Registerer is what a driver's Register function needs: a place to put it.
type Registerer interface {
	RegisterDriver(name string, d Driver) error
}

// Registry holds the drivers of one controller. It is safe for concurrent
// use. The zero value is ready to use.
type Registry struct {
	mu      sync.RWMutex // guards drivers
	drivers map[string]Driver
}

var _ Registerer = (*Registry)(nil)

// RegisterDriver adds a driver under name. A name that is taken is an error
// wrapping [ErrExists]; an empty name or nil driver one wrapping [ErrInvalid].
func (r *Registry) RegisterDriver(name string, d Driver) error {
	if name == "" || d == nil {
		return fmt.Errorf("%w: register driver %q: name and driver are required", ErrInvalid, name)
	}
	c := d.Capability()
	if c.Scope != LocalScope && c.Scope != GlobalScope {
		return fmt.Errorf("%w: register driver %q: scope %q", ErrInvalid, name, c.Scope)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.drivers[name]; ok {
		return fmt.Errorf("%w: driver %q is already registered", ErrExists, name)
	}
	if r.drivers == nil {
		r.drivers = map[string]Driver{}
	}
	r.drivers[name] = d
	return nil
}

// Driver returns the driver registered under name, or an error wrapping
// [ErrNotFound] that lists the registered ones.
func (r *Registry) Driver(name string) (Driver, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.drivers[name]
	if !ok {
		return nil, fmt.Errorf("%w: driver %q (registered: %v)", ErrNotFound, name, r.namesLocked())
	}
	return d, nil
}

// Names returns the registered driver names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.namesLocked()
}

func (r *Registry) namesLocked() []string {
	names := make([]string, 0, len(r.drivers))
	for n := range r.drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
