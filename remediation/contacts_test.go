package remediation

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestContactsCSV: a header is skipped, bad lines fail the load with
// their line, a name cannot smuggle a header.
func TestContactsCSV(t *testing.T) {
	dir := t.TempDir()
	write := func(text string) string {
		p := filepath.Join(dir, "c.csv")
		os.WriteFile(p, []byte(text), 0o600)
		return p
	}
	c, err := LoadContactsCSV(write("subscriber_id,email,name,language\ncust-1,a@customers.example,Ann,de\ncust-2,b@customers.example\n"))
	if err != nil {
		t.Fatal(err)
	}
	if ct, err := c.Lookup(context.Background(), "cust-1"); err != nil || ct != (Contact{"a@customers.example", "Ann", "de"}) {
		t.Errorf("cust-1: %+v %v", ct, err)
	}
	if _, err := c.Lookup(context.Background(), "cust-3"); !errors.Is(err, ErrNoContact) {
		t.Errorf("unknown customer: %v", err)
	}
	for _, bad := range []string{"cust-1,not-an-address\n", "cust-1,Ann <a@x.example>\n", "cust-1,a@x.example,\"Ann\r\nBcc: v@x.example\"\n", "cust-1\n", "cust-1,a@x.example,Ann,d e\n"} {
		if _, err := LoadContactsCSV(write(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: %v, want an error naming line 1", bad, err)
		}
	}
}

// TestContactsHTTP: the lookup sends the token and the escaped id, reads
// the answer, and takes 404 for none; a forged answer is refused.
func TestContactsHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer crm-t" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		switch r.URL.EscapedPath() {
		case "/contacts/cust%2F42":
			w.Write([]byte(`{"email":"erika@customers.example","name":"Erika","language":"de"}`))
		case "/contacts/evil":
			w.Write([]byte(`{"email":"x@customers.example\r\nBcc: v@example.com"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c := NewHTTPContacts(srv.URL+"/contacts/{id}", "crm-t")
	if ct, err := c.Lookup(context.Background(), "cust/42"); err != nil || ct != (Contact{"erika@customers.example", "Erika", "de"}) {
		t.Errorf("lookup: %+v %v", ct, err)
	}
	if _, err := c.Lookup(context.Background(), "nobody"); !errors.Is(err, ErrNoContact) {
		t.Errorf("404: %v, want ErrNoContact", err)
	}
	if _, err := c.Lookup(context.Background(), "evil"); err == nil || errors.Is(err, ErrNoContact) {
		t.Errorf("forged answer: %v, want refused", err)
	}
	if _, err := NewHTTPContacts(srv.URL+"/contacts/{id}", "wrong").Lookup(context.Background(), "cust/42"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong token: %v", err)
	}
}
