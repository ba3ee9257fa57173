package console

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// hub hands each alert event to the clients of the stream and keeps the
// last StreamBacklog events for clients that reconnect with Last-Event-ID.
// Event ids are this instance's sequence numbers, 1, 2, ...; a client that
// reconnects to another instance, or after a restart, reloads what it shows
// from the API instead (the console does this on every reconnect).
type hub struct {
	mu      sync.Mutex
	seq     uint64
	backlog []streamEvent // ring, oldest first once full
	max     int
	clients map[chan streamEvent]struct{}
	dropped func()
}

type streamEvent struct {
	id   uint64
	data []byte
}

func newHub(max int, dropped func()) *hub {
	return &hub{max: max, clients: map[chan streamEvent]struct{}{}, dropped: dropped}
}

// publish assigns the next id to an alert's JSON and sends it.
func (h *hub) publish(data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	ev := streamEvent{id: h.seq, data: data}
	if len(h.backlog) == h.max {
		copy(h.backlog, h.backlog[1:])
		h.backlog = h.backlog[:h.max-1]
	}
	h.backlog = append(h.backlog, ev)
	for ch := range h.clients {
		select {
		case ch <- ev:
		default:
			// Too slow: disconnect; it resumes with Last-Event-ID.
			delete(h.clients, ch)
			close(ch)
			h.dropped()
		}
	}
}

// subscribe returns the events after lastID still in the backlog and a
// channel of those to come.
func (h *hub) subscribe(lastID uint64, resume bool) ([]streamEvent, chan streamEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var replay []streamEvent
	if resume {
		for _, ev := range h.backlog {
			if ev.id > lastID {
				replay = append(replay, ev)
			}
		}
	}
	ch := make(chan streamEvent, 256)
	h.clients[ch] = struct{}{}
	return replay, ch
}

func (h *hub) unsubscribe(ch chan streamEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[ch]; ok {
		delete(h.clients, ch)
		close(ch)
	}
}

// closeAll ends every client's stream (Stop).
func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.clients {
		delete(h.clients, ch)
		close(ch)
	}
}

// streamWriteTimeout bounds each write of the alert stream (the server's
// http.write_timeout would end every stream after that long).
const streamWriteTimeout = 30 * time.Second

// serveStream is GET /api/v1/alerts/stream: Server-Sent Events, one
// `data: <alert JSON>` per alert event with its `id:`, a comment line as
// heartbeat.
func (c *Component) serveStream(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming not supported")
		return
	}
	if err := params(r, "last_event_id"); err != nil {
		c.fail(w, err)
		return
	}
	var lastID uint64
	resume := false
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("last_event_id")
	}
	if last = strings.TrimSpace(last); last != "" {
		id, err := strconv.ParseUint(last, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("Last-Event-ID: %q is not an event id of this stream", last))
			return
		}
		lastID, resume = id, true
	}
	replay, ch := c.hub.subscribe(lastID, resume)
	defer c.hub.unsubscribe(ch)
	c.metrics.streamClients.Inc()
	defer c.metrics.streamClients.Dec()

	// The server's read and write timeouts would end the stream: it has
	// no read deadline, and each write gets streamWriteTimeout, so that a
	// client that stops reading is still let go.
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Time{}); err != nil {
		c.deps.Logger.Debug("cannot clear the stream's read deadline", "error", err)
	}
	flush := func() {
		rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		flusher.Flush()
	}
	rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 3000\n: wormsign alert stream\n\n")
	for _, ev := range replay {
		writeEvent(w, ev)
	}
	flush()
	tick := time.NewTicker(c.config.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			writeEvent(w, ev)
			flush()
		case <-tick.C:
			if s := sessionFrom(r.Context()); s != nil && !c.guard.valid(s) {
				return // logged out, or expired: the stream ends too
			}
			rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			fmt.Fprint(w, ": heartbeat\n\n")
			flush()
		case <-r.Context().Done():
			return
		case <-c.stopping:
			return
		}
	}
}

func writeEvent(w http.ResponseWriter, ev streamEvent) {
	fmt.Fprintf(w, "id: %d\ndata: %s\n\n", ev.id, ev.data)
}
