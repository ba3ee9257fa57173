// Package workload builds the input the benchmarks feed the stages: what
// the collector would have written to Kafka.
package workload

import (
	"net/netip"
	"os"
	"strconv"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/flow"
)

// FlowRecords encodes flows (in the order received) as the collector
// writes them to a one-partition topic: records of the flows-v2 format,
// each holding perRecord consecutive flows grouped by subscriber (the
// source address) in order of each one's first flow. Benchmarks feed the
// detector and the sink the collector's unit of work this way.
func FlowRecords(flows []flow.Flow, perRecord int) []bus.Message {
	var msgs []bus.Message
	for start := 0; start < len(flows); start += perRecord {
		chunk := flows[start:min(start+perRecord, len(flows))]
		var order []netip.Addr
		groups := map[netip.Addr][]flow.Flow{}
		for _, f := range chunk {
			if _, ok := groups[f.SrcAddr]; !ok {
				order = append(order, f.SrcAddr)
			}
			groups[f.SrcAddr] = append(groups[f.SrcAddr], f)
		}
		var rec []byte
		for _, sub := range order {
			rec = flow.AppendSubscriberFlows(rec, sub, groups[sub])
		}
		msgs = append(msgs, bus.Message{Value: rec})
	}
	return msgs
}

// FlowsPerRecord is how many flows one flows-v2 record carries in the
// benchmarks: the collector writes a record per partition per batch, and a
// batch is what arrived within collector.linger (50 ms). At 250k flows/s
// over the default 8 partitions that is about 1,560 flows per record;
// faster traffic fills records up to their 256 KiB (some 5,000 flows).
// WORMSIGN_BENCH_FLOWS_PER_RECORD changes it.
func FlowsPerRecord() int {
	if v, err := strconv.Atoi(os.Getenv("WORMSIGN_BENCH_FLOWS_PER_RECORD")); err == nil && v >= 1 {
		return v
	}
	return 1560
}
