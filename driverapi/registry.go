package driverapi

import (
	"errors"
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
	mu      sync.RWMutex // guards drivers and resolve
	drivers map[string]Driver
	resolve Resolver
}

// Resolver finds a driver that is not registered (a plugin, by name). It
// returns an error wrapping [ErrNotFound] when it knows no driver of that
// name, and any other error when it found one that cannot be used.
type Resolver func(name string) (Driver, error)

// SetResolver makes [Registry.Driver] ask fn for names that are not
// registered, and register what it returns. nil: ask nothing.
func (r *Registry) SetResolver(fn Resolver) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resolve = fn
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

// Driver returns the driver registered under name. A name that is not
// registered goes to the resolver, if one is set (see [Registry.SetResolver]),
// without holding the registry's lock: a driver it returns is registered
// and returned (if two calls resolve one name at once, both get the one
// registered first); its error is returned as is. Without a resolver, or
// when it knows no such driver, the error wraps [ErrNotFound] and lists
// the registered names.
func (r *Registry) Driver(name string) (Driver, error) {
	r.mu.RLock()
	d, ok := r.drivers[name]
	resolve := r.resolve
	r.mu.RUnlock()
	if ok {
		return d, nil
	}
	if resolve != nil && name != "" {
		d, err := resolve(name)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		if err == nil {
			err = r.RegisterDriver(name, d)
			if errors.Is(err, ErrExists) {
				return r.Driver(name)
			}
			if err != nil {
				return nil, err
			}
			return d, nil
		}
		r.mu.RLock()
		defer r.mu.RUnlock()
		return nil, fmt.Errorf("driver %q (registered: %v): %w", name, r.namesLocked(), err)
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return nil, fmt.Errorf("%w: driver %q (registered: %v)", ErrNotFound, name, r.namesLocked())
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
