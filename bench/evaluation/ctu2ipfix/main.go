// Command ctu2ipfix converts a CTU-13 binetflow log into a pcap of the IPFIX
// export one router would have sent for it, for `wormsign replay`:
//
//	go run ./bench/evaluation/ctu2ipfix IN.binetflow[.gz] OUT.pcap
//
// Flows are exported when they end, from 192.0.2.1:4739 to
// 192.0.2.100:4739, observation domain 1. Rows that are not IP flows, and
// IPv6 flows, are left out and counted.
package main

import (
	"bufio"
	"fmt"
	"os"

	"github.com/wormsign/wormsign/bench/evaluation"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: ctu2ipfix IN.binetflow[.gz] OUT.pcap")
		os.Exit(2)
	}
	if err := convert(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "ctu2ipfix:", err)
		os.Exit(1)
	}
}

func convert(in, out string) error {
	recs, skipped, err := evaluation.ReadBinetflow(in)
	if err != nil {
		return err
	}
	evaluation.ExportOrder(recs)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	st, err := evaluation.WriteIPFIXCapture(w, recs)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cannot write %s: %w", out, err)
	}
	fmt.Fprintf(os.Stderr, "%s: %d rows read, %d not IP flows skipped, %d IPv6 flows skipped; %s: %d IPFIX datagrams, %d IPv4 records\n",
		in, len(recs)+skipped, skipped, st.SkippedIPv6, out, st.Datagrams, st.Records)
	return nil
}
