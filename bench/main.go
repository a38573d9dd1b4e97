//go:build linux

// Command bench measures cnm against the least kernel work that gives the
// same result (the floor) and against the CNI reference bridge plugin, in
// the same run, inside a throwaway host namespace. It prints a Markdown
// report and writes an SVG plot of the scaling series.
//
//	sudo ./scripts/bench.sh    # installs the CNI plugins, builds, runs in unshare --net
//
// The phases (-phases) are setup, leave, scaling, memory, parallel and
// throughput, run by default, and workers (1 and 2 workers setting up, leaving
// and tearing down containers, and making sandboxes alone; see workers.go),
// run only when asked for:
//
//	sudo ./scripts/bench.sh -phases workers
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/osl"
)

type config struct {
	cniDir      string
	rounds      int
	batch       int
	scale       int
	parallel    int
	throughput  time.Duration
	outDir      string
	brNetfilter string
	phases      string
	tmp         string

	// The workers phase (workers.go).
	workers           string // worker counts, comma-separated
	workersContainers int
	workersRuns       int
	workersPause      time.Duration
	workersHostSocket bool
}

// ran reports whether the phase called name is among those asked for.
func (c config) ran(name string) bool { return slices.Contains(strings.Split(c.phases, ","), name) }

func main() {
	var cfg config
	flag.StringVar(&cfg.cniDir, "cni", "", "directory with the CNI bridge and host-local plugins; empty: leave CNI out")
	flag.IntVar(&cfg.rounds, "rounds", 30, "interleaved rounds of setup and teardown")
	flag.IntVar(&cfg.batch, "batch", 10, "containers per contender per round")
	flag.IntVar(&cfg.scale, "scale", 1000, "containers on one network in the scaling series")
	flag.IntVar(&cfg.parallel, "parallel", 200, "containers per parallel-setup run")
	flag.DurationVar(&cfg.throughput, "throughput", 3*time.Second, "length of one throughput run")
	flag.StringVar(&cfg.outDir, "out", "bench/out", "directory for report.md and scaling.svg")
	flag.StringVar(&cfg.brNetfilter, "br-netfilter", "", "set net.bridge.bridge-nf-call-ip{,6}tables in the throwaway host namespace to this (0 or 1); empty: the kernel's default")
	flag.StringVar(&cfg.tmp, "tmp", "", "directory for namespaces, run dirs and IPAM files (scripts/bench.sh gives a tmpfs, as /run is on most hosts); empty: the system's temp dir")
	flag.StringVar(&cfg.phases, "phases", "setup,leave,scaling,memory,parallel,throughput", "phases to run, comma-separated; also: workers")
	flag.StringVar(&cfg.workers, "workers", "1,2", "workers phase: worker counts, comma-separated")
	flag.IntVar(&cfg.workersContainers, "workers-containers", 200, "workers phase: containers per run")
	flag.IntVar(&cfg.workersRuns, "workers-runs", 5, "workers phase: rounds, each running every contender with each worker count once, in a random order")
	flag.DurationVar(&cfg.workersPause, "workers-pause", 200*time.Millisecond, "workers phase: pause after namespaces were dropped, while the kernel destroys them")
	flag.BoolVar(&cfg.workersHostSocket, "workers-host-socket", false, "workers phase: also tear the floor down with its link deletions on the host namespace's one netlink socket (a diagnostic)")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("bench makes network namespaces and links: run it as root (scripts/bench.sh)")
	}
	if err := run(context.Background(), cfg); err != nil {
		log.Fatal(err)
	}
}

// harness holds the contenders and everything measured.
type harness struct {
	cfg  config
	host *osl.Namespace
	ctrl *cnm.Controller
	dir  string
	cs   []contender
	next map[string]int // next container number per contender
	r    *report
	mu   sync.Mutex // guards next
}

func run(ctx context.Context, cfg config) error {
	dir, err := os.MkdirTemp(cfg.tmp, "cnm-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	host, err := osl.NewNamespace(ctx, filepath.Join(dir, "host"))
	if err != nil {
		return err
	}
	defer host.Delete()
	if cfg.brNetfilter != "" {
		for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"} {
			if err := host.SetSysctl(k, cfg.brNetfilter); err != nil {
				return err
			}
		}
	}
	ctrl, err := cnm.New(cnm.WithHostNamespace(host.Path()), cnm.WithRunDir(filepath.Join(dir, "run")), cnm.WithDataDir(filepath.Join(dir, "data")))
	if err != nil {
		return err
	}
	defer ctrl.Close()

	h := &harness{cfg: cfg, host: host, ctrl: ctrl, dir: dir, next: map[string]int{}, r: newReport(cfg, fsType(dir))}
	c, err := newCNM(ctx, ctrl, "bench", "br-cnm", netip.MustParsePrefix("10.200.0.0/16"))
	if err != nil {
		return err
	}
	f, err := newFloor(ctx, host, "br-floor", netip.MustParsePrefix("10.201.0.1/16"), dir)
	if err != nil {
		return err
	}
	h.cs = []contender{c, f}
	if cfg.cniDir != "" {
		cni, err := newCNI(host, cfg.cniDir, "br-cni", netip.MustParsePrefix("10.202.0.0/16"), dir)
		if err != nil {
			return err
		}
		h.cs = append(h.cs, cni)
	}
	defer func() {
		for _, c := range h.cs {
			if err := c.close(ctx); err != nil {
				log.Printf("close %s: %v", c.name(), err)
			}
		}
	}()

	for _, phase := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"setup", h.setupTeardown},
		{"leave", h.leave},
		{"scaling", h.scaling},
		{"memory", h.memory},
		{"parallel", h.parallelSetup},
		{"throughput", h.throughput},
		{"workers", h.workers},
	} {
		if !cfg.ran(phase.name) {
			continue
		}
		start := time.Now()
		log.Printf("phase: %s", phase.name)
		if err := phase.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", phase.name, err)
		}
		log.Printf("phase: %s done in %v", phase.name, time.Since(start).Round(time.Millisecond))
	}
	return h.r.write(cfg.outDir)
}

// number returns the next container number of contender c.
func (h *harness) number(c contender) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.next[c.name()]++
	return h.next[c.name()]
}

// teardownAll tears boxes down back to back and returns when the kernel has
// removed every host end: the batched teardown a runtime does when many
// containers stop.
func (h *harness) teardownAll(ctx context.Context, boxes []*box) (time.Duration, error) {
	ends := make([]int, 0, len(boxes))
	for _, b := range boxes {
		e, err := hostEnd(ctx, h.host, b.key)
		if err != nil {
			return 0, err
		}
		ends = append(ends, e)
	}
	start := time.Now()
	for _, b := range boxes {
		if err := b.teardown(ctx); err != nil {
			return 0, err
		}
	}
	if err := waitGone(ctx, h.host, ends); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// setupTeardown runs interleaved rounds: in each, every contender (in a
// random order) sets up a batch of containers, each timed, then tears the
// batch down, timed until the kernel removed the host ends.
func (h *harness) setupTeardown(ctx context.Context) error {
	for range h.cfg.rounds {
		order := append([]contender(nil), h.cs...)
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, c := range order {
			boxes := make([]*box, 0, h.cfg.batch)
			for range h.cfg.batch {
				start := time.Now()
				b, err := c.setup(ctx, h.number(c))
				if err != nil {
					return err
				}
				h.r.add(c.name(), "setup", time.Since(start))
				boxes = append(boxes, b)
			}
			d, err := h.teardownAll(ctx, boxes)
			if err != nil {
				return err
			}
			h.r.add(c.name(), "teardown", d/time.Duration(len(boxes)))
		}
	}
	return nil
}

// leave times detaching one interface from a living container: cnm's Leave
// against the floor's single link deletion.
func (h *harness) leave(ctx context.Context) error {
	for range h.cfg.rounds {
		for _, c := range h.cs {
			b, err := c.setup(ctx, h.number(c))
			if err != nil {
				return err
			}
			if b.leave != nil {
				start := time.Now()
				if err := b.leave(ctx); err != nil {
					return err
				}
				h.r.add(c.name(), "leave", time.Since(start))
			}
			if err := b.teardown(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// scaling grows one network per contender to cfg.scale containers, one
// container per contender per step in a random order, so that at every step
// the host holds as many links and namespaces for each of them; each setup
// is timed. Then each contender tears all of its containers down in one
// batch.
func (h *harness) scaling(ctx context.Context) error {
	boxes := map[string][]*box{}
	for k := range h.cfg.scale {
		order := append([]contender(nil), h.cs...)
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, c := range order {
			start := time.Now()
			b, err := c.setup(ctx, h.number(c))
			if err != nil {
				return fmt.Errorf("%s container %d: %w", c.name(), k+1, err)
			}
			h.r.scaling[c.name()] = append(h.r.scaling[c.name()], time.Since(start))
			boxes[c.name()] = append(boxes[c.name()], b)
		}
	}
	// In a random order: the first to go faces the most links.
	order := append([]contender(nil), h.cs...)
	rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for _, c := range order {
		d, err := h.teardownAll(ctx, boxes[c.name()])
		if err != nil {
			return err
		}
		h.r.add(c.name(), fmt.Sprintf("teardown of %d", h.cfg.scale), d/time.Duration(h.cfg.scale))
	}
	return nil
}

// memory sets up cfg.scale cnm containers alone and reads the Go heap and
// the process's RSS per live container.
func (h *harness) memory(ctx context.Context) error {
	c := h.cs[0]
	var before, after runtime.MemStats
	debug.FreeOSMemory() // a GC that also returns free memory to the OS, for a steady RSS
	runtime.ReadMemStats(&before)
	rssBefore := rss()
	boxes := make([]*box, 0, h.cfg.scale)
	for range h.cfg.scale {
		b, err := c.setup(ctx, h.number(c))
		if err != nil {
			return err
		}
		boxes = append(boxes, b)
	}
	debug.FreeOSMemory()
	runtime.ReadMemStats(&after)
	h.r.heapPerContainer = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(len(boxes))
	h.r.rssPerContainer = float64(rss()-rssBefore) / float64(len(boxes))
	_, err := h.teardownAll(ctx, boxes)
	return err
}

// parallelSetup sets up cfg.parallel containers with 1, 2 and 8 workers on
// cnm and on the floor, three times each in a random order, and reports the
// wall time of each run.
func (h *harness) parallelSetup(ctx context.Context) error {
	type run struct {
		c       contender
		workers int
	}
	var runs []run
	for range 3 {
		for _, c := range h.cs[:2] { // cnm and floor
			for _, w := range []int{1, 2, 8} {
				runs = append(runs, run{c, w})
			}
		}
	}
	rand.Shuffle(len(runs), func(i, j int) { runs[i], runs[j] = runs[j], runs[i] })
	for _, r := range runs {
		total, boxes, errs := h.setupWith(ctx, r.c, r.workers)
		h.r.parallel = append(h.r.parallel, parallelRun{r.c.name(), r.workers, total, errs})
		if _, err := h.teardownAll(ctx, boxes); err != nil {
			return err
		}
	}
	return nil
}

// setupWith sets up cfg.parallel containers of c with the given number of
// workers and returns the wall time, the containers and the error count.
func (h *harness) setupWith(ctx context.Context, c contender, workers int) (time.Duration, []*box, int) {
	var (
		mu    sync.Mutex
		boxes []*box
		errs  int
		wg    sync.WaitGroup
	)
	jobs := make(chan int)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				b, err := c.setup(ctx, i)
				mu.Lock()
				if err != nil {
					errs++
					log.Printf("parallel %s: %v", c.name(), err)
				} else {
					boxes = append(boxes, b)
				}
				mu.Unlock()
			}
		}()
	}
	for range h.cfg.parallel {
		jobs <- h.number(c)
	}
	close(jobs)
	wg.Wait()
	return time.Since(start), boxes, errs
}

// throughput streams TCP between two cnm sandboxes over the bridge, between
// two floor containers over the floor's bridge, and between the two ends of
// a bare veth pair, alternately, three times each; once with the host
// namespace's br_netfilter switches as they are and once with them off.
func (h *harness) throughput(ctx context.Context) error {
	var pairs [][2]*box
	for _, c := range h.cs[:2] { // cnm and floor
		a, err := c.setup(ctx, h.number(c))
		if err != nil {
			return err
		}
		b, err := c.setup(ctx, h.number(c))
		if err != nil {
			return err
		}
		defer func() { _, _ = h.teardownAll(ctx, []*box{a, b}) }()
		pairs = append(pairs, [2]*box{a, b})
	}
	va, vb, cleanup, err := vethPair(ctx, h.dir)
	if err != nil {
		return err
	}
	defer cleanup()
	keys := []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"}
	orig, err := h.host.Sysctl(keys[0])
	if err != nil {
		return err
	}
	for _, setting := range []string{orig, "0"} {
		for _, k := range keys {
			if err := h.host.SetSysctl(k, setting); err != nil {
				return err
			}
		}
		for range 3 {
			for i, pair := range pairs {
				a, b := pair[0], pair[1]
				rate, err := measureTCP(ctx, b.key, a.key, netip.AddrPortFrom(b.addr.Addr(), 5201), h.cfg.throughput)
				if err != nil {
					return fmt.Errorf("%s bridge: %w", h.cs[i].name(), err)
				}
				h.r.addRate(setting, h.cs[i].name()+" bridge", rate)
			}
			rate, err := measureTCP(ctx, vb.Path(), va.Path(), netip.MustParseAddrPort("10.210.0.2:5201"), h.cfg.throughput)
			if err != nil {
				return fmt.Errorf("veth: %w", err)
			}
			h.r.addRate(setting, "bare veth", rate)
		}
	}
	for _, k := range keys {
		if err := h.host.SetSysctl(k, orig); err != nil {
			return err
		}
	}
	h.r.brNetfilterDefault = orig
	return nil
}

// rss returns the process's resident set size in bytes.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			var kb int64
			fmt.Sscan(f[1], &kb)
			return kb * 1024
		}
	}
	return 0
}
