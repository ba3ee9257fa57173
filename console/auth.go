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

func (c *Component) sessionValue() string { return sessionValue(c.deps.Token) }

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

// authorized tells whether r carries the token (Authorization: Bearer) or
// the session cookie.
func (c *Component) authorized(r *http.Request) bool { return Authorizer(c.deps.Token)(r) }

// Authorizer checks requests as the console does: the token in
// Authorization: Bearer, or the session cookie its login form sets. Other
// APIs on the same server (the block list) use it, so that one login
// serves them all.
func Authorizer(token string) func(*http.Request) bool {
	session := sessionValue(token)
	return func(r *http.Request) bool {
		if h := r.Header.Get("Authorization"); h != "" {
			scheme, t, ok := strings.Cut(h, " ")
			return ok && strings.EqualFold(scheme, "Bearer") && equal(strings.TrimSpace(t), token)
		}
		if ck, err := r.Cookie(sessionCookie); err == nil {
			return equal(ck.Value, session)
		}
		return false
	}
}

// requireAPI answers 401 in JSON to a request without the token.
func (c *Component) requireAPI(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !c.authorized(r) {
			c.metrics.unauthorized.Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="wormsign"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong token: send Authorization: Bearer <http.token> or log in to the console")
			return
		}
		next(w, r)
	}
}

// requirePage sends a browser without the session to the login form.
func (c *Component) requirePage(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !c.authorized(r) {
			c.metrics.unauthorized.Inc()
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		next(w, r)
	}
}

func (c *Component) setSession(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: c.sessionValue(), Path: "/",
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

// serveLogin is the login form (GET) and its submission (POST). GET with
// ?token= logs in at once: that is the URL `wormsign run` prints.
func (c *Component) serveLogin(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.FormValue("next"))
	token := ""
	switch r.Method {
	case http.MethodGet:
		token = r.URL.Query().Get("token")
		if token == "" {
			c.servePage(w, "login.html", http.StatusOK)
			return
		}
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 4096)
		token = r.PostFormValue("token")
	default:
		writeError(w, http.StatusMethodNotAllowed, "use GET or POST")
		return
	}
	if !equal(token, c.deps.Token) {
		c.metrics.unauthorized.Inc()
		http.Redirect(w, r, "/login?failed=1&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	}
	c.setSession(w, r)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Component) serveLogout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
