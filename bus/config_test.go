package bus

import (
	"strings"
	"testing"

	"github.com/wormsign/wormsign/internal/config"
)

// kafka.min_insync_replicas: its default follows the replication factor,
// a value set wins, and one the topic could never meet is refused.
func TestMinInsyncReplicas(t *testing.T) {
	cases := []struct {
		name    string
		env     []string
		want    int
		wantErr string
	}{
		{name: "default, one replica", want: 1},
		{name: "default, two replicas", env: []string{"WORMSIGN_REPLICATION_FACTOR=2"}, want: 1},
		{name: "default, three replicas", env: []string{"WORMSIGN_REPLICATION_FACTOR=3"}, want: 2},
		{name: "default, five replicas", env: []string{"WORMSIGN_REPLICATION_FACTOR=5"}, want: 2},
		{name: "set", env: []string{"WORMSIGN_REPLICATION_FACTOR=5", "WORMSIGN_MIN_INSYNC_REPLICAS=3"}, want: 3},
		{name: "set to all", env: []string{"WORMSIGN_REPLICATION_FACTOR=3", "WORMSIGN_MIN_INSYNC_REPLICAS=3"}, want: 3},
		{name: "more than the replicas", env: []string{"WORMSIGN_REPLICATION_FACTOR=3", "WORMSIGN_MIN_INSYNC_REPLICAS=4"},
			wantErr: "kafka.min_insync_replicas: 4, want 1 to kafka.replication_factor (3)"},
		{name: "negative", env: []string{"WORMSIGN_MIN_INSYNC_REPLICAS=-1"}, wantErr: "kafka.min_insync_replicas: -1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The kafka section alone: its keys without the kafka_ prefix.
			c := DefaultConfiguration()
			if err := config.Load(&c, "", tc.env); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Validate() = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.MinInsync(); got != tc.want {
				t.Errorf("MinInsync() = %d, want %d", got, tc.want)
			}
		})
	}
}
