package webhook

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// DefaultTimeout bounds one delivery attempt when a target sets none.
const DefaultTimeout = 10 * time.Second

// Configuration is one webhook target, as users write it under
// sink.webhooks (the sink's alerts and containment's changes go to the same
// targets). In the environment a list of targets is written as
// WORMSIGN_SINK_WEBHOOKS="name=URL;secret=S;timeout=5s,..." (or
// secret_file=PATH instead of secret=S).
type Configuration struct {
	// Name identifies the target in metrics and in its consumer group;
	// keep it stable, or the target starts over from the oldest alert.
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
	// Secret keys the HMAC-SHA256 signature of every body.
	Secret string `yaml:"secret"`
	// SecretFile holds the secret instead (read at start, by
	// internal/config.ReadSecretFiles).
	SecretFile string `yaml:"secret_file"`
	// Timeout bounds one delivery attempt; 0 is DefaultTimeout.
	Timeout time.Duration `yaml:"timeout"`
}

// DefaultConfiguration is a target's defaults; its Name, URL and Secret
// have none.
func DefaultConfiguration() Configuration {
	return Configuration{Timeout: DefaultTimeout}
}

// UnmarshalText reads the environment form "name=URL;secret=S;timeout=5s".
// In YAML a target is a mapping with the same keys.
func (c *Configuration) UnmarshalText(text []byte) error {
	parts := strings.Split(string(text), ";")
	name, u, ok := strings.Cut(parts[0], "=")
	if !ok {
		return fmt.Errorf("webhook %q: want name=URL;secret=S[;timeout=D]", parts[0])
	}
	*c = Configuration{Name: strings.TrimSpace(name), URL: strings.TrimSpace(u)}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch strings.TrimSpace(k) {
		case "secret":
			c.Secret = v
		case "secret_file":
			c.SecretFile = strings.TrimSpace(v)
		case "timeout":
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("webhook %s timeout: %w", c.Name, err)
			}
			c.Timeout = d
		default:
			return fmt.Errorf("webhook %s: unknown key %q (secret, secret_file, timeout)", c.Name, k)
		}
	}
	return nil
}

var validName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Validate names the first bad key of the target, under key (such as
// "sink.webhooks[0]").
func (c Configuration) Validate(key string) error {
	if !validName.MatchString(c.Name) {
		return fmt.Errorf("%s.name: %q, want letters, digits, '-' or '_'", key, c.Name)
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// A password in the URL is not shown.
		shown := "(unparsable, not shown)"
		if err == nil {
			shown = u.Redacted()
		}
		return fmt.Errorf("%s.url: %q, want an http or https URL", key, shown)
	}
	if c.Secret == "" {
		return fmt.Errorf("%s.secret: empty; receivers need it to check the signature", key)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("%s.timeout: %s, want > 0", key, c.Timeout)
	}
	return nil
}

// ValidateTargets validates each target of a list under key (such as
// "sink.webhooks") and refuses a name used twice.
func ValidateTargets(key string, targets []Configuration) error {
	seen := map[string]bool{}
	for i, t := range targets {
		k := fmt.Sprintf("%s[%d]", key, i)
		if err := t.Validate(k); err != nil {
			return err
		}
		if seen[t.Name] {
			return fmt.Errorf("%s.name: %q is used twice", k, t.Name)
		}
		seen[t.Name] = true
	}
	return nil
}

// Policy is how a Deliverer queues and retries. The component that owns
// the Deliverer sets it; users set the target (Configuration).
type Policy struct {
	// MinBackoff and MaxBackoff bound the exponential wait between the
	// attempts at one event (with jitter).
	MinBackoff, MaxBackoff time.Duration
	// Attempts bounds the attempts at one event: past it the event is
	// dropped (reported GaveUp, counted). 0 retries until the target
	// accepts the event, or Stop.
	Attempts int
	// Queue bounds the events waiting for the target, besides the one in
	// delivery.
	Queue int
	// DropOldest makes Enqueue on a full queue drop the oldest event
	// waiting (reported Overflowed, counted) instead of waiting for room.
	DropOldest bool
}

// Validate names the first bad field.
func (p Policy) Validate() error {
	switch {
	case p.MinBackoff < 0 || p.MaxBackoff < 0:
		return fmt.Errorf("webhook policy: negative backoff")
	case p.MaxBackoff != 0 && p.MinBackoff > p.MaxBackoff:
		return fmt.Errorf("webhook policy: min backoff %s exceeds max backoff %s", p.MinBackoff, p.MaxBackoff)
	case p.Attempts < 0:
		return fmt.Errorf("webhook policy: attempts %d, want >= 0", p.Attempts)
	case p.Queue < 1:
		return fmt.Errorf("webhook policy: queue %d, want >= 1", p.Queue)
	}
	return nil
}
