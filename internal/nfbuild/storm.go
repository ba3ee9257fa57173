package nfbuild

import "math/rand/v2"

// TemplateStorm is an IPFIX message of n random templates (random IDs,
// 1 to maxFields random fields each) in a random observation domain: what
// an attacker sends to fill a collector's template memory.
func TemplateStorm(r *rand.Rand, unixSecs uint32, n, maxFields int) []byte {
	var body []byte
	for range n {
		fields := 1 + r.IntN(maxFields)
		rec := Cat(U16(uint16(256+r.IntN(65536-256))), U16(uint16(fields)))
		for range fields {
			rec = append(rec, U16(uint16(1+r.IntN(400)))...)
			rec = append(rec, U16(uint16(1+r.IntN(16)))...)
		}
		body = append(body, rec...)
	}
	return Message{Version: 10, Domain: r.Uint32(), Sequence: r.Uint32(), UnixSecs: unixSecs,
		Sets: [][]byte{Set(2, body)}}.Bytes()
}
