package remediation

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"html/template"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

//go:embed portal/*
var portalFiles embed.FS

var portalPage = template.Must(template.New("notice.html").Funcs(template.FuncMap{"inc": func(i int) int { return i + 1 }}).
	ParseFS(portalFiles, "portal/notice.html"))

// portalData is what the notice page shows.
type portalData struct {
	// Found: the connection belongs to a customer with a case.
	Found    bool
	Case     Case
	Evidence Evidence
	Desk     DeskConfiguration
	// Walled: the page offers the self-release button; Left is how many
	// self-releases remain, Token signs the form.
	Walled bool
	Left   int
	Token  string
	// Message is the outcome of a POST: released, or refused and why.
	Message  string
	Released bool
	Refused  bool
}

// The notice server's paths; any other path shows the notice page, since a
// walled customer's browser asks for whatever it was going to.
const (
	releasePath = "/wormsign/release"
	stylePath   = "/wormsign/notice.css"
	captivePath = "/captive-portal/api"
)

func randomKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// formToken binds the release form to the case: a POST must come from the
// page the customer saw, for its own case.
func (c *Component) formToken(id string) string {
	m := hmac.New(sha256.New, c.portalKey)
	m.Write([]byte(id))
	return hex.EncodeToString(m.Sum(nil))
}

// PortalHandler is the notice server: the page a walled customer's HTTP
// lands on (through the edge router's DNAT), its self-release, and the
// RFC 8908 captive-portal API. It trusts nothing but the connection's
// source address: the customer is whoever identity says holds it, or the
// subscriber it is.
func (c *Component) PortalHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+stylePath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
		http.ServeFileFS(w, r, portalFiles, "portal/notice.css")
	})
	mux.HandleFunc("GET "+captivePath, c.serveCaptive)
	mux.HandleFunc("POST "+releasePath, c.serveSelfRelease)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			c.metrics.portalRequests.WithLabelValues("refused").Inc()
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		c.servePage(w, r, portalData{}, http.StatusOK)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		r.Body = http.MaxBytesReader(w, r.Body, 4096)
		mux.ServeHTTP(w, r)
	})
}

// caseOf finds the case of the connection's source.
func (c *Component) caseOf(r *http.Request) (Case, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return Case{}, false
	}
	addr := ap.Addr().Unmap()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deps.Identity != nil {
		if res, ok := c.deps.Identity.Resolve(addr, ap.Port(), c.deps.Now().UnixMilli()); ok && res.Customer != "" {
			if cs, ok := c.book.OfCustomer(res.Customer); ok {
				return cs, true
			}
		}
	}
	sub := c.deps.Subscribers.Label(addr)
	if cs, ok := c.book.OfCustomer(sub); ok {
		return cs, true
	}
	return c.book.OfSubscriber(sub)
}

func (c *Component) servePage(w http.ResponseWriter, r *http.Request, d portalData, status int) {
	cs, ok := c.caseOf(r)
	if ok && cs.State != StateClosed && cs.State != StateFalsePositive {
		d.Found, d.Case, d.Evidence = true, cs, evidenceOf(cs.Alert)
		c.mu.Lock()
		d.Left = c.book.SelfReleasesLeft(&cs)
		c.mu.Unlock()
		d.Walled = cs.State == StateWalled
		d.Token = c.formToken(cs.ID)
	}
	d.Desk = c.config.Desk
	switch {
	case d.Message != "":
	case d.Found:
		c.metrics.portalRequests.WithLabelValues("page").Inc()
	default:
		c.metrics.portalRequests.WithLabelValues("no_case").Inc()
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	if err := portalPage.Execute(w, d); err != nil {
		c.deps.Logger.Warn("notice page", "error", err)
	}
}

// serveSelfRelease is the button "I have cleaned my computer".
func (c *Component) serveSelfRelease(w http.ResponseWriter, r *http.Request) {
	cs, ok := c.caseOf(r)
	token := r.PostFormValue("token")
	if !ok || !hmac.Equal([]byte(token), []byte(c.formToken(cs.ID))) {
		c.metrics.portalRequests.WithLabelValues("refused").Inc()
		c.servePage(w, r, portalData{Message: "This form does not belong to this connection's notice. Reload the page and try again.", Refused: true}, http.StatusForbidden)
		return
	}
	err := c.act(r.Context(), func(b *Casebook, now time.Time) (Result, error) { return b.SelfRelease(cs.ID, now) })
	switch {
	case err == nil:
		c.metrics.portalRequests.WithLabelValues("release").Inc()
		c.servePage(w, r, portalData{Released: true,
			Message: "Thank you. Your connection is released; it can take a minute or two until everything works again. If the problem comes back, your connection will be restricted again, and more strictly."}, http.StatusOK)
	case errors.Is(err, ErrSelfReleaseLimit):
		c.metrics.portalRequests.WithLabelValues("release_denied").Inc()
		c.servePage(w, r, portalData{Refused: true, Message: "You have released your connection yourself " + times(c.config.SelfReleaseMax) +
			" recently, and the problem came back. Only " + c.config.Desk.Name + " can release it now: " + contactLine(c.config.Desk) + "."}, http.StatusForbidden)
	default:
		c.metrics.portalRequests.WithLabelValues("refused").Inc()
		c.servePage(w, r, portalData{Refused: true, Message: "Your connection cannot be released from here: " + err.Error() + "."}, http.StatusConflict)
	}
}

func times(n int) string {
	if n == 1 {
		return "once"
	}
	return strconv.Itoa(n) + " times"
}

func contactLine(d DeskConfiguration) string {
	var parts []string
	if d.Phone != "" {
		parts = append(parts, "call "+d.Phone)
	}
	if d.Email != "" {
		parts = append(parts, "write to "+d.Email)
	}
	if len(parts) == 0 {
		return "contact us"
	}
	return strings.Join(parts, " or ")
}

// serveCaptive answers the RFC 8908 captive-portal API: captive while the
// connection's customer is walled, with the notice page's URL.
func (c *Component) serveCaptive(w http.ResponseWriter, r *http.Request) {
	c.metrics.portalRequests.WithLabelValues("captive_api").Inc()
	cs, ok := c.caseOf(r)
	captive := ok && cs.State == StateWalled
	body := map[string]any{"captive": captive}
	if captive {
		body["user-portal-url"] = c.portalURL(r)
	}
	w.Header().Set("Content-Type", "application/captive+json")
	json.NewEncoder(w).Encode(body)
}

// portalURL is the notice page as a browser reaches it: desk.portal_url,
// or this server.
func (c *Component) portalURL(r *http.Request) string {
	if c.config.Desk.PortalURL != "" {
		return c.config.Desk.PortalURL
	}
	host := r.Host
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		host = la.String()
	}
	return "http://" + host + "/"
}
