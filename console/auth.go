package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wormsign/wormsign/internal/httpserver"
)

// sessionCookie is the console's login cookie. Its value names the
// credential it logged in with, that credential's role, a random session
// id, when it was issued and when it expires, signed (HMAC-SHA256) with a
// key derived from the credential's token: it never carries the token,
// and every instance refuses it once that token is no longer configured.
const sessionCookie = "wormsign_session"

// GenerateToken returns a random token for a process started without
// http.token.
func GenerateToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// maxRevoked bounds the logged-out sessions a guard remembers (each until
// it would have expired). Past it, the guard refuses every session issued
// so far instead: everyone logs in again, and memory stays bounded.
const maxRevoked = 10000

// credential is a configured token as the guard checks it.
type credential struct {
	httpserver.Principal
	hash [sha256.Size]byte // of the token: equal lengths for the comparison
	key  []byte            // signs its sessions
}

// session is a login cookie that verified.
type session struct {
	httpserver.Principal
	id              string
	issued, expires time.Time
}

// verdict of a request's credentials.
type verdict int

const (
	allowed   verdict = iota
	denied            // no credentials, or wrong ones
	throttled         // its address failed too many token checks: 429
)

// Guard checks requests to the console and the other APIs on its server
// (the block list): a token of http.token or http.tokens in
// Authorization: Bearer, or the session cookie the login form sets, and
// the role each route needs. Failed token checks are throttled with the
// server's limiter; a wrong cookie is no guess at a token (it is signed
// with a key derived from one), so only tokens count as failures.
//
// Sessions are stateless signed cookies, valid on every instance that has
// the same credentials; logging out revokes a session in this guard only
// (kept in memory, bounded by maxRevoked): another instance accepts the
// cookie until it expires (console.session_lifetime) or its token changes.
type Guard struct {
	creds   []*credential
	byName  map[string]*credential
	limiter *httpserver.AuthLimiter
	now     func() time.Time

	mu         sync.Mutex
	revoked    map[string]time.Time // logged-out session ids: their expiry
	notBefore  time.Time            // sessions issued until then are refused
	maxRevoked int
}

// NewGuard checks creds (http.token as "admin", then http.tokens: see
// httpserver.Configuration.Credentials) with limiter (nil: not throttled).
// One guard serves every API of a process, so that a logout ends the
// session for all of them.
func NewGuard(creds []httpserver.Credential, limiter *httpserver.AuthLimiter) (*Guard, error) {
	if len(creds) == 0 {
		return nil, errors.New("console: no credentials (http.token or http.tokens)")
	}
	if err := httpserver.ValidateCredentials(creds, false); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	g := &Guard{byName: map[string]*credential{}, limiter: limiter, now: time.Now,
		revoked: map[string]time.Time{}, maxRevoked: maxRevoked}
	for _, c := range creds {
		m := hmac.New(sha256.New, []byte(c.Token))
		m.Write([]byte("wormsign console session v2"))
		cr := &credential{Principal: httpserver.Principal{Name: c.Name, Role: c.Role}, hash: sha256.Sum256([]byte(c.Token)), key: m.Sum(nil)}
		g.creds = append(g.creds, cr)
		g.byName[c.Name] = cr
	}
	return g, nil
}

// byToken finds the credential of a token, comparing with every one in
// constant time.
func (g *Guard) byToken(token string) *credential {
	h := sha256.Sum256([]byte(token))
	var found *credential
	for _, c := range g.creds {
		if subtle.ConstantTimeCompare(h[:], c.hash[:]) == 1 {
			found = c
		}
	}
	return found
}

func (c *credential) sign(payload []byte) []byte {
	m := hmac.New(sha256.New, c.key)
	m.Write(payload)
	return m.Sum(nil)
}

// issue makes a session of cr for lifetime and its cookie's value.
func (g *Guard) issue(cr *credential, lifetime time.Duration) (session, string) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	now := g.now()
	s := session{Principal: cr.Principal, id: hex.EncodeToString(id), issued: now, expires: now.Add(lifetime)}
	payload := []byte(strings.Join([]string{"v2", s.Name, s.Role.String(), s.id,
		strconv.FormatInt(s.issued.UnixNano(), 10), strconv.FormatInt(s.expires.Unix(), 10)}, "|"))
	return s, base64.RawURLEncoding.EncodeToString(payload) + "." + base64.RawURLEncoding.EncodeToString(cr.sign(payload))
}

// session verifies a cookie's value: signed with the key of a credential
// still configured under its name and role, not expired, not logged out
// here.
func (g *Guard) session(value string) (*session, bool) {
	if len(value) > 1024 {
		return nil, false
	}
	enc, sig, _ := strings.Cut(value, ".")
	payload, err1 := base64.RawURLEncoding.DecodeString(enc)
	mac, err2 := base64.RawURLEncoding.DecodeString(sig)
	if err1 != nil || err2 != nil {
		return nil, false
	}
	f := strings.Split(string(payload), "|")
	if len(f) != 6 || f[0] != "v2" {
		return nil, false
	}
	cr := g.byName[f[1]]
	if cr == nil || !hmac.Equal(mac, cr.sign(payload)) || f[2] != cr.Role.String() {
		// Unknown name, another token (or none of ours), or the role
		// changed since: log in again.
		return nil, false
	}
	issued, err1 := strconv.ParseInt(f[4], 10, 64)
	expires, err2 := strconv.ParseInt(f[5], 10, 64)
	if err1 != nil || err2 != nil {
		return nil, false
	}
	s := &session{Principal: cr.Principal, id: f[3], issued: time.Unix(0, issued), expires: time.Unix(expires, 0)}
	return s, g.valid(s)
}

// valid tells whether a verified session still holds: not expired, not
// logged out.
func (g *Guard) valid(s *session) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.now().Before(s.expires) || !s.issued.After(g.notBefore) {
		return false
	}
	_, out := g.revoked[s.id]
	return !out
}

// revoke ends s here: its cookie is refused from now on.
func (g *Guard) revoke(s *session) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if len(g.revoked) >= g.maxRevoked {
		for id, exp := range g.revoked {
			if !now.Before(exp) {
				delete(g.revoked, id)
			}
		}
	}
	if len(g.revoked) >= g.maxRevoked {
		g.notBefore = now
		clear(g.revoked)
		return
	}
	g.revoked[s.id] = s.expires
}

// check reads r's credentials: the token (Authorization: Bearer), else
// the session cookie.
func (g *Guard) check(r *http.Request) (verdict, httpserver.Principal, *session, time.Duration) {
	if h := r.Header.Get("Authorization"); h != "" {
		if wait := g.limiter.Wait(r); wait > 0 {
			return throttled, httpserver.Principal{}, nil, wait
		}
		scheme, t, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			if cr := g.byToken(strings.TrimSpace(t)); cr != nil {
				g.limiter.Succeeded(r)
				return allowed, cr.Principal, nil, 0
			}
		}
		g.limiter.Failed(r, "bearer")
		return denied, httpserver.Principal{}, nil, 0
	}
	if ck, err := r.Cookie(sessionCookie); err == nil {
		if s, ok := g.session(ck.Value); ok {
			return allowed, s.Principal, s, 0
		}
	}
	return denied, httpserver.Principal{}, nil, 0
}

// authenticate answers a request without valid credentials: 401 (or 429)
// in JSON, and false.
func (g *Guard) authenticate(w http.ResponseWriter, r *http.Request) (httpserver.Principal, *session, bool) {
	v, p, s, wait := g.check(r)
	switch v {
	case allowed:
		return p, s, true
	case throttled:
		g.limiter.Refuse(w, wait)
	default:
		w.Header().Set("WWW-Authenticate", `Bearer realm="wormsign"`)
		writeError(w, http.StatusUnauthorized, "missing or wrong token: send Authorization: Bearer <a token of http.token or http.tokens> or log in to the console")
	}
	return p, nil, false
}

// Authorize checks a request as the console does (httpserver.
// AuthorizeFunc): a token in Authorization: Bearer, or the session cookie
// its login form sets, then the role the route needs. The other APIs on
// the same server (the block list) use it, so that one login serves them
// all. It returns false when it has answered the request: 401, 403, or
// 429 while the client's address must wait.
func (g *Guard) Authorize(w http.ResponseWriter, r *http.Request, need httpserver.Role) (httpserver.Principal, bool) {
	p, _, ok := g.authenticate(w, r)
	if !ok {
		return p, false
	}
	if !p.Can(need) {
		httpserver.Forbid(w, p, need)
		return p, false
	}
	return p, true
}

type sessionKey struct{}

// sessionFrom is the session a request came with; nil for a token.
func sessionFrom(ctx context.Context) *session {
	s, _ := ctx.Value(sessionKey{}).(*session)
	return s
}

// actor is who a request authenticated as.
func actor(r *http.Request) string {
	p, _ := httpserver.PrincipalFrom(r.Context())
	return p.Name
}

func withPrincipal(r *http.Request, p httpserver.Principal, s *session) *http.Request {
	ctx := httpserver.WithPrincipal(r.Context(), p)
	if s != nil {
		ctx = context.WithValue(ctx, sessionKey{}, s)
	}
	return r.WithContext(ctx)
}

// requireAPI answers 401 in JSON to a request without credentials and 403
// to one whose role lacks need, and applies the CSRF rule to
// cookie-authenticated POSTs.
func (c *Component) requireAPI(route string, need httpserver.Role, next http.HandlerFunc) http.HandlerFunc {
	c.metrics.forbidden.WithLabelValues(route)
	return func(w http.ResponseWriter, r *http.Request) {
		p, s, ok := c.guard.authenticate(w, r)
		if !ok {
			c.metrics.unauthorized.Inc()
			return
		}
		if !p.Can(need) {
			c.metrics.forbidden.WithLabelValues(route).Inc()
			httpserver.Forbid(w, p, need)
			return
		}
		if err := httpserver.CheckCookieRequest(r, true); err != nil {
			c.metrics.crossOrigin.Inc()
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		next(w, withPrincipal(r, p, s))
	}
}

// requirePage sends a browser without a session to the login form, and
// answers 403 to one whose role lacks need.
func (c *Component) requirePage(route string, need httpserver.Role, next http.HandlerFunc) http.HandlerFunc {
	c.metrics.forbidden.WithLabelValues(route)
	return func(w http.ResponseWriter, r *http.Request) {
		v, p, s, wait := c.guard.check(r)
		switch {
		case v == throttled:
			c.guard.limiter.Refuse(w, wait)
			return
		case v == denied:
			c.metrics.unauthorized.Inc()
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		case !p.Can(need):
			c.metrics.forbidden.WithLabelValues(route).Inc()
			httpserver.WriteError(w, http.StatusForbidden, fmt.Sprintf("%s (role %s) may not see the console: it needs the %s role; log in with another token at /login", p.Name, p.Role, need))
			return
		}
		next(w, withPrincipal(r, p, s))
	}
}

func (c *Component) setSession(w http.ResponseWriter, r *http.Request, value string) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: value, Path: "/", MaxAge: int(c.config.SessionLifetime.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
}

// safeNext keeps a post-login redirect on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

// loginBodyLimit bounds the login form: a token and a path.
const loginBodyLimit = 4096

// serveLogin is the login form (GET) and its submission (POST). GET with
// ?token= logs in at once: that is the URL `wormsign run` prints. Any
// token of http.token or http.tokens logs in; the session remembers its
// name and role. Token checks are throttled per address; the POST must
// come from this origin.
func (c *Component) serveLogin(w http.ResponseWriter, r *http.Request) {
	token := ""
	switch r.Method {
	case http.MethodGet:
		token = r.URL.Query().Get("token")
		if token == "" {
			c.servePage(w, "login.html", http.StatusOK)
			return
		}
	case http.MethodPost:
		if err := httpserver.CheckCookieRequest(r, false); err != nil {
			c.metrics.crossOrigin.Inc()
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, loginBodyLimit)
		if err := r.ParseForm(); err != nil {
			if httpserver.BodyTooLarge(err) {
				writeError(w, http.StatusRequestEntityTooLarge, httpserver.TooLargeMessage(loginBodyLimit))
			} else {
				writeError(w, http.StatusBadRequest, "login form: "+err.Error())
			}
			return
		}
		token = r.PostFormValue("token")
	default:
		writeError(w, http.StatusMethodNotAllowed, "use GET or POST")
		return
	}
	next := safeNext(r.FormValue("next"))
	if wait := c.guard.limiter.Wait(r); wait > 0 {
		c.guard.limiter.Refuse(w, wait)
		return
	}
	cr := c.guard.byToken(token)
	if cr == nil {
		c.metrics.unauthorized.Inc()
		c.guard.limiter.Failed(r, "login")
		http.Redirect(w, r, "/login?failed=1&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	}
	c.guard.limiter.Succeeded(r)
	// The session this browser had ends: one login, one session.
	if ck, err := r.Cookie(sessionCookie); err == nil {
		if old, ok := c.guard.session(ck.Value); ok {
			c.guard.revoke(old)
		}
	}
	s, value := c.guard.issue(cr, c.config.SessionLifetime)
	c.setSession(w, r, value)
	c.deps.Logger.Info("console login", "name", s.Name, "role", s.Role.String())
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// serveLogout ends the session: this instance refuses its cookie from
// now on, whoever sends it, and the browser's copy is cleared.
func (c *Component) serveLogout(w http.ResponseWriter, r *http.Request) {
	if err := httpserver.CheckCookieRequest(r, false); err != nil {
		c.metrics.crossOrigin.Inc()
		writeError(w, http.StatusForbidden, err.Error())
		return
	}
	if ck, err := r.Cookie(sessionCookie); err == nil {
		if s, ok := c.guard.session(ck.Value); ok {
			c.guard.revoke(s)
			c.deps.Logger.Info("console logout", "name", s.Name)
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// serveSession is GET /api/v1/session: who the request authenticated as,
// {"name": ..., "role": ...}; the console hides the forms its role cannot
// use.
func (c *Component) serveSession(w http.ResponseWriter, r *http.Request) {
	if err := params(r); err != nil {
		c.fail(w, err)
		return
	}
	p, _ := httpserver.PrincipalFrom(r.Context())
	writeJSON(w, http.StatusOK, p)
}

// byHint explains a body refused for its "by": who acts is the name the
// request authenticated as.
func byHint(err error) string {
	if err != nil && strings.Contains(err.Error(), `unknown field "by"`) {
		return `; "by" is not accepted: who acts is the name of the token (http.token is "admin", http.tokens name theirs)`
	}
	return ""
}
