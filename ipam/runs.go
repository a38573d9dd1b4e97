package ipam

// run is a maximal range of consecutive addresses, lo through hi inclusive.
type run struct{ lo, hi u128 }

// runSet is a set of addresses stored as maximal runs (no two runs overlap or
// touch) in a B-tree ordered by lo. Lookups, insertions and deletions take
// O(log n) in the number of runs, and memory is O(runs): consecutive
// addresses share one run of 32 bytes, and a lone address costs one run plus
// its share of a node.
//
// add and remove keep runs maximal. The allocator's per-family trees of
// pool subnets use only insert, delete and floor, so that subnets that touch
// stay apart and each run names one pool.
//
// The zero value is an empty set. It is not safe for concurrent use.
type runSet struct {
	root *node
	n    int // runs in the set

	// finger is the leaf the last fast add or remove worked in, or nil.
	// Next-fit requests and the releases that follow them tend to land in
	// the same leaf again; a key strictly inside a leaf's key span belongs
	// to that leaf (no other node holds a key between two keys of a leaf),
	// so such a key skips the descent from the root. Any change of the
	// tree's shape resets it.
	finger *node
}

// Node sizes: a node holds between minRuns and maxRuns runs (the root may
// hold fewer), and an inner node one child more than runs. minRuns is below
// the classic maxRuns/2 so that a merge (2*minRuns+1 runs) leaves room for
// several inserts before the next split, and a split (two halves of 15)
// room for several deletions before the next merge: a pool whose requests
// and releases alternate at a node boundary does not split and merge, and
// allocate, on every call.
const (
	maxRuns = 31
	minRuns = 11
)

type node struct {
	runs     []run
	children []*node // nil in a leaf
}

// search returns the index of the first run of n whose lo is not below k,
// and whether that run starts at k.
//
// A node holds at most 31 runs, and a linear scan, whose branches the CPU
// predicts, beats a binary search, whose branches it cannot, at that size.
func (n *node) search(k u128) (int, bool) {
	lo, hi := 0, len(n.runs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if n.runs[m].lo.less(k) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < len(n.runs) && n.runs[lo].lo == k
}

// floor returns the run with the greatest lo not above k, or nil. The pointer
// stays valid until the next insert or delete; a caller may change the run's
// bounds through it as long as the order of runs is kept.
func (s *runSet) floor(k u128) *run {
	if n := s.finger; n != nil && len(n.runs) > 0 && !k.less(n.runs[0].lo) && !n.runs[len(n.runs)-1].hi.less(k) {
		// k lies from the leaf's first run to the end of its last: the
		// floor is in the leaf, as no run of the tree starts inside a run.
		i, found := n.search(k)
		if !found {
			i--
		}
		return &n.runs[i]
	}
	var best *run
	for n := s.root; n != nil; {
		i, found := n.search(k)
		if found {
			return &n.runs[i]
		}
		if i > 0 {
			best = &n.runs[i-1]
		}
		if n.children == nil {
			break
		}
		n = n.children[i]
	}
	return best
}

// ceil returns the run with the smallest lo above k, or nil. See floor for
// the pointer.
func (s *runSet) ceil(k u128) *run {
	var best *run
	for n := s.root; n != nil; {
		i, found := n.search(k)
		if found {
			i++
		}
		if i < len(n.runs) {
			best = &n.runs[i]
		}
		if n.children == nil {
			break
		}
		n = n.children[i]
	}
	return best
}

// contains reports whether x is in the set.
func (s *runSet) contains(x u128) bool {
	r := s.floor(x)
	return r != nil && !r.hi.less(x)
}

// insert adds r, whose lo must not be the lo of a run in the set.
func (s *runSet) insert(r run) {
	s.n++
	s.finger = nil
	if s.root == nil {
		s.root = &node{runs: append(make([]run, 0, 1), r)}
		return
	}
	if len(s.root.runs) >= maxRuns {
		mid, right := s.root.split(maxRuns / 2)
		s.root = &node{runs: append(make([]run, 0, 2), mid), children: []*node{s.root, right}}
	}
	s.root.insert(r)
}

// split cuts n at i: runs[i] goes up, the runs after it to a new node. Both
// halves get slices sized to their content, so that a node left half full
// (by appending in order, say) does not keep a full node's memory.
func (n *node) split(i int) (run, *node) {
	mid := n.runs[i]
	right := &node{runs: append(make([]run, 0, len(n.runs)-i-1), n.runs[i+1:]...)}
	n.runs = append(make([]run, 0, i+1), n.runs[:i]...)
	if n.children != nil {
		right.children = append(make([]*node, 0, len(n.children)-i-1), n.children[i+1:]...)
		n.children = append(make([]*node, 0, i+2), n.children[:i+1]...)
	}
	return mid, right
}

func (n *node) insert(r run) {
	i, _ := n.search(r.lo)
	if n.children == nil {
		n.runs = insertAt(n.runs, i, r)
		return
	}
	if len(n.children[i].runs) >= maxRuns {
		mid, right := n.children[i].split(maxRuns / 2)
		n.runs = insertAt(n.runs, i, mid)
		n.children = insertAt(n.children, i+1, right)
		if mid.lo.less(r.lo) {
			i++
		}
	}
	n.children[i].insert(r)
}

func insertAt[T any](s []T, i int, v T) []T {
	var zero T
	s = append(s, zero)
	copy(s[i+1:], s[i:])
	s[i] = v
	return s
}

func removeAt[T any](s []T, i int) ([]T, T) {
	v := s[i]
	copy(s[i:], s[i+1:])
	var zero T
	s[len(s)-1] = zero
	return s[:len(s)-1], v
}

// delete removes the run that starts at k, which must be in the set.
func (s *runSet) delete(k u128) {
	if s.root == nil {
		return
	}
	s.finger = nil
	if _, ok := s.root.remove(k, false); !ok {
		return
	}
	s.n--
	if len(s.root.runs) == 0 && s.root.children != nil {
		s.root = s.root.children[0]
	}
	// An empty leaf root is kept: a pool that empties and fills again
	// (request, release, request) then allocates nothing.
}

// remove deletes the run starting at k (or, when max is set, the last run)
// from the subtree of n and returns it. It expects n to hold more than
// minRuns runs unless n is the root: each step down first makes sure of that
// for the child it descends into (the classic one-pass B-tree deletion).
func (n *node) remove(k u128, max bool) (run, bool) {
	var i int
	var found bool
	if max {
		if n.children == nil {
			var r run
			n.runs, r = removeAt(n.runs, len(n.runs)-1)
			return r, true
		}
		i = len(n.runs)
	} else {
		i, found = n.search(k)
		if n.children == nil {
			if !found {
				return run{}, false
			}
			var r run
			n.runs, r = removeAt(n.runs, i)
			return r, true
		}
	}
	if len(n.children[i].runs) <= minRuns {
		n.growChild(i)
		return n.remove(k, max)
	}
	if found {
		// Replace runs[i] by its predecessor, the last run of the child on
		// its left, which has runs to spare.
		out := n.runs[i]
		n.runs[i], _ = n.children[i].remove(u128{}, true)
		return out, true
	}
	return n.children[i].remove(k, max)
}

// growChild gives children[i] one more run: stolen through n from a sibling
// that has runs to spare, or by merging it with a sibling and the run
// between them.
func (n *node) growChild(i int) {
	child := n.children[i]
	switch {
	case i > 0 && len(n.children[i-1].runs) > minRuns:
		left := n.children[i-1]
		var stolen run
		left.runs, stolen = removeAt(left.runs, len(left.runs)-1)
		child.runs = insertAt(child.runs, 0, n.runs[i-1])
		n.runs[i-1] = stolen
		if left.children != nil {
			var c *node
			left.children, c = removeAt(left.children, len(left.children)-1)
			child.children = insertAt(child.children, 0, c)
		}
	case i < len(n.runs) && len(n.children[i+1].runs) > minRuns:
		right := n.children[i+1]
		var stolen run
		right.runs, stolen = removeAt(right.runs, 0)
		child.runs = append(child.runs, n.runs[i])
		n.runs[i] = stolen
		if right.children != nil {
			var c *node
			right.children, c = removeAt(right.children, 0)
			child.children = append(child.children, c)
		}
	default:
		if i >= len(n.runs) {
			i--
			child = n.children[i]
		}
		var mid run
		var right *node
		n.runs, mid = removeAt(n.runs, i)
		n.children, right = removeAt(n.children, i+1)
		child.runs = append(append(child.runs, mid), right.runs...)
		if right.children != nil {
			child.children = append(child.children, right.children...)
		}
	}
}

// ascend calls fn for each run in order until fn returns false.
func (s *runSet) ascend(fn func(run) bool) {
	if s.root != nil {
		s.root.ascend(fn)
	}
}

func (n *node) ascend(fn func(run) bool) bool {
	for i, r := range n.runs {
		if n.children != nil && !n.children[i].ascend(fn) {
			return false
		}
		if !fn(r) {
			return false
		}
	}
	if n.children != nil {
		return n.children[len(n.runs)].ascend(fn)
	}
	return true
}

// runEdit records how one add or remove changed the runs, for a [Store]:
// the runs to write (keyed by lo) and the key of a run that is gone.
type runEdit struct {
	put    [2]run
	nput   int
	del    u128
	hasDel bool
}

// putRun and delKey record into e; a nil e records nothing.
func (e *runEdit) putRun(r run) {
	if e != nil {
		e.put[e.nput] = r
		e.nput++
	}
}

func (e *runEdit) delKey(k u128) {
	if e != nil {
		e.del, e.hasDel = k, true
	}
}

// leaf returns the leaf where k belongs, or nil when a run of an inner node
// starts at k.
func (s *runSet) leaf(k u128) *node {
	n := s.root
	for n.children != nil {
		i, found := n.search(k)
		if found {
			return nil
		}
		n = n.children[i]
	}
	return n
}

// add inserts the addresses lo..hi, none of which may be in the set, merging
// them with the runs they touch, and records the change in e.
//
// The common case is handled in the leaf where lo belongs, with one descent:
// when both neighbours of lo are in that leaf and the leaf can take the
// change without splitting or underflowing. Otherwise the general path looks
// the neighbours up and lets insert and delete rebalance.
func (s *runSet) add(lo, hi u128, e *runEdit) {
	if s.root == nil {
		s.insert(run{lo, hi})
		e.putRun(run{lo, hi})
		return
	}
	n := s.finger
	if n == nil || len(n.runs) < 2 || !n.runs[0].lo.less(lo) || !lo.less(n.runs[len(n.runs)-1].lo) {
		n = s.leaf(lo)
	}
	if n != nil {
		s.finger = n
		i, _ := n.search(lo) // runs[i] is the first run above hi
		root := n == s.root
		if (i > 0 || root) && (i < len(n.runs) || root) {
			joinPrev := i > 0 && n.runs[i-1].hi.add1() == lo
			joinNext := i < len(n.runs) && hi != u128Max && n.runs[i].lo == hi.add1()
			switch {
			case joinPrev && joinNext:
				if len(n.runs) > minRuns || root {
					e.delKey(n.runs[i].lo)
					n.runs[i-1].hi = n.runs[i].hi
					e.putRun(n.runs[i-1])
					n.runs, _ = removeAt(n.runs, i)
					s.n--
					return
				}
			case joinPrev:
				n.runs[i-1].hi = hi
				e.putRun(n.runs[i-1])
				return
			case joinNext:
				e.delKey(n.runs[i].lo)
				n.runs[i].lo = lo
				e.putRun(n.runs[i])
				return
			default:
				if len(n.runs) < maxRuns {
					n.runs = insertAt(n.runs, i, run{lo, hi})
					s.n++
					e.putRun(run{lo, hi})
					return
				}
			}
		}
	}

	prev := s.floor(lo)
	joinPrev := prev != nil && prev.hi.add1() == lo
	var next *run
	if hi != u128Max {
		if next = s.ceil(lo); next != nil && next.lo != hi.add1() {
			next = nil
		}
	}
	switch {
	case joinPrev && next != nil:
		nextLo, nextHi := next.lo, next.hi
		prev.hi = nextHi
		e.putRun(*prev)
		s.delete(nextLo) // invalidates prev
		e.delKey(nextLo)
	case joinPrev:
		prev.hi = hi
		e.putRun(*prev)
	case next != nil:
		e.delKey(next.lo)
		next.lo = lo // keeps the order: lo is above the previous run
		e.putRun(*next)
	default:
		r := run{lo, hi}
		s.insert(r)
		e.putRun(r)
	}
}

// remove deletes the addresses lo..hi when they all lie in one run of the
// set, records the change in e and returns true; otherwise it changes
// nothing and returns false. Like add, it takes a fast path in the leaf.
func (s *runSet) remove(lo, hi u128, e *runEdit) bool {
	if s.root == nil {
		return false
	}
	n := s.finger
	if n == nil || len(n.runs) == 0 || lo.less(n.runs[0].lo) || n.runs[len(n.runs)-1].hi.less(lo) {
		n = s.leaf(lo)
	}
	if n != nil {
		s.finger = n
		i, found := n.search(lo)
		if !found {
			i--
		}
		root := n == s.root
		if i < 0 && root {
			return false
		}
		if i >= 0 {
			r := &n.runs[i]
			if r.hi.less(hi) {
				return false
			}
			rlo, rhi := r.lo, r.hi
			switch {
			case rlo == lo && rhi == hi:
				if len(n.runs) > minRuns || root {
					e.delKey(rlo)
					n.runs, _ = removeAt(n.runs, i)
					s.n--
					return true
				}
			case rlo == lo:
				e.delKey(rlo)
				r.lo = hi.add1()
				e.putRun(*r)
				return true
			case rhi == hi:
				r.hi = lo.sub1()
				e.putRun(*r)
				return true
			default:
				if len(n.runs) < maxRuns {
					r.hi = lo.sub1()
					e.putRun(*r)
					tail := run{hi.add1(), rhi}
					n.runs = insertAt(n.runs, i+1, tail)
					s.n++
					e.putRun(tail)
					return true
				}
			}
		}
	}

	r := s.floor(lo)
	if r == nil || r.hi.less(hi) {
		return false
	}
	rlo, rhi := r.lo, r.hi
	switch {
	case rlo == lo && rhi == hi:
		s.delete(rlo)
		e.delKey(rlo)
	case rlo == lo:
		r.lo = hi.add1()
		e.delKey(rlo)
		e.putRun(*r)
	case rhi == hi:
		r.hi = lo.sub1()
		e.putRun(*r)
	default:
		r.hi = lo.sub1()
		e.putRun(*r)
		tail := run{hi.add1(), rhi}
		s.insert(tail)
		e.putRun(tail)
	}
	return true
}

// count returns the number of addresses of the set inside first..last,
// capped at math.MaxUint64. It walks every run: for loading state only.
func (s *runSet) count(first, last u128) uint64 {
	var n u128
	s.ascend(func(r run) bool {
		lo, hi := r.lo, r.hi
		if lo.less(first) {
			lo = first
		}
		if last.less(hi) {
			hi = last
		}
		if !hi.less(lo) {
			size, c1 := hi.sub(lo).add(u128{0, 1})
			var c2 bool
			n, c2 = n.add(size)
			if c1 || c2 {
				n = u128Max
				return false
			}
		}
		return true
	})
	return n.sat64()
}
