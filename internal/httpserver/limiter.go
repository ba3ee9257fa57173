package httpserver

import (
	"hash/maphash"
	"math"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// AuthLimiter slows down guessing of http.token. Every failed token check
// (a wrong Bearer token, a wrong token in the login form) is counted
// against the client's address (IPv6 by /64) and against the whole
// server. An address gets FreeFailures failures; after each further one it
// must wait Base, 2×Base, 4×Base ... up to Max before its next check is
// even made: meanwhile it is answered 429 with Retry-After, whatever token
// it sends. A success clears the address; an address without a failure
// for Forget is forgotten. When the server's failures exceed GlobalBurst
// plus GlobalRate per second (many addresses guessing together), every
// address with a recent failure waits for the budget to refill, while an
// address that never failed is still checked, so that the NOC gets in
// during an attack. The per-address table holds at most MaxAddresses; an
// address that fails while it is full of recent failures gets no backoff
// of its own, but is marked in a fixed table of overflowBuckets buckets
// (by a keyed hash of its key, for Forget), and an address whose bucket is
// marked waits for the server-wide budget as every address that failed:
// the budget holds every address, and one that never failed waits only if
// it shares a bucket with one that did. Client addresses are the TCP
// peer's: behind a reverse proxy, every client shares the proxy's address.
type AuthLimiter struct {
	FreeFailures int
	Base, Max    time.Duration
	Forget       time.Duration
	GlobalBurst  float64
	GlobalRate   float64 // failures per second
	MaxAddresses int
	Now          func() time.Time

	mu      sync.Mutex
	clients map[netip.Prefix]*failures
	tokens  float64 // global budget left
	refill  time.Time
	// overflow marks, by bucket, when an address the table had no room
	// for last failed (UnixNano; 0: never); allocated at the first such
	// failure.
	overflow []int64
	seed     maphash.Seed

	failed    *prometheus.CounterVec
	throttled prometheus.Counter
}

type failures struct {
	n     int
	last  time.Time
	until time.Time
}

// NewAuthLimiter returns a limiter with the documented defaults (5 free
// failures, waits from 1 s doubling to 5 min, forgotten after 15 min; 100
// failures server-wide then 1 per second), its metrics on reg (nil: not
// registered).
func NewAuthLimiter(reg prometheus.Registerer) *AuthLimiter {
	l := &AuthLimiter{
		FreeFailures: 5, Base: time.Second, Max: 5 * time.Minute, Forget: 15 * time.Minute,
		GlobalBurst: 100, GlobalRate: 1, MaxAddresses: 100000, Now: time.Now,
		clients: map[netip.Prefix]*failures{}, tokens: 100, seed: maphash.MakeSeed(),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wormsign_http_auth_failures_total",
			Help: "Failed token checks (a wrong Bearer token or a wrong token in the login form), by where the token came.",
		}, []string{"via"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wormsign_http_auth_throttled_total",
			Help: "Requests answered 429 because their address failed too many token checks.",
		}),
	}
	l.failed.WithLabelValues("bearer")
	l.failed.WithLabelValues("login")
	if reg != nil {
		reg.MustRegister(l.failed, l.throttled)
	}
	return l
}

func clientKey(r *http.Request) netip.Prefix {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}
	}
	a = a.Unmap().WithZone("")
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

func (l *AuthLimiter) refillLocked(now time.Time) {
	if !l.refill.IsZero() {
		l.tokens = math.Min(l.GlobalBurst, l.tokens+now.Sub(l.refill).Seconds()*l.GlobalRate)
	}
	l.refill = now
}

// Wait is how long r's client must wait before its token is checked; 0:
// check it now.
func (l *AuthLimiter) Wait(r *http.Request) time.Duration {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.Now()
	key := clientKey(r)
	f := l.clients[key]
	var wait time.Duration
	switch {
	case f != nil && now.Sub(f.last) > l.Forget:
		delete(l.clients, key)
		f = nil
		fallthrough
	case f == nil:
		// Untracked: it waits for the budget only if it failed while
		// the table had no room for it (or shares its bucket).
		if !l.overflowedLocked(key, now) {
			return 0
		}
	default:
		wait = f.until.Sub(now)
	}
	l.refillLocked(now)
	if l.tokens < 1 && l.GlobalRate > 0 {
		wait = max(wait, time.Duration((1-l.tokens)/l.GlobalRate*float64(time.Second)))
	}
	return max(wait, 0)
}

// Failed records a failed token check of r's client; via is "bearer" or
// "login".
func (l *AuthLimiter) Failed(r *http.Request, via string) {
	if l == nil {
		return
	}
	l.failed.WithLabelValues(via).Inc()
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.Now()
	l.refillLocked(now)
	l.tokens = math.Max(l.tokens-1, 0)
	key := clientKey(r)
	f := l.clients[key]
	if f == nil || now.Sub(f.last) > l.Forget {
		if len(l.clients) >= l.MaxAddresses {
			l.sweepLocked(now)
		}
		if len(l.clients) >= l.MaxAddresses {
			// Full of addresses that failed recently: this one is
			// held by the global budget only.
			if l.overflow == nil {
				l.overflow = make([]int64, overflowBuckets)
			}
			l.overflow[l.bucket(key)] = now.UnixNano()
			return
		}
		f = &failures{}
		l.clients[key] = f
	}
	f.n++
	f.last = now
	if extra := f.n - l.FreeFailures; extra > 0 {
		wait := l.Max
		if extra <= 30 {
			wait = min(l.Base<<(extra-1), l.Max)
		}
		f.until = now.Add(wait)
	}
}

// overflowBuckets is the size of the table of addresses that failed while
// the per-address table was full: 512 KiB once allocated.
const overflowBuckets = 1 << 16

func (l *AuthLimiter) bucket(key netip.Prefix) int {
	b, _ := key.MarshalBinary()
	return int(maphash.Bytes(l.seed, b) % overflowBuckets)
}

// overflowedLocked tells whether key's bucket holds a failure within
// Forget.
func (l *AuthLimiter) overflowedLocked(key netip.Prefix, now time.Time) bool {
	if l.overflow == nil {
		return false
	}
	at := l.overflow[l.bucket(key)]
	return at != 0 && now.Sub(time.Unix(0, at)) <= l.Forget
}

func (l *AuthLimiter) sweepLocked(now time.Time) {
	for k, f := range l.clients {
		if now.Sub(f.last) > l.Forget {
			delete(l.clients, k)
		}
	}
}

// Succeeded clears r's client's failures.
func (l *AuthLimiter) Succeeded(r *http.Request) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.clients, clientKey(r))
}

// Refuse answers 429 in JSON with Retry-After and counts it.
func (l *AuthLimiter) Refuse(w http.ResponseWriter, wait time.Duration) {
	if l != nil {
		l.throttled.Inc()
	}
	SetRetryAfter(w, wait)
	Error(w, http.StatusTooManyRequests, "too many failed token checks from this address: retry after %d s", max(1, int(math.Ceil(wait.Seconds()))))
}
