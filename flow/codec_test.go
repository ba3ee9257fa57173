package flow

import (
	"encoding/hex"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sampleFlows() []Flow {
	return []Flow{
		{
			TimeReceivedMs: 1700000001000, StartMs: 1700000000000, EndMs: 1700000000500,
			Exporter: netip.MustParseAddr("127.0.0.1"), ObservationDomain: 7, SamplingRate: 100,
			SrcAddr: netip.MustParseAddr("203.0.113.10"), DstAddr: netip.MustParseAddr("198.18.0.25"),
			SrcPort: 40000, DstPort: 25, Proto: ProtoTCP, TCPFlags: TCPSyn, Bytes: 124, Packets: 2,
			InIf: 3, OutIf: 4, Type: TypeNetFlowV9, Customer: "cust-7", Inside: netip.MustParseAddr("100.64.0.7"),
		},
		{
			EndMs: 1, SrcAddr: netip.MustParseAddr("2001:db8::1"), DstAddr: netip.MustParseAddr("2001:db8::2"),
			Proto: 17, Type: TypeIPFIX,
		},
		{}, // an all-zero flow encodes to an empty message and survives the trip
	}
}

func TestBatchRoundTrip(t *testing.T) {
	in := sampleFlows()
	out, err := DecodeBatch(nil, AppendBatch(nil, in))
	if err != nil {
		t.Fatalf("DecodeBatch: %v", err)
	}
	if diff := cmp.Diff(in, out, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

// TestWireBytes pins the encoding to schemas/flow.proto so that a change to
// the hand-written encoder cannot silently break other readers of the topic.
func TestWireBytes(t *testing.T) {
	f := []Flow{{EndMs: 300, SrcAddr: netip.MustParseAddr("10.0.0.1"), DstPort: 25, Proto: 6, Type: TypeNetFlowV9}}
	// 0a len | 18 ac02 (end_ms=300) | 3a 04 0a000001 (src_addr) | 50 19 (dst_port=25) | 58 06 (proto) | 88 01 03 (type=3)
	want := "0a10" + "18ac02" + "3a040a000001" + "5019" + "5806" + "880103"
	if got := hex.EncodeToString(AppendBatch(nil, f)); got != want {
		t.Errorf("wire bytes = %s, want %s", got, want)
	}
}

// TestWireBytesV2 pins a v2 record: one subscriber's group, its key first.
func TestWireBytesV2(t *testing.T) {
	f := []Flow{{EndMs: 300, SrcAddr: netip.MustParseAddr("10.0.0.1"), DstPort: 25, Proto: 6, Type: TypeNetFlowV9}}
	// 12 len (FlowBatch.subscribers) | 12 04 0a000001 (subscriber) | 0a 10 ... (the flow, as in v1)
	want := "1218" + "12040a000001" + "0a10" + "18ac02" + "3a040a000001" + "5019" + "5806" + "880103"
	if got := hex.EncodeToString(AppendSubscriberFlows(nil, netip.MustParseAddr("10.0.0.1"), f)); got != want {
		t.Errorf("wire bytes = %s, want %s", got, want)
	}
	if n := GroupHeaderSize(netip.MustParseAddr("10.0.0.1"), 18); n != 8 {
		t.Errorf("GroupHeaderSize = %d, want 8", n)
	}
}

// TestSubscriberGroups decodes a v2 record of three subscribers, one an
// IPv6 prefix and one a customer key, behind a v1 element: the flows come
// out in record order, each with its subscriber.
func TestSubscriberGroups(t *testing.T) {
	flows := sampleFlows()
	a, b, c := netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("2001:db8::"), netip.MustParseAddr("100::1234")
	rec := AppendBatch(nil, flows[2:3]) // a v1 element: no subscriber of its own
	rec = AppendSubscriberFlows(rec, a, flows[0:1])
	rec = AppendSubscriberFlows(rec, b, flows[1:2])
	rec = AppendSubscriberFlows(rec, c, flows)
	rec = AppendSubscriberFlows(rec, a, nil) // an empty group is allowed
	got, subs, err := DecodeBatchSubscribers(nil, nil, rec)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(append(flows[2:3:3], flows[0]), flows[1]), flows...)
	if !slices.Equal(got, want) {
		t.Errorf("flows = %+v, want %+v", got, want)
	}
	wantSubs := []netip.Addr{{}, a, b, c, c, c}
	if !slices.Equal(subs, wantSubs) {
		t.Errorf("subscribers = %v, want %v", subs, wantSubs)
	}
	if plain, err := DecodeBatch(nil, rec); err != nil || !slices.Equal(plain, want) {
		t.Errorf("DecodeBatch = %+v, %v; want the same flows", plain, err)
	}
}

func TestDecodeMalformed(t *testing.T) {
	for name, in := range map[string][]byte{
		"truncated tag":     {0x0a},
		"length past end":   {0x0a, 0x05, 0x18},
		"bad address":       {0x0a, 0x04, 0x3a, 0x02, 0x01, 0x02},
		"truncated varint":  {0x0a, 0x02, 0x18, 0xff},
		"group past end":    {0x12, 0x05, 0x12},
		"bad subscriber":    {0x12, 0x03, 0x12, 0x01, 0x01},
		"bad flow in group": {0x12, 0x06, 0x0a, 0x04, 0x3a, 0x02, 0x01, 0x02},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeBatch(nil, in); !errors.Is(err, ErrMalformed) {
				t.Errorf("DecodeBatch(%x) error = %v, want ErrMalformed", in, err)
			}
		})
	}
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add(AppendBatch(nil, sampleFlows()))
	f.Add(AppendSubscriberFlows(nil, netip.MustParseAddr("203.0.113.10"), sampleFlows()))
	f.Fuzz(func(t *testing.T, b []byte) {
		flows, err := DecodeBatch(nil, b)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode and decode to the same flows.
		again, err := DecodeBatch(nil, AppendBatch(nil, flows))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if diff := cmp.Diff(flows, again, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Fatalf("re-encode changed flows:\n%s", diff)
		}
		withSubs, subs, err := DecodeBatchSubscribers(nil, nil, b)
		if err != nil || len(subs) != len(withSubs) || !slices.Equal(withSubs, flows) {
			t.Fatalf("DecodeBatchSubscribers: %d flows, %d subscribers, %v; DecodeBatch gave %d", len(withSubs), len(subs), err, len(flows))
		}
	})
}

func TestAppendBatchFlow(t *testing.T) {
	// The last flow's element is longer than 127 bytes: its length takes
	// two bytes, and AppendBatchFlow moves it up by one.
	big := Flow{
		TimeReceivedMs: 1 << 62, StartMs: 1 << 62, EndMs: 1 << 62,
		Exporter: netip.MustParseAddr("2001:db8::1"), ObservationDomain: 1 << 31, SamplingRate: 1 << 31,
		SrcAddr: netip.MustParseAddr("2001:db8::2"), DstAddr: netip.MustParseAddr("2001:db8::3"),
		SrcPort: 65535, DstPort: 65535, Proto: 255, TCPFlags: 255, Bytes: 1 << 63, Packets: 1 << 63,
		InIf: 1 << 31, OutIf: 1 << 31, Type: TypeIPFIX,
	}
	if big.size() < 128 {
		t.Fatalf("test flow is %d bytes, want a long one", big.size())
	}
	flows := append(sampleFlows(), big, sampleFlows()[0])
	var b []byte
	size := 0
	for i := range flows {
		b = AppendBatchFlow(b, &flows[i])
		size += BatchFlowSize(&flows[i])
	}
	if want := AppendBatch(nil, flows); string(b) != string(want) || size != len(want) {
		t.Errorf("flow by flow: %x (size %d), want %x (%d bytes)", b, size, want, len(want))
	}
	if got, err := DecodeBatch(nil, b); err != nil || !slices.Equal(got, flows) {
		t.Errorf("decoded %+v, %v; want %+v", got, err, flows)
	}
}
