package console

import (
	"bytes"
	"fmt"
	"strings"
	"time"
)

// chartMetrics are the series a subscriber chart can show, with their
// titles.
var chartMetrics = map[string]string{
	"flows":             "flows per minute",
	"smtp_flows":        "TCP/25 flows per minute",
	"destinations":      "distinct destinations per minute",
	"smtp_destinations": "distinct TCP/25 destinations per minute",
	"bytes":             "bytes per minute",
	"packets":           "packets per minute",
}

func pointValue(p *Point, metric string) uint64 {
	switch metric {
	case "smtp_flows":
		return p.SMTPFlows
	case "destinations":
		return p.Destinations
	case "smtp_destinations":
		return p.SMTPDestinations
	case "bytes":
		return p.Bytes
	case "packets":
		return p.Packets
	}
	return p.Flows
}

// drawChart renders one series per minute over [from, to) as an SVG area
// chart with a UTC time axis; minutes without traffic are zero.
func drawChart(series []Point, metric string, from, to time.Time) []byte {
	const w, h, left, right, top, bottom = 960.0, 200.0, 56.0, 12.0, 28.0, 24.0
	minutes := int(to.Sub(from) / time.Minute)
	values := make([]uint64, minutes)
	var peak uint64
	for i := range series {
		m := int(series[i].Minute.Sub(from) / time.Minute)
		if m < 0 || m >= minutes {
			continue
		}
		values[m] = pointValue(&series[i], metric)
		peak = max(peak, values[m])
	}
	top1 := niceCeil(peak)
	pw, ph := w-left-right, h-top-bottom
	x := func(i int) float64 { return left + pw*float64(i)/float64(minutes) }
	y := func(v uint64) float64 { return top + ph - ph*float64(v)/float64(top1) }

	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" role="img" aria-label="%s">`, w, h, w, h, chartMetrics[metric])
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#11161d"/>`)
	fmt.Fprintf(&b, `<text x="%.0f" y="18" fill="#e6edf3" font-family="sans-serif" font-size="14">%s (UTC), peak %s</text>`, left, chartMetrics[metric], chartNumber(peak, metric))
	// Horizontal grid: 0, half, top.
	for _, v := range []uint64{0, top1 / 2, top1} {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#2d3640"/>`, left, w-right, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#9aa7b4" font-family="sans-serif" font-size="11" text-anchor="end">%s</text>`, left-6, y(v)+4, chartNumber(v, metric))
	}
	// Time axis: a tick every few hours on the hour.
	step := time.Hour
	if span := to.Sub(from); span > 6*time.Hour {
		step = 4 * time.Hour
	}
	for t := from.Truncate(step).Add(step); t.Before(to); t = t.Add(step) {
		i := int(t.Sub(from) / time.Minute)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#2d3640"/>`, x(i), x(i), top, top+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#9aa7b4" font-family="sans-serif" font-size="11" text-anchor="middle">%s</text>`, x(i), h-6, t.UTC().Format("15:04"))
	}
	// The area, one step per minute.
	fmt.Fprintf(&b, `<path fill="#f0883e" fill-opacity="0.35" stroke="#f0883e" stroke-width="1.2" d="M%.1f %.1f`, x(0), y(0))
	for i, v := range values {
		fmt.Fprintf(&b, ` L%.1f %.1f L%.1f %.1f`, x(i), y(v), x(i+1), y(v))
	}
	fmt.Fprintf(&b, ` L%.1f %.1f Z"/>`, x(minutes), y(0))
	b.WriteString(`</svg>`)
	return b.Bytes()
}

// chartNumber writes a value short enough for the axis: bytes in kB, MB,
// GB (powers of 1000), other counts beyond 9,999 as 12.3k or 4.5M.
func chartNumber(v uint64, metric string) string {
	units := []string{"", "k", "M", "G", "T", "P"}
	suffix, limit := "", uint64(10000)
	if metric == "bytes" {
		units = []string{" B", " kB", " MB", " GB", " TB", " PB"}
		suffix, limit = " B", 1000
	}
	if v < limit {
		return fmt.Sprintf("%d%s", v, suffix)
	}
	f, i := float64(v), 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	s := fmt.Sprintf("%.1f", f)
	if f >= 100 || strings.HasSuffix(s, ".0") {
		s = fmt.Sprintf("%.0f", f)
	}
	return s + units[i]
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (at least 1).
func niceCeil(v uint64) uint64 {
	if v <= 1 {
		return 1
	}
	for p := uint64(1); ; p *= 10 {
		for _, m := range []uint64{1, 2, 5} {
			if m*p >= v {
				return m * p
			}
		}
	}
}
