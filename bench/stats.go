//go:build linux

package main

import (
	"slices"
	"time"
)

// samples is a set of durations of one operation.
type samples []time.Duration

// quantile returns the q-quantile (0..1) by the nearest-rank method.
func (s samples) quantile(q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	i := int(q*float64(len(c)-1) + 0.5)
	return c[i]
}

func (s samples) median() time.Duration { return s.quantile(0.5) }
func (s samples) p95() time.Duration    { return s.quantile(0.95) }

// window returns the samples k-w..k+w (1-based k), clipped to the series.
func (s samples) window(k, w int) samples {
	lo, hi := max(k-1-w, 0), min(k-1+w+1, len(s))
	if lo >= hi {
		return nil
	}
	return s[lo:hi]
}

// ms formats a duration in milliseconds with two decimals.
func ms(d time.Duration) string {
	return formatFloat(float64(d)/float64(time.Millisecond), 2) + " ms"
}
