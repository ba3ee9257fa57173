package main

import (
	"context"
	"io"
	"strings"
	"time"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/containment"
)

// blocklist prints the block list in format, read from where the running
// instances keep it: the containment topic on Kafka, else the state file.
func blocklist(ctx context.Context, cfg Configuration, stdout io.Writer, format string) error {
	if !containment.ValidFormat(format) {
		return usageError{"--format: " + format + ", want one of " + strings.Join(containment.Formats, ", ")}
	}
	var b bus.Bus
	if len(cfg.Kafka.Brokers) > 0 {
		k, err := bus.NewKafka(ctx, cfg.Kafka)
		if err != nil {
			return err
		}
		defer k.Close()
		b = k
	}
	p, err := containment.ReadState(ctx, cfg.Containment, b)
	if err != nil {
		return err
	}
	return containment.MakeList(p.Entries(), time.Now(), cfg.Containment.DryRun).Write(stdout, format, cfg.Containment)
}
