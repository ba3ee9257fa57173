package sink

import (
	"context"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
)

// Fault tests stop and restart their services. The shared ones on 9092
// and 9000 serve every other test, so these start private instances
// (testenv.StartPrivateKafka and the ClickHouse ones).

// forEachPrivateClickHouse runs test once per server of
// testenv.ClickHouseServers, each started privately for the test to kill
// or freeze, as subtests named like testenv.ForEachClickHouse's.
func forEachPrivateClickHouse(t *testing.T, test func(t *testing.T, server *testenv.Service, addr string)) {
	t.Helper()
	start := map[string]func(testing.TB) (*testenv.Service, string){
		"18.16": testenv.StartPrivateClickHouse18, "modern": testenv.StartPrivateClickHouseModern,
	}
	for _, srv := range testenv.ClickHouseServers() {
		t.Run(srv.Name, func(t *testing.T) {
			server, addr := start[srv.Name](t)
			test(t, server, addr)
		})
	}
}

// waitContext is a context bounded for a fault test.
func waitContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
