package bus

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go/compress"
	"github.com/segmentio/kafka-go/protocol"
)

// TestRecordSetDecodesWithKafkaGo reads what appendRecordSet writes with
// kafka-go's own record set decoder, for every codec: the same records,
// keys, values, headers and time, null and empty keys told apart.
func TestRecordSetDecodesWithKafkaGo(t *testing.T) {
	msgs := []Message{
		{Key: []byte("203.0.113.7"), Value: []byte("flows"), Origin: 7<<16 | 1, LowMs: 1764320000000},
		{Key: []byte("203.0.113.7"), Value: bytes.Repeat([]byte("x"), 300), Origin: 7<<16 | 1, LowMs: 1764320000000},
		{Key: []byte{}, Value: []byte("empty key"), Origin: 9},
		{Key: nil, Value: nil},
	}
	for i := range 200 {
		msgs = append(msgs, Message{Key: []byte(fmt.Sprint(i)), Value: []byte(fmt.Sprint("value ", i)), LowMs: int64(1000 + i/50)})
	}
	ms := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC).UnixMilli()
	for _, c := range []compress.Compression{0, compress.Gzip, compress.Snappy, compress.Lz4, compress.Zstd} {
		t.Run(c.String(), func(t *testing.T) {
			idx := make([]int32, len(msgs))
			for i := range idx {
				idx[i] = int32(i)
			}
			b, err := appendRecordSet([]byte("prefix"), msgs, idx, ms, noStamp, c.Codec())
			if err != nil {
				t.Fatal(err)
			}
			if string(b[:6]) != "prefix" {
				t.Fatalf("overwrote what was before: %q", b[:6])
			}
			b = b[6:]
			if size := binary.BigEndian.Uint32(b); int(size) != len(b)-4 {
				t.Errorf("record set size %d, want %d", size, len(b)-4)
			}
			var rs protocol.RecordSet
			if _, err := rs.ReadFrom(bytes.NewReader(b)); err != nil {
				t.Fatalf("kafka-go cannot read it: %v", err)
			}
			if rs.Version != 2 || rs.Attributes.Compression() != c {
				t.Errorf("version %d compression %v, want 2 and %v", rs.Version, rs.Attributes.Compression(), c)
			}
			i := 0
			for {
				r, err := rs.Records.ReadRecord()
				if err != nil {
					break
				}
				if i >= len(msgs) {
					t.Fatalf("more records than the %d written", len(msgs))
				}
				m := msgs[i]
				key, value := readBytes(t, r.Key), readBytes(t, r.Value)
				if (key == nil) != (m.Key == nil) || string(key) != string(m.Key) || (value == nil) != (m.Value == nil) || string(value) != string(m.Value) {
					t.Errorf("record %d: key %q value %q, want %q %q", i, key, value, m.Key, m.Value)
				}
				if r.Offset != int64(i) || r.Time.UnixMilli() != ms {
					t.Errorf("record %d: offset %d time %s", i, r.Offset, r.Time)
				}
				var kh []string
				for _, h := range r.Headers {
					kh = append(kh, h.Key)
				}
				var wantHeaders []string
				if m.Origin != 0 {
					wantHeaders = append(wantHeaders, originHeader)
				}
				if m.LowMs > 0 {
					wantHeaders = append(wantHeaders, lowHeader)
				}
				if fmt.Sprint(kh) != fmt.Sprint(wantHeaders) || headerUint(r.Headers, originHeader) != m.Origin || int64(headerUint(r.Headers, lowHeader)) != m.LowMs {
					t.Errorf("record %d: headers %v, want origin %d low %d", i, r.Headers, m.Origin, m.LowMs)
				}
				i++
			}
			if i != len(msgs) {
				t.Errorf("read %d records, want %d", i, len(msgs))
			}
		})
	}
}

func readBytes(t *testing.T, b protocol.Bytes) []byte {
	if b == nil {
		return nil
	}
	out := make([]byte, b.Len())
	if _, err := b.Read(out); err != nil && len(out) > 0 {
		t.Fatal(err)
	}
	return out
}
