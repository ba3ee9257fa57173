package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/wormsign/wormsign/internal/httpserver"
)

// sessionCookie is the console's login cookie. Its value is an HMAC of a
// fixed text keyed with the token, so the cookie never carries the token
// itself and changes when the token does.
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

func sessionValue(token string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("wormsign console session v1"))
	return hex.EncodeToString(m.Sum(nil))
}

func equal(a, b string) bool {
	// ConstantTimeCompare returns early on a length difference only; the
	// token's length is no secret worth hiding.
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// verdict of a request's credentials.
type verdict int

const (
	allowed   verdict = iota
	denied            // no credentials, or wrong ones
	throttled         // its address failed too many token checks: 429
)

// guard checks the token (Authorization: Bearer) or the session cookie its
// login form sets, and throttles failed token checks with the server's
// limiter. A wrong cookie is no guess at the token (it is an HMAC of it),
// so only tokens count as failures.
type guard struct {
	token, session string
	limiter        *httpserver.AuthLimiter
}

func newGuard(token string, limiter *httpserver.AuthLimiter) *guard {
	return &guard{token: token, session: sessionValue(token), limiter: limiter}
}

func (g *guard) check(r *http.Request) (verdict, time.Duration) {
	if h := r.Header.Get("Authorization"); h != "" {
		if wait := g.limiter.Wait(r); wait > 0 {
			return throttled, wait
		}
		scheme, t, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") && equal(strings.TrimSpace(t), g.token) {
			g.limiter.Succeeded(r)
			return allowed, 0
		}
		g.limiter.Failed(r, "bearer")
		return denied, 0
	}
	if ck, err := r.Cookie(sessionCookie); err == nil && equal(ck.Value, g.session) {
		return allowed, 0
	}
	return denied, 0
}

// authorize answers a request without valid credentials: 401 (or 429) in
// JSON, and false.
func (g *guard) authorize(w http.ResponseWriter, r *http.Request) bool {
	switch v, wait := g.check(r); v {
	case allowed:
		return true
	case throttled:
		g.limiter.Refuse(w, wait)
	default:
		w.Header().Set("WWW-Authenticate", `Bearer realm="wormsign"`)
		writeError(w, http.StatusUnauthorized, "missing or wrong token: send Authorization: Bearer <http.token> or log in to the console")
	}
	return false
}

// Authorizer checks requests as the console does: the token in
// Authorization: Bearer, or the session cookie its login form sets, with
// failed token checks throttled by limiter (nil: not throttled). Other APIs
// on the same server (the block list) use it, so that one login serves
// them all. It returns false when it has answered the request: 401, or
// 429 while the client's address must wait.
func Authorizer(token string, limiter *httpserver.AuthLimiter) func(http.ResponseWriter, *http.Request) bool {
	return newGuard(token, limiter).authorize
}

// requireAPI answers 401 in JSON to a request without the token, and
// applies the CSRF rule to cookie-authenticated POSTs.
func (c *Component) requireAPI(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !c.guard.authorize(w, r) {
			c.metrics.unauthorized.Inc()
			return
		}
		if err := httpserver.CheckCookieRequest(r, true); err != nil {
			c.metrics.crossOrigin.Inc()
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		next(w, r)
	}
}

// requirePage sends a browser without the session to the login form.
func (c *Component) requirePage(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch v, wait := c.guard.check(r); v {
		case throttled:
			c.guard.limiter.Refuse(w, wait)
			return
		case denied:
			c.metrics.unauthorized.Inc()
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		next(w, r)
	}
}

func (c *Component) setSession(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: c.guard.session, Path: "/",
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
// ?token= logs in at once: that is the URL `wormsign run` prints. Token
// checks are throttled per address; the POST must come from this origin.
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
	if !equal(token, c.deps.Token) {
		c.metrics.unauthorized.Inc()
		c.guard.limiter.Failed(r, "login")
		http.Redirect(w, r, "/login?failed=1&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	}
	c.guard.limiter.Succeeded(r)
	c.setSession(w, r)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Component) serveLogout(w http.ResponseWriter, r *http.Request) {
	if err := httpserver.CheckCookieRequest(r, false); err != nil {
		c.metrics.crossOrigin.Inc()
		writeError(w, http.StatusForbidden, err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
