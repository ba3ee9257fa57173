package remediation

import (
	"mime"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wormsign/wormsign/alert"
)

func noticeData(kind, lang string) NoticeData {
	a := zombieAlert("inc-1", alert.StateOpen, t0)
	a.Kind = kind
	cs := Case{ID: "case-0123456789abcdef", Alert: a}
	return NoticeData{Case: cs, Contact: Contact{Email: "erika@customers.example", Name: "Erika Mustermann", Language: lang},
		Evidence: evidenceOf(a), Desk: DeskConfiguration{Name: "Example ISP abuse desk", Phone: "+49 30 1234567", PortalURL: "https://help.isp.example/"},
		Reference: cs.ID, Ladder: ladderWords(DefaultConfiguration().Ladder, 1)}
}

// TestShippedTemplate: the English notice holds the evidence in plain
// words, what to do, and how to check it is genuine.
func TestShippedTemplate(t *testing.T) {
	tpl, err := LoadTemplates("", "en")
	if err != nil {
		t.Fatal(err)
	}
	subject, body, err := tpl.Render(noticeData(alert.KindSMTPFanout, ""))
	if err != nil {
		t.Fatal(err)
	}
	if subject != "Security notice for your internet connection (case-0123456789abcdef)" {
		t.Errorf("subject %q", subject)
	}
	for _, want := range []string{"Dear Erika Mustermann", "1 December 2026, 08:55 UTC", "mail servers", "203.0.113.7",
		"140 different destinations", "198.18.0.10, 198.18.0.11", "port 25", "90 of them were refused",
		"1. Check every computer", "after 4 hours your web browsing leads to a page", "after 24 hours your connection is suspended",
		"we will never ask for your password", "https://help.isp.example/", "+49 30 1234567", "case-0123456789abcdef"} {
		if !strings.Contains(strings.Join(strings.Fields(body), " "), want) {
			t.Errorf("notice lacks %q:\n%s", want, body)
		}
	}
	for _, line := range strings.Split(body, "\n") {
		if len(line) > 72 {
			t.Errorf("line longer than 72: %q", line)
		}
	}
	if !strings.Contains(body, "\n  1. Check every computer on your connection, not only the one you use\n     most.") {
		t.Errorf("list items do not continue under their text:\n%s", body)
	}
	if strings.Contains(body, "<no value>") {
		t.Errorf("notice has an empty field:\n%s", body)
	}
}

// TestTemplateOverrides: the operator's kind template in the contact's
// language wins, then its default, then the shipped English; a broken
// override fails the load.
func TestTemplateOverrides(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("darknet.de.tmpl", `{{define "subject"}}Sicherheitshinweis {{.Reference}}{{end}}{{define "body"}}Hallo {{.Contact.Name}}, dunkle Adressen.{{end}}`)
	write("default.de.tmpl", `{{define "subject"}}Hinweis {{.Reference}}{{end}}{{define "body"}}Hallo {{.Contact.Name}}.{{end}}`)
	tpl, err := LoadTemplates(dir, "en")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ kind, lang, subject string }{
		{alert.KindDarknet, "de", "Sicherheitshinweis case-0123456789abcdef"},
		{alert.KindSMTPFanout, "de", "Hinweis case-0123456789abcdef"},
		{alert.KindSMTPFanout, "fr", "Security notice for your internet connection (case-0123456789abcdef)"},
	} {
		subject, _, err := tpl.Render(noticeData(tc.kind, tc.lang))
		if err != nil || subject != tc.subject {
			t.Errorf("%s/%s: %q %v, want %q", tc.kind, tc.lang, subject, err, tc.subject)
		}
	}
	write("relay_abuse.en.tmpl", `{{define "subject"}}{{.Nope}}`)
	if _, err := LoadTemplates(dir, "en"); err == nil {
		t.Error("a broken override loaded")
	}
}

// TestMessageHeaders: the mail is RFC 5322 with sane headers, and a name
// from the contacts cannot add any.
func TestMessageHeaders(t *testing.T) {
	from := mail.Address{Name: "Example ISP abuse desk", Address: "abuse@isp.example"}
	to := mail.Address{Name: "Evil\r\nBcc: victim@example.com", Address: "erika@customers.example"}
	m, err := buildMessage(from, to, "Sécurité", "line one\nline two ünicode\n", "case-1", t0)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := mail.ReadMessage(strings.NewReader(string(m.Raw)))
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get("Bcc") != "" || len(msg.Header) != 10 {
		t.Errorf("headers %v", msg.Header)
	}
	for k, want := range map[string]string{"Auto-Submitted": "auto-generated", "X-Wormsign-Case": "case-1", "MIME-Version": "1.0",
		"Content-Type": "text/plain; charset=utf-8"} {
		if msg.Header.Get(k) != want {
			t.Errorf("%s: %q, want %q", k, msg.Header.Get(k), want)
		}
	}
	dec := new(mime.WordDecoder)
	if s, _ := dec.DecodeHeader(msg.Header.Get("Subject")); s != "Sécurité" {
		t.Errorf("subject %q", s)
	}
	if !strings.HasPrefix(m.MessageID, "<case-1.") || !strings.HasSuffix(m.MessageID, "@isp.example>") {
		t.Errorf("message id %q", m.MessageID)
	}
}
