// Command wormsign finds spam zombies and scanning worms among an ISP's
// subscribers from NetFlow, IPFIX and sFlow records. See the README.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: wormsign <command> [--config FILE] [args]

commands:
  run        all stages in one process (embedded default without Kafka/ClickHouse)
  collector  receive NetFlow/IPFIX/sFlow and publish flows to Kafka
  detector   consume flows, publish alerts to Kafka
  sink       write flows and alerts from Kafka to ClickHouse
  console    serve the NOC console and HTTP API from ClickHouse and the alerts topic
  identity   receive RADIUS accounting and DHCP lease events, publish who held which address
  replay     replay pcap/pcapng captures of export datagrams (--flows: print flows)
  blocklist  print the containment block list (--format json|plain|nftables|ipset|exabgp|exabgp-conf)
  migrate    create or upgrade the ClickHouse schema
  version    print the version
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "wormsign:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg + "\n" + usage }

func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"no command"}
	}
	cmd, args := args[0], args[1:]
	if cmd == "version" {
		fmt.Fprintln(stdout, "wormsign", version)
		return nil
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	configPath := fs.String("config", "", "YAML configuration file")
	printFlows := false
	if cmd == "replay" {
		fs.BoolVar(&printFlows, "flows", false, "print each decoded flow as a JSON line instead of detecting")
	}
	format := "plain"
	if cmd == "blocklist" {
		fs.StringVar(&format, "format", "plain", "json, plain, nftables, ipset, exabgp or exabgp-conf")
	}
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	cfg, err := loadConfiguration(*configPath)
	if err != nil {
		return err
	}
	logger := newLogger(cfg.LogLevel)
	switch cmd {
	case "run":
		return runStages(ctx, cfg, logger, stdout, allStages)
	case "collector":
		return runStages(ctx, cfg, logger, stdout, stages{collector: true})
	case "detector":
		return runStages(ctx, cfg, logger, stdout, stages{detector: true})
	case "sink":
		return runStages(ctx, cfg, logger, stdout, stages{sink: true})
	case "console":
		return runStages(ctx, cfg, logger, stdout, stages{console: true})
	case "identity":
		return runStages(ctx, cfg, logger, stdout, stages{identity: true})
	case "migrate":
		return migrate(ctx, cfg, logger)
	case "blocklist":
		return blocklist(ctx, cfg, stdout, format)
	case "replay":
		if fs.NArg() == 0 {
			return usageError{"replay needs at least one capture file"}
		}
		return replay(ctx, cfg, logger, stdout, fs.Args(), printFlows)
	}
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}
