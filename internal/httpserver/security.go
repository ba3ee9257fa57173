package httpserver

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
)

// ContentSecurityPolicy is the console's policy: its pages load one script
// and one style sheet from /static/, with no inline code, and may not be
// framed.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// SecurityHeaders sets the console's headers on every response of next:
// the policy above, frame denial, no MIME sniffing, no referrer. With
// noStore every response is also kept out of caches (the API's and the
// authenticated pages' are anyway).
func SecurityHeaders(next http.Handler, noStore bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		if noStore {
			h.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

// LimitBodies bounds every request body of next to max bytes; a handler
// reading past it gets an *http.MaxBytesError (see BodyTooLarge).
func LimitBodies(next http.Handler, max int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(w, r.Body, max)
		}
		next.ServeHTTP(w, r)
	})
}

// BodyTooLarge tells whether err comes from reading past a body's limit.
func BodyTooLarge(err error) bool {
	var mb *http.MaxBytesError
	return errors.As(err, &mb)
}

// TooLargeMessage is the error message of a 413.
func TooLargeMessage(limit int64) string {
	return fmt.Sprintf("request body larger than %d bytes", limit)
}

// crossOrigin refuses unsafe requests a browser sends from another origin
// (Sec-Fetch-Site, else Origin against Host). Requests without either
// header come from no browser, or from one too old for a console that
// needs fetch; they pass here, and the API's JSON-only rule stops their
// forms.
var crossOrigin = http.NewCrossOriginProtection()

// CheckCookieRequest is the CSRF rule for a state-changing request that a
// cookie, not an Authorization header, authenticates (or that sets or
// clears the cookie: login, logout). It returns nil for safe methods and
// for requests with an Authorization header; otherwise an error when a
// browser says the request comes from another origin, or, with wantJSON,
// when the body is not declared application/json (a cross-site form
// cannot send that without a CORS preflight, which this server never
// grants).
func CheckCookieRequest(r *http.Request, wantJSON bool) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	if r.Header.Get("Authorization") != "" {
		return nil
	}
	if err := crossOrigin.Check(r); err != nil {
		return errors.New("cross-origin request refused: a browser's cookie authenticates only same-origin requests; send Authorization: Bearer <http.token> from scripts")
	}
	if wantJSON {
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
			return errors.New("with the console's cookie, send JSON (Content-Type: application/json)")
		}
	}
	return nil
}
