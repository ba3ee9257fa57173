package flow

import (
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/wormsign/wormsign/schemas"
)

var generations = map[string]schemas.Features{
	"18.16":  {},
	"modern": {IPv6: true, LowCardinality: true, TTL: true},
}

// flowsDDL returns "name type" for each column of the flows table as the
// migrations create it on a server with features.
func flowsDDL(t *testing.T, features schemas.Features) []string {
	t.Helper()
	ms, err := schemas.ClickHouseMigrations("db", features)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		for _, stmt := range m.Statements {
			head, body, ok := strings.Cut(stmt, "CREATE TABLE IF NOT EXISTS db.flows (")
			if !ok || strings.Contains(head, "CREATE") {
				continue
			}
			body, _, _ = strings.Cut(body, ") ENGINE")
			var out []string
			for _, line := range strings.Split(body, "\n") {
				if line = strings.TrimSuffix(strings.TrimSpace(line), ","); line != "" && !strings.HasPrefix(line, "--") {
					out = append(out, strings.Join(strings.Fields(line), " "))
				}
			}
			return out
		}
	}
	t.Fatal("no CREATE TABLE for flows in the migrations")
	return nil
}

// The table is the DDL: names, order and types on both server generations.
func TestColumnsAreTheMigrationDDL(t *testing.T) {
	for name, features := range generations {
		t.Run(name, func(t *testing.T) {
			var want []string
			for _, c := range Columns {
				want = append(want, c.Name+" "+c.Type(features))
			}
			if diff := cmp.Diff(want, flowsDDL(t, features)); diff != "" {
				t.Errorf("flows columns (-Columns +DDL):\n%s", diff)
			}
		})
	}
}

// Every field of message Flow in schemas/flow.proto is a column, under the
// number the table gives it.
func TestColumnsAreFlowProto(t *testing.T) {
	raw, err := os.ReadFile("../schemas/flow.proto")
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := strings.Cut(string(raw), "message Flow {")
	if !ok {
		t.Fatal("no message Flow in flow.proto")
	}
	body, _, _ = strings.Cut(body, "}")
	field := regexp.MustCompile(`^\s*\w+\s+(\w+)\s*=\s*(\d+);`)
	proto := map[string]protowire.Number{}
	for _, line := range strings.Split(body, "\n") {
		if m := field.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[2])
			proto[m[1]] = protowire.Number(n)
		}
	}
	table := map[string]protowire.Number{}
	for _, c := range Columns {
		if c.IsFromMessage() && c.Field != 0 {
			t.Errorf("column %s: filled from the message but on the wire as %d", c.Name, c.Field)
		}
		if c.Field != 0 {
			table[c.Proto] = c.Field
		}
	}
	if len(proto) == 0 {
		t.Fatal("no fields parsed from flow.proto")
	}
	if diff := cmp.Diff(proto, table); diff != "" {
		t.Errorf("field numbers (-flow.proto +Columns):\n%s", diff)
	}
}

// The codec writes exactly the table's fields, in table order, and each
// field carries its column's value: without it, after a round trip, that
// column and no other changes.
func TestCodecWritesTheColumns(t *testing.T) {
	full := sampleFlows()[0]
	wire := full.appendTo(nil)
	var got, want []protowire.Number
	type span struct{ from, to int }
	spans := map[protowire.Number]span{}
	for b, off := wire, 0; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if n < 0 || m < 0 {
			t.Fatalf("cannot parse the encoding at %d", off)
		}
		got = append(got, num)
		spans[num] = span{off, off + n + m}
		b, off = b[n+m:], off+n+m
	}
	for _, c := range Columns {
		if c.Field != 0 {
			want = append(want, c.Field)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("fields written (-Columns +codec):\n%s", diff)
	}
	features := generations["modern"]
	for _, c := range Columns {
		if c.Field == 0 {
			continue
		}
		s := spans[c.Field]
		var f Flow
		if err := f.decode(append(append([]byte(nil), wire[:s.from]...), wire[s.to:]...)); err != nil {
			t.Fatal(err)
		}
		for _, other := range Columns {
			if other.Field == 0 {
				continue
			}
			same := cmp.Equal(other.Value(&full, features), other.Value(&f, features), addrEqual)
			if same == (other.Name == c.Name) {
				t.Errorf("without field %d (%s), column %s changed = %v", c.Field, c.Name, other.Name, !same)
			}
		}
	}
}

var addrEqual = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

// Value gives what the sink stores: addresses by server generation, an
// absent one as the column's default.
func TestColumnValue(t *testing.T) {
	f := Flow{EndMs: 1700000000500, SrcAddr: netip.MustParseAddr("203.0.113.10"), SrcPort: 25, Type: TypeIPFIX}
	cases := []struct {
		column   string
		features schemas.Features
		want     any
	}{
		{"src_addr", generations["modern"], netip.MustParseAddr("203.0.113.10")},
		{"src_addr", generations["18.16"], "203.0.113.10"},
		{"dst_addr", generations["modern"], netip.IPv6Unspecified()},
		{"dst_addr", generations["18.16"], ""},
		{"date", generations["modern"], time.Date(2023, 11, 14, 0, 0, 0, 0, time.UTC)},
		{"time_end", generations["18.16"], time.UnixMilli(1700000000500).UTC()},
		{"src_port", generations["18.16"], uint16(25)},
		{"flow_type", generations["18.16"], uint8(TypeIPFIX)},
		{"subscriber_ip", generations["modern"], nil},
	}
	for _, tc := range cases {
		i := slices.IndexFunc(Columns, func(c Column) bool { return c.Name == tc.column })
		if i < 0 {
			t.Fatalf("no column %s", tc.column)
		}
		if diff := cmp.Diff(tc.want, Columns[i].Value(&f, tc.features), addrEqual); diff != "" {
			t.Errorf("%s with %+v (-want +got):\n%s", tc.column, tc.features, diff)
		}
	}
}
