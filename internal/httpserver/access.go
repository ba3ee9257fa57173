package httpserver

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"unicode"
)

// Role is what a credential may do; each role includes the ones before it.
type Role uint8

// The roles, weakest first. The zero Role is none: it allows nothing.
const (
	// RoleExport reads the block list's exports only (GET
	// /api/v1/blocklist?format=...): the credential of an edge router.
	RoleExport Role = iota + 1
	// RoleViewer reads everything in the console and the API.
	RoleViewer
	// RoleOperator also acknowledges incidents and holds their blocks.
	RoleOperator
	// RoleAdmin also adds to and releases from the block list by hand.
	RoleAdmin
)

var roleNames = [...]string{"", "export", "viewer", "operator", "admin"}

// Roles lists the roles' names, weakest first.
var Roles = roleNames[1:]

func (r Role) String() string {
	if int(r) < len(roleNames) && r != 0 {
		return roleNames[r]
	}
	return fmt.Sprintf("role(%d)", r)
}

// Valid tells whether r is one of the roles.
func (r Role) Valid() bool { return r >= RoleExport && r <= RoleAdmin }

// ParseRole reads a role's name.
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames[1:] {
		if s == n {
			return Role(i + 1), nil
		}
	}
	return 0, fmt.Errorf("role %q: want %s", s, strings.Join(Roles, ", "))
}

// UnmarshalText reads a role's name (YAML and the environment).
func (r *Role) UnmarshalText(text []byte) error {
	v, err := ParseRole(strings.TrimSpace(string(text)))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// MarshalText writes a role's name (JSON).
func (r Role) MarshalText() ([]byte, error) {
	if !r.Valid() {
		return nil, fmt.Errorf("no such role: %d", r)
	}
	return []byte(r.String()), nil
}

// Principal is who a request authenticated as: the name of its
// credential and that credential's role.
type Principal struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
}

// Can tells whether p has at least the role need.
func (p Principal) Can(need Role) bool { return p.Role.Valid() && p.Role >= need }

type principalKey struct{}

// WithPrincipal returns ctx carrying p: the authorizer sets it, the
// handlers read who acts from it.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal ctx carries.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// AuthorizeFunc checks a request's credentials for a route that needs the
// role need. It returns who the request authenticated as; when it returns
// false it has answered the request: 401 (no or wrong credentials), 403
// (a name whose role lacks need) or 429 (throttled), in JSON.
type AuthorizeFunc func(w http.ResponseWriter, r *http.Request, need Role) (Principal, bool)

// Forbid answers 403 in JSON: p's role lacks need.
func Forbid(w http.ResponseWriter, p Principal, need Role) {
	WriteError(w, http.StatusForbidden, fmt.Sprintf("%s (role %s) may not do this: it needs the %s role", p.Name, p.Role, need))
}

// Credential is a named token with its role: one entry of http.tokens
// (http.token is the credential "admin", role admin).
type Credential struct {
	// Name is who acts with it: the actor of its acks, holds, adds and
	// releases, in the audit trail.
	Name string `yaml:"name"`
	Role Role   `yaml:"role"`
	// Token is the secret; TokenFile holds it instead (read at start, as
	// every *_file key).
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token_file"`
}

// UnmarshalText reads the environment form of one credential,
// "NAME=ROLE;token_file=PATH" or "NAME=ROLE;token=TOKEN" (as a webhook's
// "NAME=URL;secret=S"); WORMSIGN_HTTP_TOKENS lists them comma separated.
// In YAML a credential is a mapping with the keys name, role, token and
// token_file. Errors never show the token.
func (c *Credential) UnmarshalText(text []byte) error {
	parts := strings.Split(string(text), ";")
	name, role, ok := strings.Cut(parts[0], "=")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("http.tokens entry %q: want NAME=ROLE;token_file=PATH (or ;token=TOKEN)", parts[0])
	}
	*c = Credential{Name: strings.TrimSpace(name)}
	if err := c.Role.UnmarshalText([]byte(role)); err != nil {
		return fmt.Errorf("http.tokens %s: %w", c.Name, err)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch strings.TrimSpace(k) {
		case "token":
			c.Token = v
		case "token_file":
			c.TokenFile = strings.TrimSpace(v)
		default:
			return fmt.Errorf("http.tokens %s: unknown key %q (token, token_file)", c.Name, strings.TrimSpace(k))
		}
	}
	return nil
}

// AdminName is the name of http.token's credential.
const AdminName = "admin"

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// Credentials returns every credential of c: http.token as "admin" (role
// admin), then http.tokens. Call it after Validate.
func (c Configuration) Credentials() []Credential {
	var out []Credential
	if c.Token != "" {
		out = append(out, Credential{Name: AdminName, Role: RoleAdmin, Token: c.Token})
	}
	return append(out, c.Tokens...)
}

// ValidateCredentials checks a list of credentials (Configuration.
// Credentials): every name well formed and unique, every role known,
// every token set, without control characters or spaces around it, and
// unique.
// Errors name the key (http.token or http.tokens[i]) and never a token.
func ValidateCredentials(creds []Credential, hasToken bool) error {
	key := func(i int) string {
		if hasToken {
			if i == 0 {
				return "http.token"
			}
			i--
		}
		return fmt.Sprintf("http.tokens[%d]", i)
	}
	names := map[string]int{}
	tokens := map[string]int{}
	for i, c := range creds {
		k := key(i)
		switch {
		case c.Name == "":
			return fmt.Errorf("%s.name: empty: every credential needs a name (it is the actor of what it does)", k)
		case !namePattern.MatchString(c.Name):
			return fmt.Errorf("%s.name: %q: want 1 to 64 letters, digits and . _ @ -, starting with a letter or digit", k, c.Name)
		}
		if j, dup := names[c.Name]; dup {
			if hasToken && j == 0 {
				return fmt.Errorf("%s.name: %q is http.token's name: give this credential another name, or leave http.token empty", k, c.Name)
			}
			return fmt.Errorf("%s.name: %q is also %s's: names must be unique", k, c.Name, key(j))
		}
		names[c.Name] = i
		if !c.Role.Valid() {
			return fmt.Errorf("%s.role (%s): missing: want %s", k, c.Name, strings.Join(Roles, ", "))
		}
		if c.Token == "" {
			return fmt.Errorf("%s (%s): no token: set %s.token or %s.token_file", k, c.Name, k, k)
		}
		if strings.IndexFunc(c.Token, unicode.IsControl) >= 0 || strings.TrimSpace(c.Token) != c.Token {
			return fmt.Errorf("%s (%s): the token (not shown) starts or ends with a space, or holds a control character", k, c.Name)
		}
		if j, dup := tokens[c.Token]; dup {
			return fmt.Errorf("%s (%s): same token as %s (%s): every name needs a token of its own", k, c.Name, key(j), creds[j].Name)
		}
		tokens[c.Token] = i
	}
	return nil
}

// Guard wraps h of an API mounted beside the console (the block list, the
// cases): authorize checks the request for the role need (nil refuses
// everyone), the console's cookie authenticates only same-origin JSON
// POSTs (CheckCookieRequest), and h finds who it authenticated as in the
// request's context (PrincipalFrom). refused, when set, hears of each
// refusal by its status (403 for a role that lacks need or a cross-origin
// POST), for the component's metrics.
func Guard(authorize AuthorizeFunc, need Role, refused func(status int, crossOrigin bool), h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if authorize == nil {
			WriteError(w, http.StatusUnauthorized, "missing or wrong token: send Authorization: Bearer <a token of http.token or http.tokens>")
			return
		}
		rec := NewStatusRecorder(w)
		p, ok := authorize(rec, r, need)
		if !ok {
			if refused != nil {
				refused(rec.Status(), false)
			}
			return
		}
		if err := CheckCookieRequest(r, true); err != nil {
			if refused != nil {
				refused(http.StatusForbidden, true)
			}
			WriteError(w, http.StatusForbidden, err.Error())
			return
		}
		h(w, r.WithContext(WithPrincipal(r.Context(), p)))
	}
}
