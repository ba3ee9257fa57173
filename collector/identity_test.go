package collector

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/collector/decode"
	"github.com/wormsign/wormsign/flow"
	"github.com/wormsign/wormsign/identity"
	"github.com/wormsign/wormsign/internal/nfbuild"
	"github.com/wormsign/wormsign/network"
)

// Flows resolve to the customer who held their subscriber address at
// their time and are keyed by it; behind a CGNAT the NAT's own port-block
// records (IPFIX, RFC 8158) resolve an outside address and port to the
// inside address, and on to its customer.
func TestFlowsKeyedByCustomer(t *testing.T) {
	const secs = 1700000000
	start := int64(secs-3600) * 1000
	store := identity.NewStore(identity.DefaultConfiguration(), nil, nil)
	ctx := context.Background()
	hold := func(customer, addr string) identity.Binding {
		return identity.Binding{Customer: customer, Prefix: netip.MustParsePrefix(addr + "/32"), Source: identity.SourceRADIUS,
			Session: customer, StartMs: start, UpdatedMs: start}
	}
	if _, err := store.Record(ctx, hold("A", "100.64.1.2"), hold("B", "203.0.113.5")); err != nil {
		t.Fatal(err)
	}
	nat := identity.NewCGNAT(identity.DefaultConfiguration().CGNAT, store, nil, nil)
	nat.Start()

	mem := bus.NewMemory(1 << 16)
	consumer, err := mem.Consumer("flows", "test")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfiguration()
	cfg.NetFlowListen, cfg.SFlowListen = nil, nil
	subs := network.NewSubscribers([]network.Prefix{network.MustParsePrefix("203.0.113.0/24"), network.MustParsePrefix("198.51.100.0/24")})
	c, err := New(cfg, Dependencies{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry(),
		Bus: mem, Topic: "flows", Subscribers: subs, Identity: store.Table(), NAT: nat})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	// The CGNAT allocates ports 39936-40959 of 198.51.100.7 to 100.64.1.2.
	block := nfbuild.Message{Version: 10, Domain: 1, UnixSecs: secs, Sets: [][]byte{
		nfbuild.Set(2, nfbuild.Template(300, 8, 4, 225, 4, 361, 2, 362, 2, 230, 1, 323, 8)),
		nfbuild.Set(300, nfbuild.Cat(nfbuild.IP("100.64.1.2"), nfbuild.IP("198.51.100.7"), nfbuild.U16(39936), nfbuild.U16(40959),
			[]byte{decode.PortBlockAllocation}, nfbuild.U64(uint64(secs-60)*1000))),
	}}.Bytes()
	c.Ingest(decode.FamilyNetFlow, netip.MustParseAddrPort("192.0.2.30:2055"), block, secs*1000, true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if res, _ := store.Table().Resolve(netip.MustParseAddr("198.51.100.7"), 40000, (secs-30)*1000); res.Customer == "A" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the port block was not recorded")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Flows of the outside address (source port 40000), of B, and of an
	// address nobody is known to hold.
	data := nfbuild.Message{Version: 9, Domain: 7, UnixSecs: secs, UptimeMs: 100000, Sets: [][]byte{
		nfbuild.Set(0, nfbuild.Template256),
		nfbuild.Set(256, nfbuild.Record256("198.51.100.7", "198.18.0.1", 25, 99000, 99500),
			nfbuild.Record256("203.0.113.5", "198.18.0.1", 25, 99000, 99500),
			nfbuild.Record256("203.0.113.6", "198.18.0.1", 25, 99000, 99500)),
	}}.Bytes()
	if n := c.Ingest(decode.FamilyNetFlow, netip.MustParseAddrPort("192.0.2.1:5000"), data, secs*1000, true); n != 3 {
		t.Fatalf("%d flows, want 3", n)
	}
	c.Stop()
	nat.Stop()
	mem.CloseTopic("flows")
	got := map[netip.Addr]flow.Flow{}
	for {
		m, err := consumer.Fetch(ctx)
		if err != nil {
			break
		}
		flows, keys, err := flow.DecodeBatchSubscribers(nil, nil, m.Value)
		if err != nil {
			t.Fatalf("record at %d: %v", m.Offset, err)
		}
		for i, key := range keys {
			if _, dup := got[key]; dup {
				t.Errorf("a second flow keyed %s", key)
			}
			got[key] = flows[i]
		}
	}
	if f, ok := got[identity.Key("A")]; !ok || f.Customer != "A" || f.Inside.String() != "100.64.1.2" || f.SrcAddr.String() != "198.51.100.7" {
		t.Errorf("outside flow: %+v (keyed by A: %v), want customer A behind 100.64.1.2", f, ok)
	}
	if f, ok := got[identity.Key("B")]; !ok || f.Customer != "B" || f.Inside.IsValid() {
		t.Errorf("B's flow: %+v (keyed by B: %v), want customer B", f, ok)
	}
	if f, ok := got[netip.MustParseAddr("203.0.113.6")]; !ok || f.Customer != "" {
		t.Errorf("unknown subscriber's flow: %+v (keyed by its address: %v), want no customer", f, ok)
	}
}
