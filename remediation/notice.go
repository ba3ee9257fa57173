package remediation

import (
	"bytes"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"
)

//go:embed templates/*.tmpl
var shippedTemplates embed.FS

// Templates are the notice templates: a file per kind and language,
// "<kind>.<language>.tmpl", with "default.<language>.tmpl" for the kinds
// without one. Each defines "subject" and "body" (text/template). The
// operator's directory (remediation.templates) is looked in first, then
// the shipped ones (English).
type Templates struct {
	dir      string
	fallback string
}

// NoticeData is what a template sees.
type NoticeData struct {
	Case      Case
	Contact   Contact
	Evidence  Evidence
	Desk      DeskConfiguration
	Reference string
	// Ladder says what comes next if nothing changes, in words.
	Ladder string
}

var templateFuncs = template.FuncMap{
	"join": strings.Join,
	"inc":  func(i int) int { return i + 1 },
}

// LoadTemplates checks that every template that may be used parses, so a
// broken override fails the start, not a notice.
func LoadTemplates(dir, fallbackLanguage string) (*Templates, error) {
	t := &Templates{dir: dir, fallback: fallbackLanguage}
	if dir != "" {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("remediation.templates: %w", err)
		}
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".tmpl") {
				continue
			}
			raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				return nil, fmt.Errorf("remediation.templates: %w", err)
			}
			if _, err := parseNotice(e.Name(), raw); err != nil {
				return nil, fmt.Errorf("remediation.templates: %w", err)
			}
		}
	}
	if _, _, err := t.find("default", fallbackLanguage); err != nil {
		return nil, fmt.Errorf("remediation.default_language %q: %w", fallbackLanguage, err)
	}
	return t, nil
}

func parseNotice(name string, raw []byte) (*template.Template, error) {
	tpl, err := template.New(name).Funcs(templateFuncs).Option("missingkey=error").Parse(string(raw))
	if err != nil {
		return nil, err
	}
	if tpl.Lookup("subject") == nil || tpl.Lookup("body") == nil {
		return nil, fmt.Errorf("%s: want {{define \"subject\"}} and {{define \"body\"}}", name)
	}
	return tpl, nil
}

// find returns the template for kind in language: the operator's, then
// the shipped one; the kind's, then the default.
func (t *Templates) find(kind, language string) (*template.Template, string, error) {
	for _, name := range []string{kind + "." + language + ".tmpl", "default." + language + ".tmpl"} {
		if t.dir != "" {
			if raw, err := os.ReadFile(filepath.Join(t.dir, name)); err == nil {
				tpl, err := parseNotice(name, raw)
				return tpl, name, err
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, "", err
			}
		}
		if raw, err := shippedTemplates.ReadFile("templates/" + name); err == nil {
			tpl, err := parseNotice(name, raw)
			return tpl, "shipped " + name, err
		}
	}
	return nil, "", fmt.Errorf("no template default.%s.tmpl", language)
}

// Render builds the subject and body for a case, in the contact's
// language when there are templates for it.
func (t *Templates) Render(d NoticeData) (subject, body string, err error) {
	lang := d.Contact.Language
	if lang == "" || !validLanguage(lang) {
		lang = t.fallback
	}
	tpl, _, err := t.find(d.Case.Alert.Kind, lang)
	if err != nil {
		if tpl, _, err = t.find(d.Case.Alert.Kind, t.fallback); err != nil {
			return "", "", err
		}
	}
	var s, b bytes.Buffer
	if err := tpl.ExecuteTemplate(&s, "subject", d); err != nil {
		return "", "", fmt.Errorf("notice subject: %w", err)
	}
	if err := tpl.ExecuteTemplate(&b, "body", d); err != nil {
		return "", "", fmt.Errorf("notice body: %w", err)
	}
	return strings.TrimSpace(strings.ReplaceAll(s.String(), "\n", " ")), wrap(strings.TrimLeft(b.String(), "\n"), 72), nil
}

// wrap breaks lines longer than width at spaces, continuing a list item
// ("  - ", "  1. ") under its text, as mail readers expect plain text.
func wrap(text string, width int) string {
	var out strings.Builder
	for _, line := range strings.Split(text, "\n") {
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if rest := line[indent:]; strings.HasPrefix(rest, "- ") {
			indent += 2
		} else if i := strings.Index(rest, ". "); i > 0 && i < 3 && strings.Trim(rest[:i], "0123456789") == "" {
			indent += i + 2
		}
		for len(line) > width {
			cut := strings.LastIndex(line[:width+1], " ")
			if cut <= indent {
				break
			}
			out.WriteString(line[:cut] + "\n")
			line = strings.Repeat(" ", indent) + line[cut+1:]
		}
		out.WriteString(line + "\n")
	}
	return strings.TrimSuffix(out.String(), "\n")
}

// ladderWords says the case's remaining steps in words.
func ladderWords(steps []Step, from int) string {
	var parts []string
	for _, s := range steps[min(from, len(steps)):] {
		switch s.Do {
		case StepWalled:
			parts = append(parts, fmt.Sprintf("after %s your web browsing leads to a page about this notice and other traffic stops", hours(s.After)))
		case StepBlock:
			parts = append(parts, fmt.Sprintf("after %s your connection is suspended until you contact us", hours(s.After)))
		}
	}
	return strings.Join(parts, "; ")
}

func hours(d time.Duration) string {
	if d >= time.Hour && d%time.Hour == 0 {
		if d == time.Hour {
			return "1 hour"
		}
		return fmt.Sprintf("%d hours", d/time.Hour)
	}
	return d.String()
}

// Message is a notice ready for the relay.
type Message struct {
	From, To  string
	MessageID string
	Raw       []byte
}

// buildMessage writes a plain-text mail (RFC 5322) with sane headers: the
// body in quoted-printable UTF-8, an RFC 3834 Auto-Submitted header, and
// the case's reference in X-Wormsign-Case.
func buildMessage(from mail.Address, to mail.Address, subject, body, caseRef string, now time.Time) (Message, error) {
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return Message{}, err
	}
	domain := "wormsign.invalid"
	if _, d, ok := strings.Cut(from.Address, "@"); ok && d != "" {
		domain = d
	}
	id := fmt.Sprintf("<%s.%s@%s>", caseRef, hex.EncodeToString(nonce[:]), domain)
	var b bytes.Buffer
	header := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	header("From", from.String())
	header("To", to.String())
	header("Subject", mime.QEncoding.Encode("utf-8", subject))
	header("Date", now.Format(time.RFC1123Z))
	header("Message-ID", id)
	header("MIME-Version", "1.0")
	header("Content-Type", "text/plain; charset=utf-8")
	header("Content-Transfer-Encoding", "quoted-printable")
	header("Auto-Submitted", "auto-generated")
	header("X-Wormsign-Case", caseRef)
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b)
	if _, err := qp.Write([]byte(strings.ReplaceAll(body, "\n", "\r\n"))); err != nil {
		return Message{}, err
	}
	if err := qp.Close(); err != nil {
		return Message{}, err
	}
	return Message{From: from.Address, To: to.Address, MessageID: id, Raw: b.Bytes()}, nil
}
