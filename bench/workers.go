//go:build linux

package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The workers phase measures, for cnm and the floor, each with 1 and with
// 2 workers (config.workers), what a runtime starting and stopping many
// containers at once pays:
//
//   - setup: NewSandbox + CreateEndpoint + Join, per call;
//   - leave: Leave of one endpoint, per call (the floor: one RTM_DELLINK);
//   - teardown: Leave + endpoint Delete + sandbox Delete of each of the run's
//     containers (the floor: RTM_DELLINK + namespace drop), per call and in
//     total, until the kernel removed every host end;
//   - sandbox: NewSandbox alone (the floor: unshare + bind mount + loopback
//     up), per call and in total.
//
// One run is one contender with one worker count: n containers set up, then
// all torn down, then n sandboxes made alone and removed. The runs of all
// contenders and worker counts are shuffled, and the whole is repeated
// config.workersRuns times. The filesystem of the run dir (config.tmp) is
// reported with the figures: NewSandbox writes files there.
//
// On a noisy machine whole rounds run slower or faster, so besides the ratio
// of the medians of all rounds, the report gives the ratio within each
// round (median and range), and the load average at the start of the runs.

// Operations of the workers phase.
const (
	opSetup    = "setup"
	opLeave    = "leave"
	opTeardown = "teardown"
	opSandbox  = "sandbox"
	// opSettle is cnm's teardown until Controller.Settle returned, where
	// the controller has that method.
	opSettle = "teardown, settled"
)

// Subjects of the workers phase besides the contenders' own names.
const floorHostSocket = "floor, host socket"

// subject is one column of the workers phase: a contender, or the floor
// with its leaves sent on the host namespace's one netlink socket (a
// diagnostic: it runs only with more than one worker, since with one nothing
// waits for a socket, and only its teardown is reported).
type subject struct {
	name       string
	c          contender
	hostSocket bool
}

// workerRow is one measurement of the workers phase.
type workerRow struct {
	subject string
	op      string
	workers int
	round   int     // 1-based repetition
	load    float64 // 1-minute load average when the run started
	kind    string  // "call": one call's latency; "total": a whole run's wall time
	d       time.Duration
}

// workersResult holds what the workers phase measured.
type workersResult struct {
	fs     string // filesystem type of the run dir, e.g. "ext4"
	dir    string // the directory the run dir was made in
	rows   []workerRow
	errors map[workerKey]int
	errMsg []string // the first few errors, for the report
}

// workerKey names one cell of the workers phase.
type workerKey struct {
	subject, op string
	workers     int
}

// runInfo is what the rows of one run share.
type runInfo struct {
	round int
	load  float64
}

// record adds the latencies of the calls that succeeded and, if total is
// not zero, the run's wall time; it counts the calls that failed.
func (res *workersResult) record(k workerKey, ri runInfo, total time.Duration, calls []time.Duration, errs []error) {
	for i, d := range calls {
		if errs[i] != nil {
			res.errors[k]++
			if len(res.errMsg) < 10 {
				res.errMsg = append(res.errMsg, fmt.Sprintf("%s %s, %s: %v", k.subject, k.op, workersWord(k.workers), errs[i]))
			}
			log.Printf("workers: %s %s, %s: %v", k.subject, k.op, workersWord(k.workers), errs[i])
			continue
		}
		res.rows = append(res.rows, workerRow{k.subject, k.op, k.workers, ri.round, ri.load, "call", d})
	}
	if total > 0 {
		res.rows = append(res.rows, workerRow{k.subject, k.op, k.workers, ri.round, ri.load, "total", total})
	}
}

// samples returns the durations of one kind recorded for k; round 0: of all
// rounds.
func (res *workersResult) samples(k workerKey, kind string, round int) samples {
	var s samples
	for _, r := range res.rows {
		if r.subject == k.subject && r.op == k.op && r.workers == k.workers && r.kind == kind && (round == 0 || r.round == round) {
			s = append(s, r.d)
		}
	}
	return s
}

// roundRatios returns, for each round in which both a and b have a median
// of the given kind, a's over b's.
func (res *workersResult) roundRatios(a, b workerKey, kind string, rounds int) []float64 {
	var v []float64
	for round := 1; round <= rounds; round++ {
		x, y := res.samples(a, kind, round).median(), res.samples(b, kind, round).median()
		if x > 0 && y > 0 {
			v = append(v, ratio(x, y))
		}
	}
	return v
}

// loads returns the load averages seen at the start of the runs.
func (res *workersResult) loads() []float64 {
	var v []float64
	for _, r := range res.rows {
		if r.kind == "total" && r.op == opTeardown {
			v = append(v, r.load)
		}
	}
	return v
}

// workers runs the workers phase.
func (h *harness) workers(ctx context.Context) error {
	counts, err := parseCounts(h.cfg.workers)
	if err != nil {
		return err
	}
	subjects := []subject{{name: h.cs[0].name(), c: h.cs[0]}, {name: h.cs[1].name(), c: h.cs[1]}} // cnm and floor
	if h.cfg.workersHostSocket {
		subjects = append(subjects, subject{name: floorHostSocket, c: h.cs[1], hostSocket: true})
	}
	res := &workersResult{fs: fsType(h.dir), dir: h.cfg.tmp, errors: map[workerKey]int{}}
	if res.dir == "" {
		res.dir = "the system's temp dir"
	}
	h.r.workers = res
	type run struct {
		s       subject
		workers int
	}
	for rep := 1; rep <= h.cfg.workersRuns; rep++ {
		var runs []run
		for _, s := range subjects {
			for _, w := range counts {
				if !s.hostSocket || w > 1 {
					runs = append(runs, run{s, w})
				}
			}
		}
		rand.Shuffle(len(runs), func(i, j int) { runs[i], runs[j] = runs[j], runs[i] })
		for _, r := range runs {
			start := time.Now()
			if err := h.workersRun(ctx, res, rep, r.s, r.workers); err != nil {
				return fmt.Errorf("%s, %s: %w", r.s.name, workersWord(r.workers), err)
			}
			log.Printf("workers: round %d/%d: %s, %s: %v", rep, h.cfg.workersRuns, r.s.name, workersWord(r.workers), time.Since(start).Round(time.Millisecond))
		}
	}
	return nil
}

// workersRun is one run of the workers phase: s sets up
// config.workersContainers containers with the given number of workers,
// tears them all down, then makes as many sandboxes alone and removes them.
func (h *harness) workersRun(ctx context.Context, res *workersResult, round int, s subject, workers int) error {
	n := h.cfg.workersContainers
	ri := runInfo{round: round, load: loadAverage()}
	key := func(op string) workerKey { return workerKey{s.name, op, workers} }
	pause := func() { time.Sleep(h.cfg.workersPause) }

	// Setup.
	nums := make([]int, n)
	for i := range nums {
		nums[i] = h.number(s.c)
	}
	made := make([]*box, n)
	calls := make([]time.Duration, n)
	errs := make([]error, n)
	total := inParallel(n, workers, func(i int) {
		start := time.Now()
		made[i], errs[i] = s.c.setup(ctx, nums[i])
		calls[i] = time.Since(start)
	})
	res.record(key(opSetup), ri, total, calls, errs)
	var boxes []*box
	for _, b := range made {
		if b != nil {
			boxes = append(boxes, b)
		}
	}

	// Teardown, each container's leave timed on its own too.
	ends := make([]int, len(boxes))
	for i, b := range boxes {
		e, err := hostEnd(ctx, h.host, b.key)
		if err != nil {
			return err
		}
		ends[i] = e
	}
	leaves := make([]time.Duration, len(boxes))
	downs := make([]time.Duration, len(boxes))
	leaveErrs := make([]error, len(boxes))
	downErrs := make([]error, len(boxes))
	start := time.Now()
	inParallel(len(boxes), workers, func(i int) {
		b := boxes[i]
		leave := b.leave
		if s.hostSocket {
			leave = b.leaveOnHost
		}
		t := time.Now()
		err := leave(ctx)
		leaves[i], leaveErrs[i] = time.Since(t), err
		if err == nil {
			err = b.afterLeave(ctx)
		}
		downs[i], downErrs[i] = time.Since(t), err
	})
	var gone []int // host ends whose container was torn down
	for i, e := range ends {
		if downErrs[i] == nil {
			gone = append(gone, e)
		}
	}
	if err := waitGone(ctx, h.host, gone); err != nil {
		return err
	}
	total = time.Since(start)
	res.record(key(opLeave), ri, 0, leaves, leaveErrs)
	res.record(key(opTeardown), ri, total, downs, downErrs)
	if err := h.settleController(ctx, res, key(opSettle), ri, start); err != nil {
		return err
	}
	pause() // the kernel destroys dropped namespaces after the fact
	if s.hostSocket {
		return nil
	}

	// Sandboxes alone.
	sbx, ok := s.c.(sandboxer)
	if !ok {
		return nil
	}
	for i := range nums {
		nums[i] = h.number(s.c)
	}
	removes := make([]func(context.Context) error, n)
	total = inParallel(n, workers, func(i int) {
		start := time.Now()
		removes[i], errs[i] = sbx.sandbox(ctx, nums[i])
		calls[i] = time.Since(start)
	})
	res.record(key(opSandbox), ri, total, calls, errs)
	inParallel(n, workers, func(i int) {
		if removes[i] != nil {
			if err := removes[i](ctx); err != nil {
				log.Printf("workers: %s: remove sandbox: %v", s.name, err)
			}
		}
	})
	pause()
	return nil
}

// settler is a controller that can wait for its background work to end.
// Versions of cnm that remove interfaces in the background have it; the
// harness does not need it to build.
type settler interface {
	Settle(ctx context.Context) error
}

// settleController waits, if cnm's controller can say so, until it has no
// background work left, and records the time from start to then as a total
// of k. Nothing is recorded for a controller without Settle (no background
// work), nor for a subject that is not cnm.
func (h *harness) settleController(ctx context.Context, res *workersResult, k workerKey, ri runInfo, start time.Time) error {
	s, ok := any(h.ctrl).(settler)
	if !ok || k.subject != h.cs[0].name() {
		return nil
	}
	if err := s.Settle(ctx); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	res.record(k, ri, time.Since(start), nil, nil)
	return nil
}

// inParallel calls job(0) … job(n-1) from the given number of goroutines,
// each taking the next index as soon as it is done with the last, and
// returns the wall time until every call returned.
func inParallel(n, workers int, job func(i int)) time.Duration {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				job(i)
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// workersWord says "1 worker", "2 workers".
func workersWord(w int) string {
	if w == 1 {
		return "1 worker"
	}
	return strconv.Itoa(w) + " workers"
}

// loadAverage returns the 1-minute load average, or 0 if unreadable.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// parseCounts parses a comma-separated list of worker counts, such as "1,2".
func parseCounts(s string) ([]int, error) {
	var counts []int
	for _, f := range strings.Split(s, ",") {
		w, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || w < 1 {
			return nil, fmt.Errorf("-workers %q: %q is not a worker count (1 or more)", s, f)
		}
		counts = append(counts, w)
	}
	return counts, nil
}

// fsType names the filesystem that holds dir.
func fsType(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown filesystem"
	}
	switch int64(st.Type) {
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.EXT4_SUPER_MAGIC: // ext2 and ext3 too
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("filesystem type 0x%x", st.Type)
}

// markdown renders the workers phase as a section of the report.
func (res *workersResult) markdown(cfg config) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	counts, _ := parseCounts(cfg.workers) // checked when the phase ran
	n, rounds := cfg.workersContainers, cfg.workersRuns
	cnm := func(op string, w int) workerKey { return workerKey{"cnm", op, w} }
	flr := func(op string, w int) workerKey { return workerKey{"floor", op, w} }

	words := make([]string, len(counts))
	for i, w := range counts {
		words[i] = strconv.Itoa(w)
	}
	list := strings.Join(words, ", ")
	if len(words) > 1 {
		list = strings.Join(words[:len(words)-1], ", ") + " and " + words[len(words)-1]
	}
	p("### Workers: %s in parallel (%d containers per run; %d rounds, each with every contender and worker count in a random order; run dir on %s, in %s)\n\n",
		list, n, rounds, res.fs, res.dir)
	if l := res.loads(); len(l) > 0 {
		p("1-minute load average at the start of the runs: median %.1f, range %.1f–%.1f (%d CPUs).\n\n", medianFloat(l), slices.Min(l), slices.Max(l), runtime.NumCPU())
	}

	p("Per call, median of all calls; \"by round\": cnm / floor within each round, median (range):\n\n")
	p("| operation | workers | cnm | floor | cnm / floor | by round | cnm p95 | floor p95 | calls (cnm, floor) |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, op := range []string{opSetup, opLeave, opTeardown, opSandbox} {
		for _, w := range counts {
			c, f := res.samples(cnm(op, w), "call", 0), res.samples(flr(op, w), "call", 0)
			p("| %s | %d | %s | %s | %.2f× | %s | %s | %s | %d, %d |\n", op, w, ms(c.median()), ms(f.median()),
				ratio(c.median(), f.median()), spread(res.roundRatios(cnm(op, w), flr(op, w), "call", rounds)),
				ms(c.p95()), ms(f.p95()), len(c), len(f))
		}
	}
	p("\nsetup: NewSandbox + CreateEndpoint + Join on one bridge network (floor: namespace, one RTM_NEWLINK, address, up, route). ")
	p("leave: Leave of the container's one endpoint (floor: one RTM_DELLINK of the veth, on the container's own netlink socket). ")
	p("teardown: Leave + endpoint Delete + sandbox Delete (floor: RTM_DELLINK + namespace drop). ")
	p("sandbox: NewSandbox alone (floor: unshare + bind mount + loopback up). ")
	p("Each call is timed until it returns, by the worker that makes it, while the others work; what a call leaves to the background is in the wall times below only.\n\n")

	p("Wall time of a run of %d, median of the rounds:\n\n", n)
	p("| operation | workers | cnm | floor | cnm / floor | by round |\n|---|---|---|---|---|---|\n")
	for _, op := range []struct{ op, label string }{
		{opSetup, fmt.Sprintf("setup of %d", n)},
		{opTeardown, fmt.Sprintf("teardown of %d", n)},
		{opSandbox, fmt.Sprintf("%d sandboxes alone", n)},
	} {
		for _, w := range counts {
			c, f := res.samples(cnm(op.op, w), "total", 0).median(), res.samples(flr(op.op, w), "total", 0).median()
			p("| %s | %d | %s | %s | %.2f× | %s |\n", op.label, w, ms(c), ms(f), ratio(c, f),
				spread(res.roundRatios(cnm(op.op, w), flr(op.op, w), "total", rounds)))
		}
		one := counts[0]
		for _, w := range counts[1:] {
			// The gain of more workers, for each contender: its own ratio.
			gain := func(k func(string, int) workerKey) string {
				a, b := res.samples(k(op.op, w), "total", 0).median(), res.samples(k(op.op, one), "total", 0).median()
				return fmt.Sprintf("%.2f×; by round %s", ratio(a, b), spread(res.roundRatios(k(op.op, w), k(op.op, one), "total", rounds)))
			}
			p("| %s, %d workers / %d | | %s | %s | | |\n", op.label, w, one, gain(cnm), gain(flr))
		}
	}
	p("\nteardown is timed until the kernel removed every host-side veth end. ")
	p("A ratio of workers below 1 is the gain of working in parallel; 1 means none.\n\n")
	for _, w := range counts {
		if s := res.samples(cnm(opSettle, w), "total", 0); len(s) > 0 {
			p("cnm's teardown of %d with %s, until Controller.Settle returned (its background work done): %s (median).  \n", n, workersWord(w), ms(s.median()))
		}
	}
	if len(res.samples(cnm(opSettle, counts[0]), "total", 0)) > 0 {
		p("\n")
	}

	if cfg.workersHostSocket && len(counts) > 1 {
		p("Diagnostic: the floor with each RTM_DELLINK sent on the host namespace's one netlink socket, instead of on the container's own. A netlink socket serves one request at a time, from send to acknowledgement.\n\n")
		p("| workers | leave per call (median) | teardown of %d (median) | teardown / floor's, by round |\n|---|---|---|---|\n", n)
		for _, w := range counts[1:] {
			k := workerKey{floorHostSocket, opTeardown, w}
			p("| %d | %s | %s | %s |\n", w, ms(res.samples(workerKey{floorHostSocket, opLeave, w}, "call", 0).median()),
				ms(res.samples(k, "total", 0).median()), spread(res.roundRatios(k, flr(opTeardown, w), "total", rounds)))
		}
		p("\n")
	}

	total := 0
	for _, e := range res.errors {
		total += e
	}
	if total == 0 {
		p("Errors: none.\n\n")
	} else {
		p("Errors: %d; their calls are left out of the figures. The first ones:\n\n", total)
		for _, m := range res.errMsg {
			p("- %s\n", m)
		}
		p("\n")
	}
	return b.String()
}

// spread formats ratios as their median and range: "1.02× (0.95–1.10)".
func spread(v []float64) string {
	if len(v) == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f× (%.2f–%.2f)", medianFloat(v), slices.Min(v), slices.Max(v))
}

// writeCSV writes every measurement of the workers phase, one a line:
// subject, operation, workers, round, kind (call or total), nanoseconds,
// the run dir's filesystem and the load average when the run started.
func (res *workersResult) writeCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	if err := cw.Write([]string{"subject", "op", "workers", "round", "kind", "ns", "fs", "load"}); err != nil {
		return err
	}
	for _, r := range res.rows {
		rec := []string{r.subject, r.op, strconv.Itoa(r.workers), strconv.Itoa(r.round), r.kind, strconv.FormatInt(int64(r.d), 10), res.fs,
			strconv.FormatFloat(r.load, 'f', 2, 64)}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
