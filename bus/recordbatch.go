package bus

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/segmentio/kafka-go/compress"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// recordBatchOverhead is the record set's size and the batch header.
const recordBatchOverhead = 4 + 61

// producerStamp is what makes a record batch idempotent: the producer id
// and epoch the broker gave, and the batch's first sequence number in its
// partition. noStamp (id -1) writes a batch the broker does not dedupe.
type producerStamp struct {
	id       int64
	epoch    int16
	sequence int32
}

var noStamp = producerStamp{id: -1, epoch: -1, sequence: -1}

// appendRecordSet appends msgs[idx] as a produce request's record set: its
// size, then one record batch in Kafka's format 2 (magic 2) with every
// record stamped ms and the producer's stamp (restamp changes it), the
// records compressed with codec when it is set.
// Written in one pass over the messages: kafka-go's general encoder
// costs the collector a fifth of its CPU for the same bytes.
func appendRecordSet(b []byte, msgs []Message, idx []int32, ms int64, stamp producerStamp, codec compress.Codec) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, 0, 0)                        // record set size
	b = binary.BigEndian.AppendUint64(b, 0)          // base offset
	b = append(b, 0, 0, 0, 0)                        // batch length
	b = binary.BigEndian.AppendUint32(b, ^uint32(0)) // partition leader epoch: -1
	b = append(b, 2)                                 // magic
	crcAt := len(b)
	b = append(b, 0, 0, 0, 0) // CRC-32C of what follows
	var attributes uint16
	if codec != nil {
		attributes = uint16(codec.Code())
	}
	b = binary.BigEndian.AppendUint16(b, attributes)         // compression; create time
	b = binary.BigEndian.AppendUint32(b, uint32(len(idx)-1)) // last offset delta
	b = binary.BigEndian.AppendUint64(b, uint64(ms))         // first timestamp
	b = binary.BigEndian.AppendUint64(b, uint64(ms))         // max timestamp
	b = binary.BigEndian.AppendUint64(b, uint64(stamp.id))
	b = binary.BigEndian.AppendUint16(b, uint16(stamp.epoch))
	b = binary.BigEndian.AppendUint32(b, uint32(stamp.sequence))
	b = binary.BigEndian.AppendUint32(b, uint32(len(idx)))
	recordsAt := len(b)
	var hdr []byte // the encoded headers, while they repeat
	var hdrOrigin uint64
	var hdrLow int64
	for i, j := range idx {
		m := &msgs[j]
		if hdr == nil || m.Origin != hdrOrigin || m.LowMs != hdrLow {
			hdr, hdrOrigin, hdrLow = appendHeaders(nil, m), m.Origin, m.LowMs
		}
		size := 1 + 1 + varintSize(int64(i)) + bytesSize(m.Key) + bytesSize(m.Value) + len(hdr)
		b = binary.AppendVarint(b, int64(size))
		b = append(b, 0, 0) // attributes, timestamp delta 0
		b = binary.AppendVarint(b, int64(i))
		b = appendVarBytes(b, m.Key)
		b = appendVarBytes(b, m.Value)
		b = append(b, hdr...)
	}
	if codec != nil {
		var out bytes.Buffer
		w := codec.NewWriter(&out)
		if _, err := w.Write(b[recordsAt:]); err != nil {
			return b[:start], fmt.Errorf("cannot compress records (%s): %w", codec.Name(), err)
		}
		if err := w.Close(); err != nil {
			return b[:start], fmt.Errorf("cannot compress records (%s): %w", codec.Name(), err)
		}
		b = append(b[:recordsAt], out.Bytes()...)
	}
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-4))
	binary.BigEndian.PutUint32(b[start+12:], uint32(len(b)-start-16))
	binary.BigEndian.PutUint32(b[crcAt:], crc32.Checksum(b[crcAt+4:], castagnoli))
	return b, nil
}

// Where the producer's stamp and the checksum are in a record set that
// appendRecordSet wrote.
const (
	recordSetCRCAt        = 4 + 8 + 4 + 4 + 1
	recordSetAttributesAt = recordSetCRCAt + 4
	recordSetStampAt      = recordSetAttributesAt + 2 + 4 + 8 + 8
)

// restamp sets the producer stamp of the record set rs and its checksum.
func restamp(rs []byte, st producerStamp) {
	binary.BigEndian.PutUint64(rs[recordSetStampAt:], uint64(st.id))
	binary.BigEndian.PutUint16(rs[recordSetStampAt+8:], uint16(st.epoch))
	binary.BigEndian.PutUint32(rs[recordSetStampAt+10:], uint32(st.sequence))
	binary.BigEndian.PutUint32(rs[recordSetCRCAt:], crc32.Checksum(rs[recordSetAttributesAt:], castagnoli))
}

// batchPrint identifies a batch's records (not its time or stamp), to tell
// a retry of a batch from another batch.
type batchPrint struct {
	records int
	sum     uint32
}

func printOf(rs []byte, records int) batchPrint {
	return batchPrint{records: records, sum: crc32.ChecksumIEEE(rs[recordBatchOverhead:])}
}

// appendHeaders appends m's headers (wormsign-origin, wormsign-low) as a
// record's header count and headers.
func appendHeaders(b []byte, m *Message) []byte {
	var n int64
	if m.Origin != 0 {
		n++
	}
	if m.LowMs > 0 {
		n++
	}
	b = binary.AppendVarint(b, n)
	if m.Origin != 0 {
		b = appendVarBytes(b, []byte(originHeader))
		b = appendVarBytes(b, binary.BigEndian.AppendUint64(nil, m.Origin))
	}
	if m.LowMs > 0 {
		b = appendVarBytes(b, []byte(lowHeader))
		b = appendVarBytes(b, binary.BigEndian.AppendUint64(nil, uint64(m.LowMs)))
	}
	return b
}

// appendVarBytes appends p with its length as a zigzag varint; nil is
// Kafka's null (-1).
func appendVarBytes(b, p []byte) []byte {
	if p == nil {
		return binary.AppendVarint(b, -1)
	}
	return append(binary.AppendVarint(b, int64(len(p))), p...)
}

func bytesSize(p []byte) int {
	if p == nil {
		return 1
	}
	return varintSize(int64(len(p))) + len(p)
}

func varintSize(v int64) int {
	var buf [binary.MaxVarintLen64]byte
	return binary.PutVarint(buf[:], v)
}
