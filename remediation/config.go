package remediation

import (
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/wormsign/wormsign/network"
)

// What a ladder step does.
const (
	// StepNotify sends the customer the notice e-mail.
	StepNotify = "notify"
	// StepWalled puts the customer in the walled garden: HTTP goes to the
	// notice page, DNS and remediation.allow pass, the rest is dropped.
	StepWalled = "walled"
	// StepBlock cuts the customer off (containment's quarantine, or its
	// CoA when containment.coa is on).
	StepBlock = "block"
)

// Step is one rung of the escalation ladder: what to do, and how long
// after the case opened (in event time) while it is still active.
// Written "walled:4h".
type Step struct {
	Do    string
	After time.Duration
}

// UnmarshalText reads "notify:0s", "walled:4h", "block:24h".
func (s *Step) UnmarshalText(b []byte) error {
	do, after, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	d, err := time.ParseDuration(after)
	if !ok || err != nil || d < 0 || !slices.Contains([]string{StepNotify, StepWalled, StepBlock}, do) {
		return fmt.Errorf("%q: want notify:DURATION, walled:DURATION or block:DURATION", b)
	}
	*s = Step{Do: do, After: d}
	return nil
}

// MarshalText writes "walled:4h0m0s".
func (s Step) MarshalText() ([]byte, error) { return []byte(s.Do + ":" + s.After.String()), nil }

// level is how far a step contains: notify none, walled 1, block 2.
func (s Step) level() int {
	switch s.Do {
	case StepWalled:
		return 1
	case StepBlock:
		return 2
	}
	return 0
}

// LadderConfiguration replaces the ladder for a kind of alert, a
// subscriber group (detector.groups), or both. YAML only.
type LadderConfiguration struct {
	Kind  string `yaml:"kind"`
	Group string `yaml:"group"`
	Steps []Step `yaml:"steps"`
}

// SMTPConfiguration is the ISP's relay the notices go through.
type SMTPConfiguration struct {
	// Addr is host:port of the relay (submission, 587, or 25).
	Addr string `yaml:"addr"`
	// From is the notices' sender address; FromName its display name.
	From     string `yaml:"from"`
	FromName string `yaml:"from_name"`
	// Helo is the name wormsign gives in EHLO; the host name when empty.
	Helo string `yaml:"helo"`
	// StartTLS is required (the default): a relay that does not offer it
	// gets no notice, rather than the customer's evidence in clear text.
	StartTLS bool `yaml:"starttls"`
	// ServerName checks the relay's certificate; the host of Addr when
	// empty. CAFile adds the CAs that signed it to the system's.
	ServerName string `yaml:"server_name"`
	CAFile     string `yaml:"ca_file"`
	// Username and Password (or password_file) authenticate with AUTH
	// PLAIN, only over TLS.
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// Timeout bounds one delivery attempt.
	Timeout time.Duration `yaml:"timeout"`
	// Attempts, with a backoff from a minute doubling to an hour, before
	// a notice is given up (and the case says so).
	Attempts int `yaml:"attempts"`
}

// ContactsConfiguration is where a customer's e-mail address comes from:
// a CSV file (subscriber_id,email,name,language) or an HTTP lookup.
type ContactsConfiguration struct {
	CSV string `yaml:"csv"`
	// URL is asked GET with {id} replaced by the customer (escaped), and
	// answers JSON {"email":..,"name":..,"language":..}; 404: none.
	URL string `yaml:"url"`
	// Token, when set, is sent as Authorization: Bearer.
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token_file"`
}

// DeskConfiguration is the abuse desk as the customer reaches it: in the
// notices and on the notice page.
type DeskConfiguration struct {
	Name  string `yaml:"name"`
	Phone string `yaml:"phone"`
	Email string `yaml:"email"`
	// PortalURL is the page a customer reaches by typing the ISP's
	// address: the notice tells them to check it there rather than trust
	// a link in a mail.
	PortalURL string `yaml:"portal_url"`
}

// Configuration of remediation: cases, notices, the walled garden,
// self-release and the escalation ladder.
type Configuration struct {
	Enabled bool `yaml:"enabled"`
	// Ladder is the default escalation; Ladders replace it per kind or
	// group (the most specific match wins: kind and group, then group,
	// then kind).
	Ladder  []Step                `yaml:"ladder"`
	Ladders []LadderConfiguration `yaml:"ladders"`
	// ReopenWithin: a released or closed case whose customer has a new
	// incident within this time reopens instead of a new case.
	ReopenWithin time.Duration `yaml:"reopen_within"`
	// CloseAfter closes a case without a walled or blocked step (open,
	// notified or released) once all its incidents have resolved and
	// nothing happened for this long.
	CloseAfter time.Duration `yaml:"close_after"`
	// RelapseGrace: activity of an incident that was running when the
	// case was released counts as a relapse only this long after the
	// release (the detector's window still holds flows from before).
	RelapseGrace time.Duration `yaml:"relapse_grace"`
	// SelfReleaseMax self-releases per SelfReleaseWindow; then only the
	// abuse desk releases.
	SelfReleaseMax    int           `yaml:"self_release_max"`
	SelfReleaseWindow time.Duration `yaml:"self_release_window"`
	// ContainFor is how long a walled or block step's entry lasts on the
	// block list unless released first.
	ContainFor time.Duration `yaml:"contain_for"`
	// NoticeListen is the notice server (plain HTTP: a walled customer's
	// port 80 lands there). NoticeRedirect is where the edge router's DNAT
	// sends it (one IPv4 and one IPv6 address:port); when empty,
	// NoticeListen's address if it is a specific one.
	NoticeListen   string           `yaml:"notice_listen"`
	NoticeRedirect []netip.AddrPort `yaml:"notice_redirect"`
	// Allow are the remediation sites walled customers still reach: OS
	// and antivirus update services, the ISP's help pages.
	Allow []network.Prefix `yaml:"allow"`
	// Templates is a directory of notice templates that override the
	// shipped ones (see templates.go); languages are the CSV's.
	Templates string `yaml:"templates"`
	// DefaultLanguage is used when the contact names none, or one without
	// templates.
	DefaultLanguage string                `yaml:"default_language"`
	SMTP            SMTPConfiguration     `yaml:"smtp"`
	Contacts        ContactsConfiguration `yaml:"contacts"`
	Desk            DeskConfiguration     `yaml:"desk"`
	// Tick is how often the wall clock moves the ladder in live operation.
	Tick time.Duration `yaml:"tick"`
	// Group is the consumer group on the alerts topic.
	Group string `yaml:"group"`
	// MaxCases bounds the cases kept in memory; beyond it the oldest
	// closed ones go first, and an open one is never dropped (new cases
	// are refused and counted instead).
	MaxCases int `yaml:"max_cases"`
}

// DefaultConfiguration returns the defaults documented in
// docs/remediation.md.
func DefaultConfiguration() Configuration {
	return Configuration{
		// RFC 6561's order: tell first, restrict stepwise. Four hours
		// gives the customer a working afternoon to read the mail; a day
		// bounds what a bot that ignores the garden may send.
		Ladder:       []Step{{StepNotify, 0}, {StepWalled, 4 * time.Hour}, {StepBlock, 24 * time.Hour}},
		ReopenWithin: 30 * 24 * time.Hour,
		CloseAfter:   72 * time.Hour,
		RelapseGrace: 15 * time.Minute,
		// Two per 30 days: one honest mistake (the scan did not catch
		// everything) is forgiven once more; a third relapse in a month
		// is a machine the customer cannot clean alone (M3AAWG's limited
		// self-release).
		SelfReleaseMax:    2,
		SelfReleaseWindow: 30 * 24 * time.Hour,
		ContainFor:        30 * 24 * time.Hour,
		DefaultLanguage:   "en",
		SMTP:              SMTPConfiguration{StartTLS: true, Timeout: 30 * time.Second, Attempts: 8},
		Desk:              DeskConfiguration{Name: "the abuse desk"},
		Tick:              10 * time.Second,
		Group:             "wormsign-remediation",
		MaxCases:          100000,
	}
}

// Validate names the first bad key.
func (c Configuration) Validate() error {
	if !c.Enabled {
		return nil
	}
	if err := validLadder("remediation.ladder", c.Ladder); err != nil {
		return err
	}
	for i, l := range c.Ladders {
		key := fmt.Sprintf("remediation.ladders[%d]", i)
		if l.Kind == "" && l.Group == "" {
			return fmt.Errorf("%s: name a kind, a group or both", key)
		}
		if err := validLadder(key+".steps", l.Steps); err != nil {
			return err
		}
	}
	switch {
	case c.ReopenWithin < 0 || c.CloseAfter <= 0 || c.RelapseGrace < 0:
		return fmt.Errorf("remediation.reopen_within, close_after, relapse_grace: want >= 0 (close_after > 0)")
	case c.SelfReleaseMax < 0:
		return fmt.Errorf("remediation.self_release_max: %d, want >= 0", c.SelfReleaseMax)
	case c.SelfReleaseWindow <= 0:
		return fmt.Errorf("remediation.self_release_window: %s, want > 0", c.SelfReleaseWindow)
	case c.ContainFor < time.Minute:
		return fmt.Errorf("remediation.contain_for: %s, want >= 1m", c.ContainFor)
	case c.Tick <= 0:
		return fmt.Errorf("remediation.tick: %s, want > 0", c.Tick)
	case c.Group == "":
		return fmt.Errorf("remediation.group must not be empty")
	case c.MaxCases < 1:
		return fmt.Errorf("remediation.max_cases: %d, want >= 1", c.MaxCases)
	case c.DefaultLanguage == "" || !validLanguage(c.DefaultLanguage):
		return fmt.Errorf("remediation.default_language: %q, want a language tag such as en or de", c.DefaultLanguage)
	case c.SMTP.Addr != "" && c.SMTP.From == "":
		return fmt.Errorf("remediation.smtp.from must be set with remediation.smtp.addr")
	case c.SMTP.Addr != "" && (c.SMTP.Timeout <= 0 || c.SMTP.Attempts < 1):
		return fmt.Errorf("remediation.smtp.timeout and attempts: want > 0")
	case c.SMTP.Username != "" && !c.SMTP.StartTLS:
		return fmt.Errorf("remediation.smtp.username: AUTH needs remediation.smtp.starttls (the password would go in clear text)")
	case c.Contacts.CSV != "" && c.Contacts.URL != "":
		return fmt.Errorf("remediation.contacts: csv or url, not both")
	}
	if c.Contacts.URL != "" {
		u, err := url.Parse(c.Contacts.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.Contains(c.Contacts.URL, "{id}") {
			return fmt.Errorf("remediation.contacts.url: %q, want an http(s) URL with {id}", c.Contacts.URL)
		}
	}
	fams := map[bool]int{}
	for _, r := range c.NoticeRedirect {
		if !r.IsValid() || r.Port() == 0 || r.Addr().IsUnspecified() {
			return fmt.Errorf("remediation.notice_redirect: %q, want address:port of the notice server", r)
		}
		if fams[r.Addr().Unmap().Is4()]++; fams[r.Addr().Unmap().Is4()] > 1 {
			return fmt.Errorf("remediation.notice_redirect: at most one IPv4 and one IPv6 address")
		}
	}
	return nil
}

func validLadder(key string, steps []Step) error {
	if len(steps) == 0 {
		return fmt.Errorf("%s: want at least one step", key)
	}
	for i := 1; i < len(steps); i++ {
		if steps[i].After < steps[i-1].After {
			return fmt.Errorf("%s: steps must come in order of their times (%s before %s)", key, steps[i-1].After, steps[i].After)
		}
	}
	return nil
}

func validLanguage(s string) bool {
	if len(s) > 16 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// Redirect is where the walled garden's DNAT sends a customer's HTTP:
// remediation.notice_redirect, or notice_listen's own address.
func (c Configuration) Redirect() []netip.AddrPort {
	if len(c.NoticeRedirect) > 0 {
		return c.NoticeRedirect
	}
	if ap, err := netip.ParseAddrPort(c.NoticeListen); err == nil && !ap.Addr().IsUnspecified() {
		return []netip.AddrPort{ap}
	}
	return nil
}

// ladderFor is the ladder for a case of kind in group.
func (c Configuration) ladderFor(kind, group string) []Step {
	best, score := c.Ladder, 0
	for _, l := range c.Ladders {
		if (l.Kind != "" && l.Kind != kind) || (l.Group != "" && l.Group != group) {
			continue
		}
		s := 1
		if l.Group != "" {
			s = 2
		}
		if l.Kind != "" && l.Group != "" {
			s = 3
		}
		if s > score {
			best, score = l.Steps, s
		}
	}
	return best
}

// Contains tells whether a ladder takes walled or block steps.
func (c Configuration) Contains() bool {
	ladders := [][]Step{c.Ladder}
	for _, l := range c.Ladders {
		ladders = append(ladders, l.Steps)
	}
	for _, l := range ladders {
		for _, s := range l {
			if s.level() > 0 {
				return true
			}
		}
	}
	return false
}
