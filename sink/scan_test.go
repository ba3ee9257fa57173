package sink

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"reflect"
	"time"
)

// newScanTarget and deref turn a query's columns into text for comparing
// whole result rows in tests.
func newScanTarget(t reflect.Type) any { return reflect.New(t).Interface() }

func deref(v any) string {
	x := reflect.ValueOf(v).Elem().Interface()
	if t, ok := x.(time.Time); ok {
		t = t.UTC()
		// A Date scans as midnight; the tests' DateTimes are never
		// midnight exactly when a Date is in the same query.
		if t.Hour() == 0 && t.Minute() == 0 && t.Second() == 0 {
			return t.Format(time.DateOnly)
		}
		return t.Format(time.DateTime)
	}
	return fmt.Sprint(x)
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		panic(err)
	}
	if out.Counter != nil {
		return out.Counter.GetValue()
	}
	return out.Gauge.GetValue()
}
