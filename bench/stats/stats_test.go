package stats

import "testing"

func TestMedianAndSpread(t *testing.T) {
	if got := Median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("Median(3, 1, 2) = %v, want 2", got)
	}
	if got := Median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("Median(4, 1, 3, 2) = %v, want 2.5 (the mean of the middle two)", got)
	}
	if got := Median(nil); got != 0 {
		t.Errorf("Median() = %v, want 0", got)
	}
	if got := Spread("%.1f", []float64{0.9, 1.2, 1.0}); got != "1.0 (0.9–1.2)" {
		t.Errorf("Spread = %q", got)
	}
	if got := Spread("%.1f", []float64{0.9}); got != "0.9" {
		t.Errorf("Spread of one value = %q, want it alone", got)
	}
}
