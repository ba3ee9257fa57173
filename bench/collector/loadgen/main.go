// Command loadgen sends generated NetFlow v9, IPFIX and sFlow v5 export
// datagrams to a collector at a set rate, e.g.
//
//	go run ./bench/collector/loadgen -rate 500000 -flows 5000000
//
// sends five million flows at 500k flows/s to 127.0.0.1:2055 (NetFlow v9
// and IPFIX) and 127.0.0.1:6343 (sFlow).
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"time"

	collectorbench "github.com/wormsign/wormsign/bench/collector"
)

func main() {
	rate := flag.Int("rate", 500_000, "flows per second (0: as fast as possible)")
	flows := flag.Int("flows", 1_000_000, "flows to send")
	exporters := flag.Int("exporters", 4, "exporters (source ports) per protocol")
	subscribers := flag.Int("subscribers", 50_000, "distinct subscriber source addresses")
	netflow := flag.String("netflow", "127.0.0.1:2055", "NetFlow v9/IPFIX destination")
	sflow := flag.String("sflow", "127.0.0.1:6343", "sFlow destination")
	anywhere := flag.Bool("anywhere", false, "allow destinations other than loopback")
	flag.Parse()
	if err := run(*rate, *flows, *exporters, *subscribers, *netflow, *sflow, *anywhere); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(rate, flows, exporters, subscribers int, netflow, sflow string, anywhere bool) error {
	if exporters < 1 || subscribers < 1 {
		return fmt.Errorf("-exporters and -subscribers must be >= 1")
	}
	for _, dst := range []string{netflow, sflow} {
		ap, err := netip.ParseAddrPort(dst)
		if err != nil {
			return fmt.Errorf("destination %q: %w", dst, err)
		}
		if !ap.Addr().IsLoopback() && !anywhere {
			return fmt.Errorf("destination %s is not loopback (use -anywhere to mean it)", dst)
		}
	}
	load := collectorbench.Generate(flows, exporters, subscribers, time.Now().UnixMilli())
	s, err := collectorbench.NewSender(exporters, netflow, sflow)
	if err != nil {
		return err
	}
	defer s.Close()
	sent, took := s.Send(load, rate)
	fmt.Printf("sent %d flows in %d datagrams in %s (%.0f flows/s)\n",
		sent, len(load.Datagrams), took.Round(time.Millisecond), float64(sent)/took.Seconds())
	return nil
}
