package remediation

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"strings"
	"time"
)

// Contact is how a customer is reached.
type Contact struct {
	Email    string `json:"email"`
	Name     string `json:"name"`
	Language string `json:"language"`
}

// ErrNoContact: the contacts source knows no address for the customer.
var ErrNoContact = errors.New("no contact address for the customer")

// Contacts looks a customer's contact up.
type Contacts interface {
	Lookup(ctx context.Context, customer string) (Contact, error)
}

// csvContacts is a CSV file subscriber_id,email,name,language read at start.
type csvContacts map[string]Contact

// maxContactsFile bounds the CSV read into memory.
const maxContactsFile = 512 << 20

// LoadContactsCSV reads the file; a header line naming subscriber_id is
// skipped. Bad lines are errors that name the line: a customer without a
// notice is worse than a refused start.
func LoadContactsCSV(path string) (Contacts, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("remediation.contacts.csv: %w", err)
	}
	defer f.Close()
	r := csv.NewReader(io.LimitReader(f, maxContactsFile))
	r.FieldsPerRecord = -1
	r.TrimLeadingSpace = true
	out := csvContacts{}
	for line := 1; ; line++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("remediation.contacts.csv %s: %w", path, err)
		}
		if line == 1 && len(rec) > 0 && strings.EqualFold(strings.TrimSpace(rec[0]), "subscriber_id") {
			continue
		}
		if len(rec) < 2 || len(rec) > 4 {
			return nil, fmt.Errorf("remediation.contacts.csv %s line %d: want subscriber_id,email[,name[,language]]", path, line)
		}
		c := Contact{Email: strings.TrimSpace(rec[1])}
		if len(rec) > 2 {
			c.Name = strings.TrimSpace(rec[2])
		}
		if len(rec) > 3 {
			c.Language = strings.TrimSpace(rec[3])
		}
		if err := c.check(); err != nil {
			return nil, fmt.Errorf("remediation.contacts.csv %s line %d: %w", path, line, err)
		}
		out[strings.TrimSpace(rec[0])] = c
	}
	return out, nil
}

func (c csvContacts) Lookup(_ context.Context, customer string) (Contact, error) {
	if ct, ok := c[customer]; ok {
		return ct, nil
	}
	return Contact{}, ErrNoContact
}

// check refuses what would make a bad or forged mail: an address that is
// not one, control characters in the name.
func (c *Contact) check() error {
	a, err := mail.ParseAddress(c.Email)
	if err != nil || a.Name != "" {
		return fmt.Errorf("email %q: not a plain address", c.Email)
	}
	c.Email = a.Address
	if strings.ContainsAny(c.Name, "\r\n\x00") || len(c.Name) > 200 {
		return fmt.Errorf("name %q: control characters or too long", c.Name)
	}
	if c.Language != "" && !validLanguage(c.Language) {
		return fmt.Errorf("language %q: want a tag such as en or de", c.Language)
	}
	return nil
}

// httpContacts asks the ISP's customer database over HTTP.
type httpContacts struct {
	url    string
	token  string
	client *http.Client
}

// NewHTTPContacts asks url ({id} replaced) with the bearer token.
func NewHTTPContacts(rawURL, token string) Contacts {
	return &httpContacts{url: rawURL, token: token, client: &http.Client{Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (h *httpContacts) Lookup(ctx context.Context, customer string) (Contact, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.ReplaceAll(h.url, "{id}", url.PathEscape(customer)), nil)
	if err != nil {
		return Contact{}, err
	}
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := h.client.Do(req)
	if err != nil {
		return Contact{}, fmt.Errorf("contacts lookup: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return Contact{}, ErrNoContact
	case resp.StatusCode != http.StatusOK:
		return Contact{}, fmt.Errorf("contacts lookup: %s", resp.Status)
	}
	var c Contact
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&c); err != nil {
		return Contact{}, fmt.Errorf("contacts lookup: %w", err)
	}
	if c.Email == "" {
		return Contact{}, ErrNoContact
	}
	if err := c.check(); err != nil {
		return Contact{}, fmt.Errorf("contacts lookup: %w", err)
	}
	return c, nil
}
