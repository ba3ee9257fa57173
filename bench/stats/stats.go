// Package stats summarises a benchmark's repeated passes: on this shared
// machine one pass of a figure can move by 15 % from run to run, so the
// benchmarks report the median of several and print the range beside it.
package stats

import (
	"fmt"
	"slices"
)

// Median is the middle of values (the mean of the two middle ones of an
// even count); 0 for none.
func Median(values []float64) float64 {
	if len(values) == 0 {
		return 0
	}
	sorted := slices.Sorted(slices.Values(values))
	if n := len(sorted); n%2 == 0 {
		return (sorted[n/2-1] + sorted[n/2]) / 2
	}
	return sorted[len(sorted)/2]
}

// Spread prints the median of values and their range with format, e.g.
// "1017559 (893969–1067276)" for "%.0f", and a single value alone.
func Spread(format string, values []float64) string {
	switch len(values) {
	case 0:
		return "none"
	case 1:
		return fmt.Sprintf(format, values[0])
	}
	return fmt.Sprintf(format+" ("+format+"–"+format+")", Median(values), slices.Min(values), slices.Max(values))
}
