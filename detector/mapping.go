package detector

import (
	"bufio"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/wormsign/wormsign/network"
)

// Mapping tells the subscriber_id of an address, from a CSV file of
// "network,subscriber_id" lines where network is a prefix or an address.
// The longest prefix wins. A line may name a DHCP client instead of a
// network: its MAC or client id as hex octets joined by colons
// ("02:00:5e:00:53:01"), which identity's lease endpoint looks up
// (LookupClient) to name the customer of a lease. Blank lines and lines
// starting with # are skipped, and so is a first line whose network does
// not parse (a header).
type Mapping struct {
	table   *network.Table[string]
	clients map[string]string
	modTime time.Time
	size    int64
}

// LoadMapping reads a mapping file.
func LoadMapping(path string) (*Mapping, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot open subscriber map: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot stat subscriber map: %w", err)
	}
	m, err := ParseMapping(f)
	if err != nil {
		return nil, fmt.Errorf("subscriber map %s: %w", path, err)
	}
	m.modTime, m.size = st.ModTime(), st.Size()
	return m, nil
}

// ParseMapping reads mapping lines from r.
func ParseMapping(r io.Reader) (*Mapping, error) {
	cr := csv.NewReader(bufio.NewReader(r))
	cr.FieldsPerRecord = -1
	cr.Comment = '#'
	cr.TrimLeadingSpace = true
	m := &Mapping{table: network.NewTable[string](), clients: map[string]string{}}
	for line := 1; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return m, nil
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if len(rec) == 0 || (len(rec) == 1 && strings.TrimSpace(rec[0]) == "") {
			continue
		}
		if len(rec) < 2 {
			return nil, fmt.Errorf("line %d: want network,subscriber_id", line)
		}
		if client, ok := clientKey(rec[0]); ok {
			if _, dup := m.clients[client]; !dup {
				m.clients[client] = strings.TrimSpace(rec[1])
			}
			continue
		}
		n, err := network.ParsePrefix(rec[0])
		if err != nil {
			if line == 1 {
				continue // header
			}
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		m.table.Insert(n.Prefix, strings.TrimSpace(rec[1]))
	}
}

// Lookup returns the subscriber_id of a, or "" when no entry holds it.
func (m *Mapping) Lookup(a netip.Addr) string {
	if m == nil {
		return ""
	}
	id, _ := m.table.Lookup(a)
	return id
}

// LookupClient returns the subscriber_id the map gives a DHCP client (its
// MAC or client id, lowercase hex octets joined by colons), or "".
func (m *Mapping) LookupClient(key string) string {
	if m == nil {
		return ""
	}
	return m.clients[key]
}

// clientKey reads a MAC or client id written as hex octets joined by
// colons or dashes (at least six octets, so that no IPv6 address is
// taken for one: an IPv6 address has hex groups of up to four digits and
// "::" or seven colons), in the lowercase form the lease endpoint uses.
func clientKey(s string) (string, bool) {
	s = strings.ToLower(strings.TrimSpace(strings.ReplaceAll(s, "-", ":")))
	parts := strings.Split(s, ":")
	if len(parts) < 6 {
		return "", false
	}
	for _, p := range parts {
		if len(p) != 2 || strings.Trim(p, "0123456789abcdef") != "" {
			return "", false
		}
	}
	return s, true
}

// Len is the number of entries.
func (m *Mapping) Len() int {
	if m == nil {
		return 0
	}
	return m.table.Len()
}

// changed tells whether the file at path differs from what m was loaded
// from, by modification time and size (cheap enough to poll).
func (m *Mapping) changed(path string) (bool, error) {
	st, err := os.Stat(path)
	if err != nil {
		return false, fmt.Errorf("cannot stat subscriber map: %w", err)
	}
	return m == nil || !st.ModTime().Equal(m.modTime) || st.Size() != m.size, nil
}
