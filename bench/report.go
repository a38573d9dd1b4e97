//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// report collects the measurements and renders them.
type report struct {
	cfg     config
	fs      string // filesystem type of the run dir
	start   time.Time
	ops     map[string]map[string]samples // contender -> operation -> samples
	scaling map[string]samples            // contender -> setup of container k

	heapPerContainer float64 // bytes of Go heap per live cnm container
	rssPerContainer  float64 // bytes of RSS per live cnm container
	parallel         []parallelRun
	// rates holds TCP throughputs in bytes/s by br_netfilter setting, then path.
	rates              map[string]map[string][]float64
	brNetfilterDefault string
	workers            *workersResult // nil unless the workers phase ran
}

type parallelRun struct {
	contender string
	workers   int
	total     time.Duration
	errors    int
}

func newReport(cfg config, fs string) *report {
	return &report{cfg: cfg, fs: fs, start: time.Now(), ops: map[string]map[string]samples{}, scaling: map[string]samples{},
		rates: map[string]map[string][]float64{}}
}

func (r *report) addRate(setting, path string, bytesPerSec float64) {
	if r.rates[setting] == nil {
		r.rates[setting] = map[string][]float64{}
	}
	r.rates[setting][path] = append(r.rates[setting][path], bytesPerSec)
}

func (r *report) rate(setting, path string) float64 { return medianFloat(r.rates[setting][path]) }

func (r *report) add(contender, op string, d time.Duration) {
	if r.ops[contender] == nil {
		r.ops[contender] = map[string]samples{}
	}
	r.ops[contender][op] = append(r.ops[contender][op], d)
}

// parallelMedian returns the median wall time of the parallel runs of one
// contender with the given workers, and their errors in total.
func (r *report) parallelMedian(contender string, workers int) (time.Duration, int) {
	var s samples
	errs := 0
	for _, pr := range r.parallel {
		if pr.contender == contender && pr.workers == workers {
			s = append(s, pr.total)
			errs += pr.errors
		}
	}
	return s.median(), errs
}

func (r *report) median(contender, op string) time.Duration { return r.ops[contender][op].median() }

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func medianFloat(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	c := slices.Clone(v)
	slices.Sort(c)
	return c[len(c)/2]
}

// machine describes where the figures come from.
func machine() string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs, Linux %s, %s", cpu, runtime.NumCPU(), unix.ByteSliceToString(u.Release[:]), runtime.Version())
}

// scalingAt is the median setup cost around container k.
func (r *report) scalingAt(contender string, k int) time.Duration {
	return r.scaling[contender].window(k, 10).median()
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	contenders := []string{"cnm", "floor", "CNI bridge"}

	p("## cnm bench, %s\n\n", r.start.UTC().Format("2006-01-02 15:04 MST"))
	p("Machine: %s. One run of `scripts/bench.sh`, inside a throwaway host namespace", machine())
	if r.cfg.ran("setup") || r.cfg.ran("leave") {
		p("; %d interleaved rounds of %d containers per contender (the order shuffled each round)", r.cfg.rounds, r.cfg.batch)
	}
	p(". Namespaces, cnm's run dir and IPAM files on %s. Phases: %s.\n\n", r.fs, r.cfg.phases)

	if r.cfg.ran("setup") || r.cfg.ran("leave") {
		r.perContainer(p, contenders)
	}
	if r.cfg.ran("scaling") {
		r.scalingSection(p, contenders)
	}
	if r.cfg.ran("parallel") {
		r.parallelSection(p)
	}
	if r.workers != nil {
		p("%s", r.workers.markdown(r.cfg))
	}
	if r.cfg.ran("memory") {
		p("### Memory (cnm, %d live containers)\n\n", r.cfg.scale)
		p("Go heap: %.1f KiB per live container. Process RSS: %.1f KiB per live container (kernel memory for namespaces and links not included).\n\n",
			r.heapPerContainer/1024, r.rssPerContainer/1024)
	}
	if r.cfg.ran("throughput") {
		r.throughputSection(p)
	}
	r.targets(p)
	return b.String()
}

// printer appends formatted text to the report.
type printer func(format string, a ...any)

// perContainer renders the per-container table and the ratios of the setup
// and leave phases.
func (r *report) perContainer(p printer, contenders []string) {
	have := func(c string) bool { return r.ops[c] != nil }
	p("### Per container\n\n| operation | contender | median | p95 | samples |\n|---|---|---|---|---|\n")
	for _, op := range []string{"setup", "teardown", "leave"} {
		for _, c := range contenders {
			if s := r.ops[c][op]; len(s) > 0 {
				p("| %s | %s | %s | %s | %d |\n", op, c, ms(s.median()), ms(s.p95()), len(s))
			}
		}
	}
	p("\nsetup: NewSandbox + CreateEndpoint + Join (floor: namespace, one RTM_NEWLINK, address, up, route; CNI: namespace + bridge plugin ADD with host-local IPAM). ")
	p("teardown: the whole container, batched per round, timed until the kernel removed every host-side veth end, divided by the batch. ")
	p("leave: cnm's Leave of one endpoint from a living sandbox; floor: one RTM_DELLINK.\n\n")

	p("### Ratios (medians, same run)\n\n| ratio | value |\n|---|---|\n")
	p("| setup cnm / floor | %.2f× |\n", ratio(r.median("cnm", "setup"), r.median("floor", "setup")))
	if have("CNI bridge") {
		p("| setup CNI / cnm | %.2f× |\n", ratio(r.median("CNI bridge", "setup"), r.median("cnm", "setup")))
		p("| teardown CNI / cnm | %.2f× |\n", ratio(r.median("CNI bridge", "teardown"), r.median("cnm", "teardown")))
	}
	p("| teardown cnm / floor | %.2f× |\n", ratio(r.median("cnm", "teardown"), r.median("floor", "teardown")))
	p("| leave cnm / floor (one link deletion) | %.2f× |\n\n", ratio(r.median("cnm", "leave"), r.median("floor", "leave")))
}

// scalingSection renders the scaling phase.
func (r *report) scalingSection(p printer, contenders []string) {
	p("### Scaling: setup cost of container k on one network (median of k±10)\n\n")
	p("Containers were added one per contender per step, in a random order, so at every step the host held as many of each.\n\n")
	var cols []string
	for _, c := range contenders {
		if len(r.scaling[c]) > 0 {
			cols = append(cols, c)
		}
	}
	diff := len(r.scaling["cnm"]) > 0 && len(r.scaling["floor"]) > 0
	p("| k | %s |", strings.Join(cols, " | "))
	if diff {
		p(" cnm − floor |")
	}
	p("\n|---|%s", strings.Repeat("---|", len(cols)))
	if diff {
		p("---|")
	}
	p("\n")
	last := min(1000, r.cfg.scale)
	for _, k := range []int{10, 100, 500, 1000} {
		if k > r.cfg.scale {
			continue
		}
		p("| %d |", k)
		for _, c := range cols {
			p(" %s |", ms(r.scalingAt(c, k)))
		}
		if diff {
			p(" %s |", ms(r.scalingAt("cnm", k)-r.scalingAt("floor", k)))
		}
		p("\n")
	}
	p("| %d / 10 |", last)
	for _, c := range cols {
		p(" %.2f× |", ratio(r.scalingAt(c, last), r.scalingAt(c, 10)))
	}
	if diff {
		p(" |")
	}
	p("\n\n![setup cost of container k](scaling.svg)\n![setup cost of container k, cnm and floor](scaling-cnm-floor.svg)\n\n")
	for _, c := range contenders {
		if s, ok := r.ops[c][fmt.Sprintf("teardown of %d", r.cfg.scale)]; ok {
			p("Teardown of all %d %s containers in one batch (contenders in a random order): %s per container.  \n", r.cfg.scale, c, ms(s.median()))
		}
	}
	p("\n")
}

// parallelSection renders the parallel phase.
func (r *report) parallelSection(p printer) {
	p("### Parallel setup (%d containers; each run 3 times, in a random order; median)\n\n| contender | workers | total | per container | errors |\n|---|---|---|---|---|\n", r.cfg.parallel)
	for _, c := range []string{"cnm", "floor"} {
		for _, w := range []int{1, 2, 8} {
			t, errs := r.parallelMedian(c, w)
			p("| %s | %d | %s | %s | %d |\n", c, w, ms(t), ms(t/time.Duration(max(r.cfg.parallel, 1))), errs)
		}
	}
	p("\n")
}

// throughputSection renders the throughput phase.
func (r *report) throughputSection(p printer) {
	def := r.brNetfilterDefault
	p("### TCP throughput (one connection, %v per run, median of 3 runs per cell)\n\n", r.cfg.throughput)
	p("| path | br_netfilter as the kernel sets it (%s) | br_netfilter off |\n|---|---|---|\n", def)
	for _, path := range []string{"cnm bridge", "floor bridge", "bare veth"} {
		p("| %s | %.2f Gbit/s | %.2f Gbit/s |\n", path, r.rate(def, path)*8/1e9, r.rate("0", path)*8/1e9)
	}
	p("| cnm bridge / bare veth | %.1f%% | %.1f%% |\n", 100*r.rate(def, "cnm bridge")/r.rate(def, "bare veth"), 100*r.rate("0", "cnm bridge")/r.rate("0", "bare veth"))
	p("| cnm bridge / floor bridge | %.1f%% | %.1f%% |\n\n", 100*r.rate(def, "cnm bridge")/r.rate(def, "floor bridge"), 100*r.rate("0", "cnm bridge")/r.rate("0", "floor bridge"))
	p("The bridge path crosses two veth pairs and the bridge, the bare path one veth pair. With br_netfilter on, every bridged frame also passes conntrack and the forward hook.\n\n")
}

// targets renders the targets whose phases ran.
func (r *report) targets(p printer) {
	var rows []string
	check := func(name, measured string, ok bool) {
		mark := "met"
		if !ok {
			mark = "**missed**"
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s |\n", name, measured, mark))
	}
	if r.cfg.ran("setup") {
		sr := ratio(r.median("cnm", "setup"), r.median("floor", "setup"))
		check("setup ≤ 1.5× floor", fmt.Sprintf("%.2f×", sr), sr <= 1.5)
		if r.ops["CNI bridge"] != nil {
			cr := ratio(r.median("CNI bridge", "setup"), r.median("cnm", "setup"))
			check("setup ≥ 5× faster than CNI", fmt.Sprintf("%.2f×", cr), cr >= 5)
		}
		tr := ratio(r.median("cnm", "teardown"), r.median("floor", "teardown"))
		check("teardown ≤ 2× floor", fmt.Sprintf("%.2f×", tr), tr <= 2)
	}
	if r.cfg.ran("leave") {
		lr := ratio(r.median("cnm", "leave"), r.median("floor", "leave"))
		check("leave ≈ one link deletion (≤ 1.2×)", fmt.Sprintf("%.2f×", lr), lr <= 1.2)
	}
	if r.cfg.ran("scaling") && r.cfg.scale >= 1000 {
		k := ratio(r.scalingAt("cnm", 1000), r.scalingAt("cnm", 10))
		check("container 1000 ≤ 1.3× container 10", fmt.Sprintf("%.2f×", k), k <= 1.3)
	}
	if r.cfg.ran("parallel") {
		one, _ := r.parallelMedian("cnm", 1)
		eight, errs := r.parallelMedian("cnm", 8)
		check("8 workers no slower in total than 1, no error", fmt.Sprintf("%s vs %s, %d errors", ms(eight), ms(one), errs),
			eight <= one && errs == 0)
	}
	if r.cfg.ran("memory") {
		check("Go heap < 16 KiB per live container", fmt.Sprintf("%.1f KiB", r.heapPerContainer/1024), r.heapPerContainer < 16*1024)
	}
	if r.cfg.ran("throughput") {
		br, ve := r.rate(r.brNetfilterDefault, "cnm bridge"), r.rate(r.brNetfilterDefault, "bare veth")
		check("bridge throughput ≥ 95% of bare veth", fmt.Sprintf("%.1f%%", 100*br/ve), br >= 0.95*ve)
	}
	if len(rows) == 0 {
		return
	}
	p("### Targets\n\n| target | measured | |\n|---|---|---|\n")
	for _, row := range rows {
		p("%s", row)
	}
}

// write prints the report and saves it with the plot in dir.
func (r *report) write(dir string) error {
	md := r.markdown()
	fmt.Print(md)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if r.workers != nil {
		f, err := os.Create(filepath.Join(dir, "workers.csv"))
		if err != nil {
			return err
		}
		err = r.workers.writeCSV(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	if !r.cfg.ran("scaling") {
		return nil // no plot: keep the last one
	}
	colors := map[string]string{"cnm": "#1f77b4", "floor": "#2ca02c", "CNI bridge": "#d62728"}
	var ss []series
	for _, c := range []string{"cnm", "floor", "CNI bridge"} {
		if s := r.scaling[c]; len(s) > 0 {
			ss = append(ss, series{name: c, color: colors[c], ys: rollingMedian(s, 10)})
		}
	}
	const xLabel, yLabel = "k (containers already on the network + 1)", "setup (ms, rolling median of 21)"
	svg := svgPlot("Setup cost of container k on one bridge network", xLabel, yLabel, ss)
	if err := os.WriteFile(filepath.Join(dir, "scaling.svg"), []byte(svg), 0o644); err != nil {
		return err
	}
	// The same without CNI, whose scale hides the other two.
	ss = slices.DeleteFunc(ss, func(s series) bool { return s.name == "CNI bridge" })
	svg = svgPlot("Setup cost of container k: cnm and the floor", xLabel, yLabel, ss)
	return os.WriteFile(filepath.Join(dir, "scaling-cnm-floor.svg"), []byte(svg), 0o644)
}
