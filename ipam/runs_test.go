package ipam

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// checkRuns checks the B-tree's invariants and that it holds exactly the
// addresses of want (a bitmap over 0..len(want)-1).
func checkRuns(t *testing.T, s *runSet, want []bool) {
	t.Helper()
	var got []run
	s.ascend(func(r run) bool { got = append(got, r); return true })
	require.Len(t, got, s.n)
	for i, r := range got {
		require.False(t, r.hi.less(r.lo), "run %d inverted", i)
		if i > 0 {
			require.True(t, got[i-1].hi.add1().less(r.lo), "runs %d and %d touch or overlap", i-1, i)
		}
	}
	var k int
	for x := range want {
		in := k < len(got) && !(u128{0, uint64(x)}).less(got[k].lo) && !got[k].hi.less(u128{0, uint64(x)})
		require.Equal(t, want[x], in, "address %d", x)
		require.Equal(t, want[x], s.contains(u128{0, uint64(x)}), "contains %d", x)
		if k < len(got) && got[k].hi == (u128{0, uint64(x)}) {
			k++
		}
	}
	if s.root != nil {
		depth := -1
		var walk func(n *node, d int, isRoot bool)
		walk = func(n *node, d int, isRoot bool) {
			if !isRoot {
				require.GreaterOrEqual(t, len(n.runs), 1)
			}
			require.LessOrEqual(t, len(n.runs), maxRuns)
			if n.children == nil {
				if depth < 0 {
					depth = d
				}
				require.Equal(t, depth, d, "leaves at one depth")
				return
			}
			require.Len(t, n.children, len(n.runs)+1)
			for _, c := range n.children {
				walk(c, d+1, false)
			}
		}
		walk(s.root, 0, true)
	}
}

func TestRunSetRandom(t *testing.T) {
	for _, size := range []int{8, 100, 5000} {
		rng := rand.New(rand.NewPCG(uint64(size), 7))
		var s runSet
		want := make([]bool, size)
		x := 0
		for step := range 20 * size {
			// Half the steps stay near the last one, as next-fit requests
			// and their releases do, so that the finger leaf is hit.
			if rng.IntN(2) == 0 {
				x = rng.IntN(size)
			} else {
				x = (x + rng.IntN(7) + size - 3) % size
			}
			// Ranges of a few addresses, all free or all held.
			n := 1 + rng.IntN(4)
			if x+n > size {
				n = size - x
			}
			free, held := true, true
			for i := x; i < x+n; i++ {
				free = free && !want[i]
				held = held && want[i]
			}
			lo, hi := u128{0, uint64(x)}, u128{0, uint64(x + n - 1)}
			switch {
			case free && (rng.IntN(3) > 0 || step < size):
				s.add(lo, hi, nil)
				for i := x; i < x+n; i++ {
					want[i] = true
				}
			case held:
				// Only when the range lies in one run, which it does as
				// all of it is held.
				s.remove(lo, hi, nil)
				for i := x; i < x+n; i++ {
					want[i] = false
				}
			}
			if step%(size/4+1) == 0 {
				checkRuns(t, &s, want)
			}
		}
		checkRuns(t, &s, want)
		// Empty it address by address.
		for x := range want {
			if want[x] {
				s.remove(u128{0, uint64(x)}, u128{0, uint64(x)}, nil)
				want[x] = false
			}
		}
		checkRuns(t, &s, want)
		require.Zero(t, s.n)
		require.Empty(t, s.root.runs)
	}
}

func TestRunSetEdges(t *testing.T) {
	var s runSet
	s.add(u128Max, u128Max, nil)
	s.add(u128{}, u128{}, nil)
	s.add(u128Max.sub1(), u128Max.sub1(), nil)
	require.Equal(t, 2, s.n)
	require.Equal(t, run{u128Max.sub1(), u128Max}, *s.floor(u128Max))
	require.Equal(t, uint64(3), s.count(u128{}, u128Max))
	s.remove(u128Max, u128Max, nil)
	require.False(t, s.contains(u128Max))
	require.True(t, s.contains(u128Max.sub1()))

	var big runSet
	big.add(u128{}, u128Max, nil)
	require.Equal(t, ^uint64(0), big.count(u128{}, u128Max))
	big.remove(u128{0, 5}, u128{0, 5}, nil)
	require.Equal(t, 2, big.n)
}
