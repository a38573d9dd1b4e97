//go:build linux

package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

func formatFloat(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }

// series is one line of a plot.
type series struct {
	name  string
	color string
	ys    []float64 // y for x = 1, 2, ...
}

// svgPlot draws line series over x = 1..n as an SVG document: the scaling
// series of the report. It needs no plotting library.
func svgPlot(title, xLabel, yLabel string, ss []series) string {
	const (
		w, h                     = 760, 420
		left, right, top, bottom = 70, 150, 40, 50
	)
	n, ymax := 0, 0.0
	for _, s := range ss {
		n = max(n, len(s.ys))
		for _, y := range s.ys {
			ymax = math.Max(ymax, y)
		}
	}
	if n < 2 || ymax == 0 {
		return ""
	}
	ymax = niceCeil(ymax)
	px := func(x int) float64 { return left + float64(x-1)/float64(n-1)*float64(w-left-right) }
	py := func(y float64) float64 { return float64(h-bottom) - y/ymax*float64(h-top-bottom) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15">%s</text>`+"\n", left, title)
	// Axes, grid and ticks.
	for i := 0; i <= 5; i++ {
		y := ymax * float64(i) / 5
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, w-right, py(y), py(y))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, py(y)+4, formatFloat(y, 1))
	}
	for _, x := range xTicks(n) {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", px(x), h-bottom+18, x)
	}
	fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="black"/>`+"\n", left, w-right, h-bottom, h-bottom)
	fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="black"/>`+"\n", left, left, top, h-bottom)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", (left+w-right)/2, h-12, xLabel)
	fmt.Fprintf(&b, `<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">%s</text>`+"\n", (top+h-bottom)/2, (top+h-bottom)/2, yLabel)
	// Lines and legend.
	for i, s := range ss {
		var pts []string
		for x, y := range s.ys {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(x+1), py(y)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", s.color, strings.Join(pts, " "))
		ly := top + 10 + i*20
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", w-right+12, w-right+36, ly, ly, s.color)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", w-right+42, ly+4, s.name)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func xTicks(n int) []int {
	ticks := []int{1}
	step := int(niceCeil(float64(n) / 5))
	for x := step; x <= n; x += step {
		ticks = append(ticks, x)
	}
	return ticks
}

// rollingMedian smooths a series with the median of a window of 2w+1.
func rollingMedian(s samples, w int) []float64 {
	out := make([]float64, len(s))
	for i := range s {
		out[i] = float64(s.window(i+1, w).median()) / 1e6
	}
	return out
}
