// Package workload builds the input the benchmarks feed the stages: what
// the collector would have written to Kafka.
package workload

import (
	"net/netip"

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
