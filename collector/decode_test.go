package collector

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/wormsign/wormsign/testenv"
)

func decodeCapture(t *testing.T, d *Decoder, path string) int {
	t.Helper()
	total := 0
	err := ReadCapture(path, func(dg Datagram) error {
		flows, _, err := d.Decode(Family(dg.Payload), dg.From, dg.Payload, dg.TimeMs, nil)
		if err != nil {
			t.Logf("%s: %v", filepath.Base(path), err)
		}
		total += len(flows)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

func TestDecodeCaptures(t *testing.T) {
	dir := testenv.Shared(t, "testdata/flow-captures/akvorado")
	cases := []struct {
		files []string // decoded in order with one decoder: templates first
		want  int
	}{
		{[]string{"outlet__flow__decoder__netflow__testdata__nfv5.pcap"}, 29},
		{[]string{"outlet__flow__decoder__netflow__testdata__template.pcap", "outlet__flow__decoder__netflow__testdata__data.pcap"}, 4},
		{[]string{"outlet__flow__decoder__sflow__testdata__data-1140.pcap"}, 5},
	}
	for _, tc := range cases {
		t.Run(tc.files[len(tc.files)-1], func(t *testing.T) {
			d := NewDecoder(false)
			got := 0
			for _, f := range tc.files {
				got += decodeCapture(t, d, filepath.Join(dir, f))
			}
			if got != tc.want {
				t.Errorf("decoded %d flows, want %d", got, tc.want)
			}
		})
	}
}

func TestDecodeHostileInput(t *testing.T) {
	d := NewDecoder(true)
	from := netip.MustParseAddrPort("192.0.2.1:9999")
	for name, payload := range map[string][]byte{
		"empty":           {},
		"one byte":        {0},
		"unknown version": {0, 7, 0, 0},
		"v9 unknown template": {0, 9, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
			1, 0, 0, 8, 1, 2, 3, 4},
		"v5 truncated": {0, 5, 0, 30, 0, 0, 0, 0},
	} {
		t.Run(name, func(t *testing.T) {
			flows, _, err := d.Decode(FamilyNetFlow, from, payload, 1, nil)
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("Decode() = %d flows, err %v; want a *DecodeError", len(flows), err)
			}
		})
	}
}
