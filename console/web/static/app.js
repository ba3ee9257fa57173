"use strict";
// The wormsign console: one script, no dependencies, no inline code (the
// pages are served with a Content-Security-Policy that forbids it). It
// renders the page the path names from the JSON API and keeps the incident
// board live through the alert stream (Server-Sent Events).
(function () {
  const KINDS = ["smtp_fanout", "dst_entropy", "darknet", "relay_abuse", "outbound_flood"];
  const main = document.getElementById("main");

  // el builds an element; strings become text nodes, never HTML.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  async function api(path, opts) {
    const r = await fetch(path, Object.assign({ credentials: "same-origin", headers: { "Accept": "application/json" } }, opts || {}));
    if (r.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("not logged in");
    }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
    return body;
  }

  // Who is logged in ({name, role}, from the session or the token): the
  // forms a role cannot use are not shown (the API refuses them anyway).
  const ROLES = ["export", "viewer", "operator", "admin"];
  let me = null;
  const session = api("/api/v1/session").then(function (s) {
    me = s;
    const shown = document.getElementById("me");
    if (shown) shown.textContent = s.name + " (" + s.role + ")";
    return s;
  }).catch(() => null);
  function can(role) { return !!me && ROLES.indexOf(me.role) >= ROLES.indexOf(role); }

  // Times: UTC text, relative age beside it.
  function utc(s) {
    const d = new Date(s);
    return isNaN(d) ? "" : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }
  function age(s) {
    const secs = Math.max(0, (Date.now() - new Date(s).getTime()) / 1000);
    if (secs < 60) return Math.floor(secs) + " s ago";
    if (secs < 3600) return Math.floor(secs / 60) + " min ago";
    if (secs < 86400) return Math.floor(secs / 3600) + " h " + Math.floor((secs % 3600) / 60) + " min ago";
    return Math.floor(secs / 86400) + " d ago";
  }
  function timeCell(s) {
    return el("time", { datetime: s, title: utc(s), class: "age", "data-age": s }, age(s));
  }
  // Numbers keep their units on their line (no-break spaces).
  function pct(x) { return (Math.round((x || 0) * 1000) / 10) + "\u00a0%"; }
  function num(x) { return (x === undefined || x === null) ? "" : Number(x).toLocaleString("en-US"); }
  function score(x) { return (Math.round((x || 0) * 100) / 100).toFixed(2); }
  function shortID(id) { return id.length > 12 ? id.slice(0, 12) + "…" : id; }
  // si writes a quantity with k, M, G, T (powers of 1000) and its unit:
  // 512 B, 48.2 MB, 1.2 Gbit/s.
  function si(x, unit) {
    x = Number(x) || 0;
    const pre = ["", "k", "M", "G", "T", "P"];
    let i = 0;
    while (Math.abs(x) >= 1000 && i < pre.length - 1) { x /= 1000; i++; }
    const v = i === 0 ? String(Math.round(x)) : (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1).replace(/\.0$/, ""));
    return unit ? v + "\u00a0" + pre[i] + unit : v + pre[i];
  }
  function odds(x) {
    x = Number(x) || 0;
    return x < 1e6 ? num(Math.round(x)) : x < 1e15 ? si(x, "") : x.toExponential(1).replace("e+", "e");
  }
  function bytes(x) { return si(x, "B"); }
  function bits(x) { return si(x, "bit/s"); }
  function rate(x) { return Number(x) >= 100000 ? si(x, "") : num(Math.round(Number(x) || 0)); }
  function list(xs, max) {
    xs = xs || [];
    return xs.join(", ") + (max && xs.length >= max ? ", …" : "");
  }
  // darkPorts names the ports of darknet evidence: ICMP ones are
  // type<<8|code, told apart only when ICMP is all there was.
  function darkPorts(d) {
    const ports = d.ports || [], protos = d.protocols || [];
    if (!ports.length) return "";
    if (protos.length === 1 && protos[0] === "icmp") {
      return "ICMP " + ports.map((p) => "type " + (p >> 8) + "/code " + (p & 255)).join(", ");
    }
    return "ports " + list(ports, 16) + (protos.includes("icmp") ? " (ICMP ones as type×256+code)" : "");
  }
  function flowsToTarget(f) {
    return (f.protocol || "?") + (f.ports && f.ports.length ? "/" + f.ports.join(",") : "") + " → " + f.target;
  }
  // headline is the figure an incident of each kind is judged by: its
  // value, unit and what it means; what the board shows in its "Figure"
  // column and the incident page at the top.
  function headline(a) {
    const ev = a.evidence || {};
    switch (a.kind) {
      case "smtp_fanout":
        return { value: num(a.distinct_dsts), unit: "mail servers", title: "distinct TCP/25 destinations within " + (ev.window || "the window") };
      case "dst_entropy":
        if (ev.entropy) return { value: ev.entropy.dst_addr.toFixed(2), unit: "address entropy", title: "normalised entropy of destination addresses (1: every flow elsewhere)" };
        break;
      case "darknet":
        return { value: num(a.distinct_dsts), unit: "dark destinations", title: "distinct destinations in unused space and honeypots" };
      case "relay_abuse":
        if (ev.relay) return { value: num(ev.relay.connections), unit: "relay connections", title: "connections to the ISP's submission servers within " + (ev.window || "the window") };
        break;
      case "outbound_flood":
        if (ev.flood) return { value: rate(ev.flood.pps), unit: "pps", title: "packets per second toward " + ev.flood.target };
        break;
    }
    return { value: num(a.distinct_dsts), unit: "destinations", title: "distinct destinations" };
  }
  // brief is the rest of the evidence in a few words, for the board's rows.
  function brief(a) {
    const ev = a.evidence || {};
    switch (a.kind) {
      case "smtp_fanout": {
        const attempts = (ev.failed_attempts || 0) + (ev.completed_attempts || 0);
        const out = [pct(ev.failed_share) + " failed (" + num(ev.failed_attempts) + " of " + num(attempts) + ")"];
        if (ev.sequential) out.push("odds " + odds(ev.sequential.odds) + ":1");
        return out.join(" · ");
      }
      case "dst_entropy": {
        const e = ev.entropy;
        if (!e) return "";
        return "baseline " + e.baseline_dst_addr.toFixed(2) + " · port " + e.top_port + " in " + pct(e.top_port_share) + " · port entropy " + e.dst_port.toFixed(2);
      }
      case "darknet": {
        const d = ev.darknet;
        if (!d) return "";
        return [list(d.protocols), darkPorts(d)].filter((x) => x).join(" · ");
      }
      case "relay_abuse": {
        const r = ev.relay;
        if (!r) return "";
        return bytes(r.bytes) + " to " + num((r.relays || []).length) + " relay" + ((r.relays || []).length === 1 ? "" : "s") +
          (r.ports && r.ports.length ? " (port " + r.ports.join(", ") + ")" : "") +
          " · baseline " + num(Math.round(r.baseline_connections)) + "\u00a0±\u00a0" + num(Math.round(r.baseline_stddev));
      }
      case "outbound_flood": {
        const f = ev.flood;
        if (!f) return "";
        return flowsToTarget(f) + " · " + bits(f.bps) + " · answers " + pct(f.answer_ratio);
      }
    }
    return ev.trigger || "";
  }
  // figureCell is an incident's figure and, below it, the rest of its
  // evidence in a few words.
  function figureCell(a) {
    const h = headline(a), b = brief(a);
    return el("td", { class: "fig" }, el("span", { class: "figline", title: h.title }, el("b", {}, h.value), " ", el("span", { class: "unit" }, h.unit)),
      b ? el("div", { class: "brief" }, b) : null);
  }
  // customerOf is who the incident's subscriber was: subscriber_id, else
  // the customer its identity evidence names.
  function customerOf(a) {
    return a.subscriber_id || ((a.evidence || {}).identity || {}).customer || "";
  }
  function customerLink(id, cls) {
    return el("a", { href: "/customers/" + encodeURIComponent(id), class: "mono" + (cls ? " " + cls : "") }, id);
  }
  // A prefix's page is its address's: the subscriber page takes an
  // address of any prefix length.
  function addressLink(prefix) {
    const addr = prefix.replace(/\/\d+$/, "");
    return el("a", { href: "/subscribers/" + encodeURIComponent(addr), class: "mono" }, prefix);
  }
  // looksLikeAddress tells an address or prefix from a customer id; the
  // URL parser judges IPv6 (a MAC address is not one).
  function looksLikeAddress(s) {
    const parts = s.split("/");
    if (parts.length > 2 || (parts.length === 2 && !/^\d{1,3}$/.test(parts[1]))) return false;
    const a = parts[0];
    if (/^\d{1,3}(\.\d{1,3}){3}$/.test(a)) return a.split(".").every((x) => Number(x) <= 255);
    if (!a.includes(":")) return false;
    try { new URL("http://[" + a + "]/"); return true; } catch (e) { return false; }
  }
  const SOURCES = { radius: "RADIUS accounting", dhcp: "DHCP lease", cgnat: "CGNAT port block", static: "static map" };
  function sourceBadge(src) { return el("span", { class: "source source-" + src, title: SOURCES[src] || src }, src); }
  // until says how a holding ended: still held, ended (and why), expired.
  function until(h) {
    if (h.open) return el("span", { class: "badge badge-held" }, "held now");
    if (h.end) return [utc(h.end), h.end_reason ? el("span", { class: "muted small" }, " " + h.end_reason) : null];
    if (h.expires) return [utc(h.expires), el("span", { class: "muted small" }, " expired")];
    return "–";
  }
  function nasCell(h) {
    if (!h.nas && !h.nas_identifier) return "–";
    return h.nas_identifier ? [h.nas_identifier, h.nas ? el("span", { class: "muted small mono" }, " " + h.nas) : null] : el("span", { class: "mono" }, h.nas);
  }
  function holdingsFrom(from) {
    return ({ clickhouse: "ClickHouse subscriber_bindings (identity.retention)", memory: "this process's identity table (identity.keep)" }[from]) ||
      "no identity source here (identity: RADIUS, DHCP, CGNAT)";
  }
  // holdingsTable lists holdings; first names the holder (an address's
  // page) or the address (a customer's page).
  function holdingsTable(id, hs, first) {
    const head = first === "holder" ? "Held by" : "Address";
    return el("table", { id: id, class: "board holdings" },
      el("thead", {}, el("tr", {}, [head, first === "holder" ? "Prefix" : null, "Source", "Session", "NAS", "From", "Until"]
        .filter((h) => h).map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, hs.map((h) => el("tr", { class: h.open ? "held" : "" },
        first === "holder" ?
          el("td", {}, h.customer ? customerLink(h.customer) : el("span", {}, "inside ", el("a", { href: "/subscribers/" + encodeURIComponent(h.inside), class: "mono" }, h.inside),
            el("span", { class: "muted small" }, " ports " + h.port_lo + "–" + h.port_hi))) :
          el("td", {}, addressLink(h.prefix)),
        first === "holder" ? el("td", { class: "mono" }, h.prefix) : null,
        el("td", {}, sourceBadge(h.source)),
        el("td", { class: "mono small" }, h.session || "–"),
        el("td", {}, nasCell(h)),
        el("td", {}, utc(h.start)),
        el("td", {}, until(h))))));
  }
  function incidentsTable(id, incidents, withSubscriber) {
    return el("table", { class: "board", id: id },
      el("thead", {}, el("tr", {}, ["Kind", withSubscriber ? "Subscriber" : null, "Incident", "State", "Score", "First seen", "Evidence", "Ack"]
        .filter((h) => h).map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, incidents.map((a) => el("tr", { "data-id": a.id },
        el("td", {}, el("span", { class: "kind kind-" + a.kind }, a.kind)),
        withSubscriber ? el("td", { class: "mono" }, el("a", { href: "/subscribers/" + encodeURIComponent(a.subscriber_ip) }, a.subscriber_ip)) : null,
        el("td", { class: "mono" }, el("a", { href: "/incidents/" + encodeURIComponent(a.id) }, shortID(a.id))),
        el("td", {}, el("span", { class: "badge badge-" + a.state }, a.state)),
        el("td", { class: "num" }, score(a.score)),
        el("td", {}, utc(a.first_seen), " (", timeCell(a.first_seen), ")"),
        figureCell(a),
        el("td", {}, a.ack ? "✓ " + a.ack.by : "not acked")))));
  }
  function refreshAges() {
    for (const t of document.querySelectorAll("[data-age]")) t.textContent = age(t.getAttribute("data-age"));
    document.getElementById("clock").textContent = new Date().toISOString().slice(11, 19) + " UTC";
  }
  setInterval(refreshAges, 5000);

  function showError(err) {
    main.replaceChildren(el("p", { class: "error", role: "alert" }, "Cannot load: " + err.message));
  }

  // The alert stream, shared by the pages; the board listens to it.
  let listeners = [];
  let reconnects = 0;
  function connectStream() {
    const live = document.getElementById("live");
    const es = new EventSource("/api/v1/alerts/stream");
    es.onopen = function () {
      live.textContent = "live";
      live.className = "live on";
      // After a reconnect the stream resumes with Last-Event-ID, but a
      // restarted server has other ids: reload what the page shows.
      if (reconnects++ > 0) listeners.forEach((l) => l.reload && l.reload());
    };
    es.onerror = function () {
      live.textContent = "reconnecting…";
      live.className = "live off";
    };
    es.onmessage = function (m) {
      let a;
      try { a = JSON.parse(m.data); } catch (e) { return; }
      listeners.forEach((l) => l.alert && l.alert(a));
    };
  }

  // ---- Incident board ----
  function board() {
    document.title = "Incidents · wormsign";
    const q = new URLSearchParams(location.search);
    let state = q.get("state") || "open";
    let kind = q.get("kind") || "";
    const incidents = new Map();
    let counts = {};
    const fresh = new Set();
    // Paging: the API's cursor. cursors[i] starts page i (null: the first);
    // nextCursor is the one the page loaded last gave. The first page is
    // live (the stream's alerts go into it); the others are not, and count
    // what they miss.
    const PAGE = 50;
    let cursors = [null], page = 0, nextCursor = null, missed = 0, reloadTimer = null;

    const stateSel = el("select", { id: "state-filter", "aria-label": "State" },
      ["open", "resolved", "any"].map((s) => el("option", { value: s, selected: s === state }, s)));
    const kindSel = el("select", { id: "kind-filter", "aria-label": "Kind" },
      el("option", { value: "" }, "all kinds"),
      KINDS.map((k) => el("option", { value: k, selected: k === kind }, k)));
    const countsBox = el("div", { id: "counts", class: "counts", "aria-live": "polite" });
    const tbody = el("tbody");
    const table = el("table", { id: "board", class: "board" },
      el("caption", { class: "sr" }, "Incidents"),
      el("thead", {}, el("tr", {},
        ["Kind", "Subscriber", "Incident", "Score", "Age", "Trigger", "Evidence", "State", "Ack"]
          .map((h) => el("th", { scope: "col" }, h)))),
      tbody);
    const empty = el("p", { id: "board-empty", class: "muted" }, "No incidents.");
    const prevBtn = el("button", { type: "button", id: "page-prev", title: "previous page (p)" }, "‹ Previous");
    const nextBtn = el("button", { type: "button", id: "page-next", title: "next page (n)" }, "Next page ›");
    const firstBtn = el("button", { type: "button", id: "page-first", title: "the first page, live" }, "« First");
    const pageInfo = el("span", { id: "page-info", class: "page-info", "aria-live": "polite" });
    const pager = el("nav", { class: "pager", "aria-label": "Pages of incidents" }, firstBtn, prevBtn, pageInfo, nextBtn);
    const prevBtn2 = el("button", { type: "button" }, "‹ Previous"), nextBtn2 = el("button", { type: "button" }, "Next page ›");
    const pager2 = el("nav", { class: "pager pager-foot", "aria-label": "Pages of incidents, at the foot" }, prevBtn2, nextBtn2);
    main.replaceChildren(
      el("div", { class: "bar" },
        el("h1", {}, "Incidents"),
        el("label", {}, "State ", stateSel),
        el("label", {}, "Kind ", kindSel)),
      el("div", { class: "bar2" }, countsBox, pager),
      table, empty, pager2);

    function matches(a) {
      if (kind && a.kind !== kind) return false;
      if (state === "open") return a.state !== "resolved";
      if (state === "resolved") return a.state === "resolved";
      return true;
    }
    function order(a, b) {
      const oa = a.state !== "resolved", ob = b.state !== "resolved";
      if (oa !== ob) return oa ? -1 : 1;
      if (oa && a.score !== b.score) return b.score - a.score;
      if (!oa && a.window_end !== b.window_end) return a.window_end < b.window_end ? 1 : -1;
      return a.id < b.id ? -1 : 1;
    }
    function render() {
      // Live alerts can make the first page longer than a page: the rest
      // belongs to the next one (reloaded shortly).
      const list = [...incidents.values()].filter(matches).sort(order).slice(0, PAGE);
      tbody.replaceChildren(...list.map((a) => {
        const ev = a.evidence || {};
        const id = ev.identity;
        const cust = customerOf(a);
        return el("tr", { "data-id": a.id, "data-kind": a.kind, class: (fresh.has(a.id) ? "fresh " : "") + "state-" + a.state },
          el("td", {}, el("span", { class: "kind kind-" + a.kind }, a.kind)),
          el("td", { class: "mono" }, el("a", { href: "/subscribers/" + encodeURIComponent(a.subscriber_ip) }, a.subscriber_ip),
            cust ? el("div", { class: "small nowrap" }, customerLink(cust, "muted"),
              id && id.source ? [" ", sourceBadge(id.source)] : null,
              id && id.changed ? [" ", el("span", { class: "tag", title: "the customer's address changed within the window: " + (id.addresses || []).map((x) => x.address).join(", ") }, "moved")] : null) : null),
          el("td", { class: "mono" }, el("a", { href: "/incidents/" + encodeURIComponent(a.id), title: a.id }, shortID(a.id))),
          el("td", { class: "num" }, score(a.score)),
          el("td", { class: "nowrap" }, timeCell(a.first_seen)),
          el("td", { class: "trigger" }, ev.trigger || ""),
          figureCell(a),
          el("td", {}, el("span", { class: "badge badge-" + a.state }, a.state)),
          el("td", {}, a.ack ? el("span", { class: "acked", title: (a.ack.note || "") + " (" + utc(a.ack.at) + ")" }, "✓ " + a.ack.by) : el("span", { class: "unacked" }, "not acked")));
      }));
      empty.hidden = list.length > 0;
      const total = Object.values(counts).reduce((x, y) => x + y, 0);
      countsBox.replaceChildren(el("span", { class: "count" }, el("b", {}, String(total)), " " + state),
        ...Object.keys(counts).sort().map((k) => el("span", { class: "count kind-" + k }, el("b", {}, String(counts[k])), " " + k)));
      // The pager: where this page is among the incidents the filters
      // select.
      const of = kind ? (counts[kind] || 0) : total;
      const more = !!nextCursor || [...incidents.values()].filter(matches).length > PAGE;
      prevBtn.disabled = prevBtn2.disabled = page === 0;
      firstBtn.hidden = page < 2;
      nextBtn.disabled = nextBtn2.disabled = !nextCursor;
      pager.hidden = page === 0 && !more;
      pager2.hidden = pager.hidden || list.length < 15;
      pageInfo.replaceChildren(el("span", {}, list.length ? (page * PAGE + 1) + "–" + (page * PAGE + list.length) + " of " + num(Math.max(of, page * PAGE + list.length)) : "none here",
        " · page " + (page + 1),
        page > 0 ? el("span", { class: "muted" }, " · not live" + (missed ? ": " + missed + " new alert event" + (missed === 1 ? "" : "s") + " on the first page" : "")) : null));
    }
    async function load() {
      const p = new URLSearchParams({ state: state, limit: String(PAGE) });
      if (kind) p.set("kind", kind);
      if (cursors[page]) p.set("cursor", cursors[page]);
      try {
        const body = await api("/api/v1/incidents?" + p);
        incidents.clear();
        for (const i of body.incidents) incidents.set(i.id, i);
        counts = body.counts || {};
        nextCursor = body.next_cursor || null;
        missed = 0;
        render();
      } catch (e) { showError(e); }
    }
    async function go(to) {
      if (to > page) {
        // Live alerts pushed rows of the first page onto the next: its
        // cursor is stale until the first page reloads.
        if (page === 0 && (reloadTimer || [...incidents.values()].filter(matches).length > PAGE)) {
          clearTimeout(reloadTimer);
          reloadTimer = null;
          await load();
        }
        if (!nextCursor) return;
        cursors[to] = nextCursor;
      }
      page = Math.max(0, to);
      cursors.length = page + 1;
      nextCursor = null;
      load().then(() => table.scrollIntoView({ block: "nearest" }));
    }
    prevBtn.addEventListener("click", () => go(page - 1));
    prevBtn2.addEventListener("click", () => go(page - 1));
    nextBtn.addEventListener("click", () => go(page + 1));
    nextBtn2.addEventListener("click", () => go(page + 1));
    firstBtn.addEventListener("click", () => go(0));
    // count keeps the counts of the kinds right as the stream's events
    // come (until the next load): an open event is a new incident, a
    // resolved one leaves the open ones.
    function count(a, prev) {
      if (prev && prev.state === a.state) return;
      let d = 0;
      if (a.state === "open" && !prev) d = state === "resolved" ? 0 : 1;
      else if (a.state === "resolved") d = state === "open" ? -1 : state === "resolved" ? 1 : 0;
      if (!d) return;
      counts[a.kind] = Math.max(0, (counts[a.kind] || 0) + d);
      if (!counts[a.kind]) delete counts[a.kind];
    }
    function filter() {
      cursors = [null];
      page = 0;
      state = stateSel.value;
      kind = kindSel.value;
      const p = new URLSearchParams();
      if (state !== "open") p.set("state", state);
      if (kind) p.set("kind", kind);
      history.replaceState(null, "", "/" + (p.toString() ? "?" + p : ""));
      load();
    }
    stateSel.addEventListener("change", filter);
    kindSel.addEventListener("change", filter);
    const listener = {
      reload: load,
      pageKey: function (k) {
        if (k === "n") go(page + 1);
        else if (k === "p" && page > 0) go(page - 1);
      },
      alert: function (a) {
        if (page > 0) {
          missed++;
          render();
          return;
        }
        const prev = incidents.get(a.id);
        a.ack = prev ? prev.ack : null;
        count(a, prev);
        incidents.set(a.id, a);
        fresh.add(a.id);
        setTimeout(() => { fresh.delete(a.id); render(); }, 10000);
        render();
        // Where there are more pages, the first one reloads within a few
        // seconds for its cursor, counts and acks (at most every 3 s).
        if ((nextCursor || incidents.size > PAGE) && !reloadTimer) {
          reloadTimer = setTimeout(function () {
            reloadTimer = null;
            if (listeners.includes(listener) && page === 0) load();
          }, 3000);
        }
      },
    };
    listeners.push(listener);
    // Acks made elsewhere show up within a minute.
    refreshTimer = setInterval(load, 60000);
    load();
  }

  // ---- Incident page ----
  function evidenceWords(a) {
    const ev = a.evidence || {};
    const out = [];
    if (a.kind === "smtp_fanout") {
      out.push("Contacted " + num(a.distinct_dsts) + " distinct mail servers on TCP port 25 within " + (ev.window || "the window") +
        " (threshold " + num(ev.threshold) + ")" + (ev.saturated ? ", at least: the exact set is full" : "") + ".");
      if (ev.distinct_dsts_60m) out.push("Over the last 60 minutes: " + num(ev.distinct_dsts_60m) + " distinct TCP/25 destinations.");
      const attempts = (ev.failed_attempts || 0) + (ev.completed_attempts || 0);
      out.push(num(ev.failed_attempts) + " of " + num(attempts) + " SMTP attempts failed (" + pct(ev.failed_share) +
        "): servers that never answered or refused. Legitimate senders go through their provider's relay and rarely fail.");
      if (ev.sequential) {
        const s = ev.sequential;
        out.push("Sequential test: odds of infected against benign are " + num(Math.round(s.odds)) + " to 1 after " +
          num(s.first_contacts) + " first contacts (" + num(s.first_failed) + " failed); the decision bound is " +
          num(Math.round(s.bound)) + " to 1" + (s.decision ? ", decision: " + s.decision : "") + ".");
      }
    }
    if (ev.entropy) {
      const e = ev.entropy;
      out.push("Destination address entropy " + e.dst_addr.toFixed(2) + " against this subscriber's baseline of " +
        e.baseline_dst_addr.toFixed(2) + " (" + num(e.baseline_steps) + " minutes learnt); 1 means every flow went somewhere else.");
      out.push("Destination port entropy " + e.dst_port.toFixed(2) + " against a baseline of " + e.baseline_dst_port.toFixed(2) +
        "; " + num(e.distinct_ports) + " distinct ports, port " + e.top_port + " in " + pct(e.top_port_share) + " of flows.");
      if (ev.trigger === "worm_pattern") out.push("Many addresses on one port: the pattern of a scanning worm.");
      if (ev.trigger === "baseline_departure") out.push("A sharp departure from this subscriber's usual pattern.");
      if (e.thinning > 1) out.push("Records were thinned to 1/" + e.thinning + " of the destinations; counts are scaled back.");
    }
    if (a.kind === "darknet") {
      const d = ev.darknet || {};
      out.push("Contacted " + num(a.distinct_dsts) + " distinct dark destinations (unused space and honeypots: nobody legitimate goes there) within " +
        (ev.window || "the window") + " (a few are enough: threshold " + num(ev.threshold) + ")" + (ev.saturated ? ", at least: the exact set is full" : "") + ".");
      if ((d.protocols || []).length || (d.ports || []).length) {
        out.push("Protocols " + (list(d.protocols) || "–") + "; " + (darkPorts(d) || "no ports") + ".");
      }
      if (d.first_contact) out.push("First dark contact still in the window: " + utc(d.first_contact) + " (" + age(d.first_contact) + ").");
      out.push(num(a.flows) + " flows into dark space.");
    }
    if (a.kind === "relay_abuse" && ev.relay) {
      const r = ev.relay;
      out.push(num(r.connections) + " connections and " + bytes(r.bytes) + " (" + num(r.bytes) + " bytes) to the ISP's own submission servers " +
        list(r.relays) + (r.ports && r.ports.length ? " on port " + r.ports.join(", ") : "") + " within " + (ev.window || "the window") +
        " (ceiling " + num(ev.threshold) + " connections).");
      out.push(r.baseline_steps ? "This subscriber usually makes " + num(Math.round(r.baseline_connections)) + " ± " + num(Math.round(r.baseline_stddev)) +
        " connections in such a window (" + num(r.baseline_steps) + " minutes learnt)." : "No baseline learnt for this subscriber yet.");
      out.push("A spam bot with its owner's stolen SMTP AUTH credentials sends through the ISP's relays.");
    }
    if (a.kind === "outbound_flood" && ev.flood) {
      const f = ev.flood;
      out.push(rate(f.pps) + " packets/s and " + bits(f.bps) + " of " + (f.traffic || f.protocol) + " toward " + f.target +
        " (" + flowsToTarget(f) + ") over " + num(Math.round(f.seconds)) + " s: " + num(f.packets) + " packets, " + bytes(f.bytes) + ", " +
        num(Math.round(f.flows_per_minute)) + " flows per minute.");
      out.push("The target answered " + num(f.answer_packets) + " packets, " + pct(f.answer_ratio) + " of those sent: a flood target answers little or nothing.");
      out.push(f.baseline_steps ? "This subscriber's usual rate toward its busiest target is " + rate(f.baseline_pps) + " packets/s of " + (f.traffic || "this traffic") +
        " (" + num(f.baseline_steps) + " minutes learnt)." : "No baseline learnt for this subscriber yet.");
    }
    if (ev.trigger) out.push("Opened by: " + ({
      threshold: "the fixed threshold of distinct destinations",
      slow_window: "the slow-sender threshold over 60 minutes",
      sequential: "the sequential test on first contacts, before the threshold",
      worm_pattern: "the worm pattern",
      baseline_departure: "a departure from the baseline",
      min_dsts: "the minimum of distinct dark destinations",
      max_connections: "the ceiling of relay connections",
      max_bytes: "the ceiling of bytes to the relays",
      max_pps: "the ceiling of packets per second",
      max_bps: "the ceiling of bits per second",
      max_flows_per_minute: "the ceiling of flows per minute",
      max_icmp_pps: "the ceiling of ICMP packets per second",
      max_udp_pps: "the ceiling of UDP packets per second",
      max_syn_pps: "the ceiling of TCP SYN packets per second",
      max_other_pps: "the ceiling of packets per second of other protocols",
    }[ev.trigger] || ev.trigger) + " (" + ev.trigger + ").");
    if (ev.sampling_rate > 1) out.push("Flows are sampled 1:" + ev.sampling_rate + "; flow counts are scaled, distinct counts are as observed.");
    if (ev.group) out.push("Thresholds of subscriber group " + ev.group + ".");
    return out;
  }

  // identitySection is who the subscriber was (evidence.identity): the
  // customer, the binding behind its latest address, and the addresses its
  // flows came from within the window.
  function identitySection(id) {
    if (!id) return el("section", { "aria-labelledby": "id-h" }, el("h2", { id: "id-h" }, "Customer"),
      el("p", { class: "muted", id: "identity" }, "No identity source knew who held this address (identity: RADIUS, DHCP, CGNAT)."));
    const addrs = id.addresses || [];
    return el("section", { "aria-labelledby": "id-h" },
      el("h2", { id: "id-h" }, "Customer"),
      el("dl", { class: "facts", id: "identity" },
        el("dt", {}, "Customer"), el("dd", {}, customerLink(id.customer)),
        el("dt", {}, "Binding"), el("dd", {}, id.source ? [sourceBadge(id.source), id.session ? el("span", { class: "mono small" }, " session " + id.session) : null,
          id.since ? [" since " + utc(id.since) + " (", timeCell(id.since), ")"] : null] : el("span", { class: "muted" }, "no longer known")),
        el("dt", {}, "Addresses in the window"), el("dd", {}, addrs.length ? el("ul", { class: "plain" }, addrs.map((x) => el("li", {},
          addressLink(x.address), el("span", { class: "muted small" }, " " + utc(x.first_seen) + " – " + utc(x.last_seen))))) : "–"),
        el("dt", {}, "Address changed"), el("dd", {}, id.changed ? el("span", { class: "tag" }, "yes: the binding changed within the window; the incident follows the customer") : "no")));
  }

  async function incidentPage(id) {
    let d;
    try { d = await api("/api/v1/incidents/" + encodeURIComponent(id)); } catch (e) { return showError(e); }
    await session;
    const a = d.incident;
    document.title = a.kind + " " + a.subscriber_ip + " · wormsign";
    const ev = a.evidence || {};
    const samples = (ev.sample_dsts || []);
    const hl = headline(a);
    const note = el("textarea", { id: "ack-note", name: "note", rows: "2", maxlength: "2000" });
    const status = el("p", { id: "ack-status", role: "status" });
    const hold = el("input", { id: "ack-hold", name: "hold", type: "checkbox" });
    const contBox = el("section", { id: "containment-section", "aria-labelledby": "cont-h" }, el("h2", { id: "cont-h" }, "Containment"), el("p", { class: "muted" }, "Loading…"));
    const form = el("form", { id: "ack-form", class: "ack-form" },
      el("p", { id: "ack-as", class: "muted" }, "As " + (me ? me.name : "you")),
      el("label", { for: "ack-note" }, "Note"), note,
      el("label", { for: "ack-hold", title: "where containment runs: postpone or lift this incident's block while you work on it" }, hold, " Hold the block"),
      el("button", { type: "submit", id: "ack-submit" }, a.ack ? "Acknowledge again" : "Acknowledge"), status);
    form.addEventListener("submit", async function (e) {
      e.preventDefault();
      try {
        await api("/api/v1/incidents/" + encodeURIComponent(id) + "/ack", {
          method: "POST", headers: { "Content-Type": "application/json", "Accept": "application/json" },
          body: JSON.stringify({ note: note.value, hold: hold.checked }),
        });
        incidentPage(id);
      } catch (err) {
        status.textContent = "Not recorded: " + err.message;
        status.className = "error";
      }
    });
    main.replaceChildren(
      el("p", { class: "crumbs" }, el("a", { href: "/" }, "Incidents"), " › " + shortID(a.id)),
      el("h1", {}, el("span", { class: "kind kind-" + a.kind }, a.kind), " ",
        el("a", { href: "/subscribers/" + encodeURIComponent(a.subscriber_ip), class: "mono" }, a.subscriber_ip), " ",
        el("span", { class: "badge badge-" + a.state }, a.state)),
      el("p", { id: "headline", class: "headline", title: hl.title }, el("b", {}, hl.value), " " + hl.unit,
        el("span", { class: "muted" }, " · " + brief(a))),
      el("dl", { class: "facts two" },
        el("dt", {}, "Score"), el("dd", { id: "score" }, score(a.score)),
        el("dt", {}, "Customer"), el("dd", {}, customerOf(a) ? customerLink(customerOf(a)) : "–"),
        el("dt", {}, "Incident id"), el("dd", { class: "mono" }, a.id),
        el("dt", {}, "Acknowledged"), el("dd", { id: "ack-state" }, a.ack ? ("by " + a.ack.by + ", " + utc(a.ack.at) + (a.ack.note ? ": " + a.ack.note : "")) : "not yet"),
        el("dt", {}, "First seen"), el("dd", {}, utc(a.first_seen), " (", timeCell(a.first_seen), ")"),
        el("dt", {}, "Last seen"), el("dd", {}, utc(a.last_seen), " (", timeCell(a.last_seen), ")"),
        el("dt", {}, "Window"), el("dd", {}, utc(a.window_start) + " – " + utc(a.window_end)),
        el("dt", {}, "Exporter"), el("dd", { class: "mono" }, a.exporter),
        el("dt", {}, "Flows"), el("dd", {}, num(a.flows)),
        // relay_abuse counts its relays there, outbound_flood its one target.
        a.kind === "relay_abuse" || a.kind === "outbound_flood" ? null : [el("dt", {}, "Distinct destinations"), el("dd", {}, num(a.distinct_dsts))]),
      el("section", { "aria-labelledby": "ev-h" },
        el("h2", { id: "ev-h" }, "Evidence"),
        el("ul", { id: "evidence", class: "evidence" }, evidenceWords(a).map((s) => el("li", {}, s))),
        samples.length ? el("p", {}, ({
          darknet: "Dark destinations (first contacts): ", relay_abuse: "Relays: ", outbound_flood: "Target: ",
        }[a.kind] || "Sample destinations (first contacts): "),
        el("span", { id: "samples", class: "mono" }, samples.join(", "))) : null),
      identitySection(ev.identity),
      contBox,
      el("section", { "aria-labelledby": "tl-h" },
        el("h2", { id: "tl-h" }, "Timeline"),
        el("table", { id: "timeline", class: "board" },
          el("thead", {}, el("tr", {}, ["Window end (UTC)", "State", "Evidence", "Flows", "Score", "Trigger"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, d.events.map((e) => el("tr", { class: "state-" + e.state },
            el("td", {}, utc(e.window_end)), el("td", {}, el("span", { class: "badge badge-" + e.state }, e.state)),
            figureCell(e), el("td", { class: "num" }, num(e.flows)),
            el("td", { class: "num" }, score(e.score)),
            el("td", {}, (e.evidence || {}).trigger || "")))))),
      el("section", { "aria-labelledby": "ack-h" },
        el("h2", { id: "ack-h" }, "Acknowledgements"),
        d.acks.length ? el("ul", { id: "acks" }, d.acks.map((k) => el("li", {}, utc(k.at) + " " + k.by + (k.note ? ": " + k.note : "")))) :
          el("p", { class: "muted", id: "acks" }, "None yet."),
        can("operator") ? form : el("p", { class: "muted", id: "ack-denied" },
          "Acknowledging needs the operator role" + (me ? "; " + me.name + " is " + me.role : "") + ".")));
    containmentSection(contBox, a);
  }

  // ---- Subscriber page ----
  async function subscriberPage(ip) {
    let d;
    try { d = await api("/api/v1/subscribers/" + encodeURIComponent(ip) + "?hours=24"); } catch (e) { return showError(e); }
    document.title = d.subscriber_ip + " · wormsign";
    const chart = (metric, label) => el("figure", { class: "chart" },
      el("img", { src: "/api/v1/subscribers/" + encodeURIComponent(ip) + "/chart.svg?hours=24&metric=" + metric, "data-metric": metric, alt: label + " for " + d.subscriber_ip + ", last 24 hours", width: "960", height: "200" }));
    const total = d.series.reduce((s, p) => s + p.flows, 0);
    const smtp = d.series.reduce((s, p) => s + p.smtp_flows, 0);
    const octets = d.series.reduce((s, p) => s + (p.bytes || 0), 0);
    const packets = d.series.reduce((s, p) => s + (p.packets || 0), 0);
    const sources = [...new Set(d.holdings.map((h) => h.source))];
    const histBox = el("section", { id: "block-history-section" });
    main.replaceChildren(
      el("p", { class: "crumbs" }, el("a", { href: "/" }, "Incidents"), " › subscriber"),
      el("h1", {}, "Subscriber ", el("span", { class: "mono" }, d.subscriber_ip)),
      el("dl", { class: "facts", id: "who" },
        el("dt", {}, "Customer now"), el("dd", { id: "customer" }, d.customer ? customerLink(d.customer) : el("span", { class: "muted" }, "nobody known")),
        d.subscriber_id && d.subscriber_id !== d.customer ? [el("dt", {}, "In its latest incident"), el("dd", {}, customerLink(d.subscriber_id))] : null,
        el("dt", {}, "Bindings from"), el("dd", {}, sources.length ? sources.map((x) => [sourceBadge(x), " "]) : "–",
          el("span", { class: "muted small" }, " via " + holdingsFrom(d.holdings_from)))),
      el("section", { "aria-labelledby": "held-h" },
        el("h2", { id: "held-h" }, "Who held this address"),
        d.holdings_error ? el("p", { class: "error", id: "holders" }, d.holdings_error) :
          d.holdings.length ? holdingsTable("holders", d.holdings, "holder") : el("p", { class: "muted", id: "holders" }, "No holder known.")),
      el("p", { id: "traffic" }, "Last 24 hours (" + utc(d.from) + " – " + utc(d.to) + "): " + num(total) + " flows, " + num(smtp) + " of them to TCP port 25, " +
        bytes(octets) + " in " + num(packets) + " packets, in " + num(d.series.length) + " active minutes."),
      el("section", { id: "charts", class: "charts" },
        chart("flows", "Flows per minute"),
        chart("bytes", "Bytes per minute"),
        chart("packets", "Packets per minute"),
        chart("destinations", "Distinct destinations per minute"),
        chart("smtp_flows", "TCP/25 flows per minute"),
        chart("smtp_destinations", "Distinct TCP/25 destinations per minute")),
      el("h2", {}, "Incidents"),
      d.incidents.length ? incidentsTable("sub-incidents", d.incidents, false) : el("p", { class: "muted" }, "No incidents."),
      histBox);
    blockHistory(histBox, d.subscriber_ip);
  }

  // ---- Customer page ----
  async function customerPage(id) {
    let d;
    try { d = await api("/api/v1/customers/" + encodeURIComponent(id)); } catch (e) { return showError(e); }
    document.title = "Customer " + d.customer + " · wormsign";
    const now = d.holdings.filter((h) => h.open);
    const sources = [...new Set(d.holdings.map((h) => h.source))];
    main.replaceChildren(
      el("p", { class: "crumbs" }, el("a", { href: "/" }, "Incidents"), " › customer"),
      el("h1", {}, "Customer ", el("span", { class: "mono", id: "customer-id" }, d.customer)),
      el("dl", { class: "facts" },
        el("dt", {}, "Holds now"), el("dd", { id: "holds-now" }, now.length ? now.map((h, i) => [i ? ", " : "", addressLink(h.prefix)]) : el("span", { class: "muted" }, "no address")),
        el("dt", {}, "Bindings from"), el("dd", {}, sources.length ? sources.map((x) => [sourceBadge(x), " "]) : "–",
          el("span", { class: "muted small" }, " via " + holdingsFrom(d.holdings_from))),
        el("dt", {}, "Incidents"), el("dd", {}, num(d.incidents.length))),
      el("section", { "aria-labelledby": "hist-h" },
        el("h2", { id: "hist-h" }, "Address history"),
        d.holdings_error ? el("p", { class: "error", id: "history" }, d.holdings_error) :
          d.holdings.length ? holdingsTable("history", d.holdings.slice().reverse(), "address") : el("p", { class: "muted", id: "history" }, "No address known for this customer.")),
      el("section", { "aria-labelledby": "inc-h" },
        el("h2", { id: "inc-h" }, "Incidents"),
        d.incidents.length ? incidentsTable("customer-incidents", d.incidents, true) : el("p", { class: "muted" }, "No incidents.")));
  }

  // ---- Search: an address goes to its subscriber page, anything else to
  // the customer of that id. ----
  function search() {
    const q = (new URLSearchParams(location.search).get("q") || "").trim();
    if (!q) return location.replace("/");
    location.replace((looksLikeAddress(q) ? "/subscribers/" : "/customers/") + encodeURIComponent(q));
  }

  // ---- Top talkers: by distinct TCP/25 destinations, flows, distinct
  // destinations, bytes or packets, over a window ----
  const TOPS = [
    { kind: "smtp", label: "TCP/25 destinations", what: "distinct destinations on TCP port 25" },
    { kind: "destinations", label: "Destinations", what: "distinct destinations" },
    { kind: "flows", label: "Flows", what: "flows" },
    { kind: "bytes", label: "Bytes", what: "bytes" },
    { kind: "packets", label: "Packets", what: "packets" },
  ];
  const TOP_WINDOWS = ["15m", "1h", "6h", "24h"];
  async function topPage() {
    const q = new URLSearchParams(location.search);
    const top = TOPS.find((x) => x.kind === q.get("kind")) || TOPS[0];
    const win = TOP_WINDOWS.includes(q.get("window")) ? q.get("window") : "1h";
    document.title = "Top talkers by " + top.label.toLowerCase() + " · wormsign";
    let d;
    try { d = await api("/api/v1/top?" + new URLSearchParams({ kind: top.kind, window: win, limit: "20" })); } catch (e) { return showError(e); }
    const link = (kind, w) => "/top?" + new URLSearchParams({ kind: kind, window: w });
    const cols = [
      ["smtp_destinations", "TCP/25 destinations", "smtp", num],
      ["smtp_flows", "TCP/25 flows", null, num],
      ["destinations", "Destinations", "destinations", num],
      ["flows", "Flows", "flows", num],
      ["bytes", "Bytes", "bytes", bytes],
      ["packets", "Packets", "packets", num],
    ];
    const winSel = el("select", { id: "top-window", "aria-label": "Window" }, TOP_WINDOWS.map((w) => el("option", { value: w, selected: w === win }, "last " + w)));
    winSel.addEventListener("change", () => { location.href = link(top.kind, winSel.value); });
    main.replaceChildren(
      el("div", { class: "bar" },
        el("h1", {}, "Top talkers"),
        el("nav", { class: "tabs", id: "top-kinds", "aria-label": "Rank by" }, TOPS.map((x) =>
          el("a", { href: link(x.kind, win), class: x.kind === top.kind ? "tab on" : "tab", "aria-current": x.kind === top.kind ? "page" : null }, x.label))),
        el("label", {}, "Window ", winSel)),
      el("p", { class: "muted", id: "top-what" }, "Subscribers by " + top.what + " since " + utc(d.from) + " (last " + win + "), from the per-minute rollup; counts are scaled by sampling."),
      d.talkers.length ? el("table", { id: "top", class: "board", "data-kind": d.kind },
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "#"), el("th", { scope: "col" }, "Subscriber"),
          cols.map((c) => el("th", { scope: "col", class: "num" + (c[2] === top.kind ? " ranked" : "") }, c[2] && c[2] !== top.kind ? el("a", { href: link(c[2], win), title: "rank by " + c[1].toLowerCase() }, c[1]) : c[1] + (c[2] === top.kind ? " ▼" : ""))))),
        el("tbody", {}, d.talkers.map((t, i) => el("tr", {},
          el("td", { class: "num" }, String(i + 1)),
          el("td", { class: "mono" }, el("a", { href: "/subscribers/" + encodeURIComponent(t.subscriber_ip) }, t.subscriber_ip)),
          cols.map((c) => el("td", { class: "num" + (c[2] === top.kind ? " ranked" : ""), title: c[0] === "bytes" ? num(t.bytes) + " bytes" : null }, c[3](t[c[0]]))))))) :
        el("p", { class: "muted", id: "top-empty" }, top.kind === "smtp" ? "No TCP/25 traffic in the last " + win + "." : "No traffic in the last " + win + "."));
  }

  // ---- Containment: the block list, its audit trail, and the state of
  // one incident's block. The API is containment's: where it does not run
  // in this process the console answers 404 and the pages say so. ----
  const NO_CONTAINMENT = "Containment does not run here (containment.enabled is off, or this process serves no block list).";
  async function blocklist() {
    try { return await api("/api/v1/blocklist?format=json"); } catch (e) {
      if (/no such API endpoint/.test(e.message)) return null;
      throw e;
    }
  }
  async function auditRows(params) {
    try { return await api("/api/v1/blocklist/actions?" + new URLSearchParams(params)); } catch (e) {
      if (/no such API endpoint/.test(e.message)) return null;
      throw e;
    }
  }
  // fill replaces node's children; arrays are flattened, nulls dropped.
  function fill(node, ...kids) {
    node.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
  }
  function postJSON(path, body) {
    return api(path, { method: "POST", headers: { "Content-Type": "application/json", "Accept": "application/json" }, body: JSON.stringify(body) });
  }
  // left is the time from now to t in words: "4 min 10 s".
  function left(t) {
    let s = Math.max(0, Math.round((new Date(t).getTime() - Date.now()) / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  const STATE_WORDS = { active: "blocked", pending: "waiting", held: "held", unbound: "unbound", released: "released" };
  function stateBadge(st) { return el("span", { class: "cstate cstate-" + st, title: st }, STATE_WORDS[st] || st); }
  // stateLine says where an entry is, in words, with its times.
  function stateLine(e, rel) {
    switch (e.state) {
      case "pending": return "waiting: grace until " + utc(e.block_at) + " (in " + left(e.block_at) + ")";
      case "active": return "blocked since " + utc(e.since) + (e.expires ? ", until " + utc(e.expires) + " (" + left(e.expires) + " left)" : "");
      case "held": return "held until " + utc(e.held_until) + " (" + left(e.held_until) + " left), then back to the policy";
      case "unbound": return "unbound: waiting for an address of customer " + (e.customer || e.subscriber_id || "?");
      case "released": return "released " + utc(e.released_at) + (rel ? " by " + rel.actor + (rel.note ? ": " + rel.note : "") : "");
    }
    return e.state;
  }
  function timeLeftCell(e) {
    const t = { pending: e.block_at, active: e.expires, held: e.held_until }[e.state];
    if (t) return el("td", { class: "nowrap", title: utc(t) }, left(t));
    if (e.state === "released") return el("td", { class: "nowrap muted", title: utc(e.released_at) }, age(e.released_at));
    return el("td", { class: "muted" }, "–");
  }
  function reasonCell(kind, incident) {
    return el("td", {}, el("span", { class: "kind kind-" + kind }, kind || "–"),
      incident ? [" ", el("a", { href: "/incidents/" + encodeURIComponent(incident), class: "mono small", title: incident }, shortID(incident))] : null);
  }
  function customerCell(e) {
    const id = e.customer || e.subscriber_id;
    return el("td", {}, id ? customerLink(id) : el("span", { class: "muted" }, "–"));
  }
  // lastReleases maps a prefix to its latest release in the audit rows.
  function lastReleases(rows) {
    const out = {};
    for (const r of rows || []) {
      if (r.type === "release" && !out[r.entry.prefix]) out[r.entry.prefix] = r;
    }
    return out;
  }
  function entryPrefix(e) { return e.ip.includes("/") ? e.ip : e.ip + (e.ip.includes(":") ? "/128" : "/32"); }
  // answer shows what the API said to a form.
  function answer(status, ok, text) {
    status.className = ok ? "answer ok" : "answer error";
    status.textContent = text;
  }

  async function blocklistPage() {
    document.title = "Block list · wormsign";
    await session;
    let d, audit;
    try { [d, audit] = await Promise.all([blocklist(), auditRows({ limit: "500" })]); } catch (e) { return showError(e); }
    if (!d) return main.replaceChildren(el("h1", {}, "Block list"), el("p", { class: "muted", id: "no-containment" }, NO_CONTAINMENT));
    const tableBox = el("div", { id: "blocklist-box" });
    const countsBox = el("div", { class: "counts", id: "bl-counts" });
    const relIP = el("input", { id: "rel-ip", name: "ip", required: true, maxlength: "64", autocomplete: "off", placeholder: "203.0.113.5" });
    function render() {
      const rels = lastReleases(audit && audit.actions);
      const entries = [].concat(d.entries, d.waiting, d.released || []);
      const order = ["active", "pending", "held", "unbound", "released"];
      entries.sort((a, b) => order.indexOf(a.state) - order.indexOf(b.state));
      countsBox.replaceChildren(...order.map((st) => el("span", { class: "count", "data-state": st },
        el("b", {}, String(entries.filter((e) => e.state === st).length)), " " + STATE_WORDS[st])),
        ...(d.dry_run ? [el("span", { class: "tag" }, "dry run: nothing is exported")] : []));
      tableBox.replaceChildren(entries.length ? el("table", { id: "blocklist", class: "board" },
        el("thead", {}, el("tr", {}, ["Address", "State", "Time left", "Action", "Reason", "Customer", "Actor", "Note", can("admin") ? "" : null]
          .filter((h) => h !== null).map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, entries.map((e) => {
          const rel = e.state === "released" ? rels[entryPrefix(e)] : null;
          let btn = null;
          if (can("admin")) {
            btn = el("td", {});
            if (e.state !== "released") {
              const b = el("button", { type: "button", class: "small-btn", "data-ip": e.ip, title: "release " + e.ip + " by hand" }, "Release…");
              b.addEventListener("click", () => { relIP.value = e.ip; document.getElementById("rel-note").focus(); });
              btn.append(b);
            }
          }
          return el("tr", { class: "cs-" + e.state, "data-ip": e.ip, "data-state": e.state },
            el("td", { class: "mono" }, addressLink(e.ip)),
            el("td", { title: stateLine(e, rel) }, stateBadge(e.state), el("div", { class: "small muted" }, stateLine(e, rel).replace(/ \((in|[^)]* left)[^)]*\)/, ""))),
            timeLeftCell(e),
            el("td", { class: "mono small" }, e.action),
            reasonCell(e.kind, e.incident_id),
            customerCell(e),
            el("td", {}, rel ? rel.actor : e.actor),
            el("td", { class: "small" }, (rel ? rel.note : e.note) || ""),
            btn);
        }))) : el("p", { class: "muted", id: "blocklist" }, "The list is empty: nothing blocked, waiting, held or recently released."));
    }
    async function reload() {
      try { [d, audit] = await Promise.all([blocklist(), auditRows({ limit: "500" })]); } catch (e) { return; }
      if (d) render();
    }
    render();
    // Forms, as the role allows (the API refuses the others anyway).
    const forms = [];
    if (can("admin")) {
      const ip = el("input", { id: "add-ip", name: "ip", required: true, maxlength: "64", autocomplete: "off", placeholder: "203.0.113.5 or 2001:db8:1:2::/64" });
      const action = el("select", { id: "add-action", name: "action" }, el("option", { value: "block_smtp" }, "block_smtp (TCP/25)"), el("option", { value: "quarantine" }, "quarantine"));
      const dur = el("input", { id: "add-duration", name: "duration", maxlength: "16", placeholder: "default (containment.duration)", autocomplete: "off" });
      const note = el("input", { id: "add-note", name: "note", maxlength: "2000", autocomplete: "off", placeholder: "why" });
      const st = el("p", { id: "add-status", role: "status" });
      const f = el("form", { id: "add-form", class: "act-form" }, el("h3", {}, "Add"),
        el("label", { for: "add-ip" }, "Address or prefix"), ip, el("label", { for: "add-action" }, "Action"), action,
        el("label", { for: "add-duration" }, "Duration"), dur, el("label", { for: "add-note" }, "Note"), note,
        el("button", { type: "submit", id: "add-submit" }, "Add to the list"), st);
      f.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        try {
          const ch = await postJSON("/api/v1/blocklist", { ip: ip.value.trim(), action: action.value, duration: dur.value.trim(), reason: note.value });
          answer(st, true, "Added " + ch.entry.prefix + ": " + stateLine(Object.assign({ ip: ch.entry.prefix }, ch.entry)) + ".");
          reload();
        } catch (err) { answer(st, false, "Not added: " + err.message); }
      });
      forms.push(f);
      const rnote = el("input", { id: "rel-note", name: "note", maxlength: "2000", autocomplete: "off", placeholder: "e.g. customer cleaned the PC" });
      const rst = el("p", { id: "rel-status", role: "status" });
      const rf = el("form", { id: "release-form", class: "act-form" }, el("h3", {}, "Release"),
        el("label", { for: "rel-ip" }, "Address or prefix"), relIP, el("label", { for: "rel-note" }, "Note"), rnote,
        el("button", { type: "submit", id: "rel-submit" }, "Release"), rst);
      rf.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        try {
          const ch = await postJSON("/api/v1/blocklist/" + encodeURIComponent(relIP.value.trim()) + "/release", { note: rnote.value });
          answer(rst, true, "Released " + ch.entry.prefix + " (" + ch.entry.kind + ").");
          reload();
        } catch (err) { answer(rst, false, "Not released: " + err.message); }
      });
      forms.push(rf);
    }
    if (can("operator")) forms.push(holdForm("", reload));
    main.replaceChildren(
      el("div", { class: "bar" }, el("h1", {}, "Block list"),
        el("nav", { class: "tabs", "aria-label": "Containment" }, el("a", { href: "/blocklist", class: "tab on", "aria-current": "page" }, "List"),
          el("a", { href: "/blocklist/actions", class: "tab" }, "Audit trail"))),
      el("p", { class: "muted", id: "bl-what" }, "Blocked entries are exported to the routers (nftables, ipset, FlowSpec); waiting ones after their grace; held ones when the hold ends; unbound ones when the customer has an address again. Released ones stay here for containment.released_retention."),
      countsBox, tableBox,
      forms.length ? el("section", { class: "act-forms", "aria-label": "Change the list" }, forms) :
        el("p", { class: "muted", id: "bl-denied" }, "Holding needs the operator role, adding and releasing the admin role" + (me ? "; " + me.name + " is " + me.role : "") + "."));
    refreshTimer = setInterval(reload, 5000);
  }

  // holdForm holds an incident's block (operator): incident id given, or
  // asked for when empty.
  function holdForm(incident, done) {
    const id = el("input", { id: "hold-incident", name: "incident_id", required: true, maxlength: "256", autocomplete: "off", value: incident || null, placeholder: "incident id" });
    const note = el("input", { id: "hold-note", name: "note", maxlength: "2000", autocomplete: "off", placeholder: "e.g. customer is cleaning the PC" });
    const st = el("p", { id: "hold-status", role: "status" });
    const f = el("form", { id: "hold-form", class: "act-form" }, el("h3", {}, "Hold the block"),
      incident ? null : [el("label", { for: "hold-incident" }, "Incident id"), id],
      el("label", { for: "hold-note" }, "Note"), note,
      el("button", { type: "submit", id: "hold-submit" }, "Hold"), st);
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const ch = await postJSON("/api/v1/blocklist/hold", { incident_id: incident || id.value.trim(), note: note.value });
        answer(st, true, "Held " + ch.entry.prefix + " until " + utc(ch.entry.held_until) + ".");
        done();
      } catch (err) { answer(st, false, "Not held: " + err.message); }
    });
    return f;
  }

  function auditTable(tid, rows) {
    return el("table", { id: tid, class: "board" },
      el("thead", {}, el("tr", {}, ["At (UTC)", "Change", "Address", "Action", "Reason", "Customer", "Actor", "Note"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((r) => el("tr", { class: "ch-" + r.type, "data-type": r.type },
        el("td", { class: "nowrap" }, utc(r.at), el("div", { class: "small muted" }, age(r.at))),
        el("td", {}, el("span", { class: "change change-" + r.type }, r.type), r.dry_run ? el("span", { class: "tag" }, " dry run") : null),
        el("td", { class: "mono" }, el("a", { href: "/blocklist/actions?" + new URLSearchParams({ prefix: r.entry.prefix }) , title: "this prefix's changes" }, r.entry.prefix)),
        el("td", { class: "mono small" }, r.entry.action),
        reasonCell(r.entry.kind, r.entry.incident_id),
        customerCell(r.entry),
        el("td", {}, el("a", { href: "/blocklist/actions?" + new URLSearchParams({ actor: r.actor }), title: "this actor's changes" }, r.actor)),
        el("td", { class: "small" }, r.note || "")))));
  }

  async function actionsPage() {
    document.title = "Block list audit · wormsign";
    const q = new URLSearchParams(location.search);
    const params = {};
    for (const k of ["prefix", "customer", "actor", "incident", "before"]) if (q.get(k)) params[k] = q.get(k).trim();
    params.limit = "50";
    let d;
    try { d = await auditRows(params); } catch (e) { return showError(e); }
    const tabs = el("nav", { class: "tabs", "aria-label": "Containment" }, el("a", { href: "/blocklist", class: "tab" }, "List"),
      el("a", { href: "/blocklist/actions", class: "tab on", "aria-current": "page" }, "Audit trail"));
    if (!d) return main.replaceChildren(el("div", { class: "bar" }, el("h1", {}, "Block list audit"), tabs), el("p", { class: "muted", id: "no-containment" }, NO_CONTAINMENT));
    const field = (name, label, ph) => [el("label", { for: "f-" + name }, label),
      el("input", { id: "f-" + name, name: name, value: params[name] || null, placeholder: ph, maxlength: "256", autocomplete: "off" })];
    const filters = el("form", { id: "audit-filter", class: "filters", method: "get", action: "/blocklist/actions" },
      field("prefix", "Address", "address or prefix"), field("customer", "Customer", "customer id"), field("actor", "Actor", "policy, admin, …"),
      el("button", { type: "submit" }, "Filter"), Object.keys(params).length > 1 ? el("a", { href: "/blocklist/actions" }, "clear") : null);
    const shown = Object.entries(params).filter(([k]) => k !== "limit" && k !== "before").map(([k, v]) => k + " " + v);
    main.replaceChildren(
      el("div", { class: "bar" }, el("h1", {}, "Block list audit"), tabs),
      el("p", { class: "muted", id: "audit-what" }, "Every change to the list, newest first" + (shown.length ? ", of " + shown.join(", ") : "") +
        (params.before ? ", older than " + utc(params.before.split(",")[0]) : "") + ". An address also finds the prefixes that cover it."),
      filters,
      d.actions.length ? auditTable("audit", d.actions) : el("p", { class: "muted", id: "audit" }, "No changes" + (shown.length ? " match." : " yet.")),
      el("p", { class: "pager pager-foot" },
        params.before ? el("a", { id: "audit-newest", href: pageLink(params, "") }, "« newest") : null,
        d.next ? el("a", { id: "audit-older", href: pageLink(params, d.next) }, "older »") : null));
  }
  function pageLink(params, before) {
    const p = Object.assign({}, params);
    delete p.limit;
    if (before) p.before = before; else delete p.before;
    return "/blocklist/actions?" + new URLSearchParams(p);
  }

  // containmentSection fills box with the incident's containment state:
  // the entry that carries it (or carried it: released), and its audit
  // rows.
  async function containmentSection(box, a) {
    let d, audit;
    try { [d, audit] = await Promise.all([blocklist(), auditRows({ incident: a.id, limit: "50" })]); } catch (e) {
      return fill(box, el("h2", { id: "cont-h" }, "Containment"), el("p", { class: "error", id: "containment" }, e.message));
    }
    if (!d) return fill(box, el("h2", { id: "cont-h" }, "Containment"), el("p", { class: "muted", id: "containment" }, NO_CONTAINMENT));
    const carries = (e) => e.incident_id === a.id || (e.incidents || []).includes(a.id);
    const live = [].concat(d.entries, d.waiting).filter(carries);
    const released = (d.released || []).filter((e) => carries(e) || (e.released_incidents || []).includes(a.id));
    const rows = (audit && audit.actions) || [];
    const rel = rows.find((r) => r.type === "release");
    let state;
    if (live.length) state = live.map((e) => el("p", { class: "cstate-line", "data-state": e.state }, stateBadge(e.state), " ",
      el("span", { class: "mono" }, addressLink(e.ip)), " " + e.action + " — " + stateLine(e)));
    else if (released.length || rel) {
      const e = released[0] || Object.assign({ ip: rel.entry.prefix, released_at: rel.at }, rel.entry);
      state = el("p", { class: "cstate-line", "data-state": "released" }, stateBadge("released"), " ", el("span", { class: "mono" }, addressLink(e.ip)),
        " " + stateLine(Object.assign({}, e, { state: "released", released_at: rel ? rel.at : e.released_at }), rel));
    } else state = el("p", { class: "cstate-line muted", "data-state": "none" }, "None: this incident has no block (its kind's action may be none, or the policy did not act on it).");
    const canHold = live.some((e) => e.state === "pending" || e.state === "active");
    fill(box, el("h2", { id: "cont-h" }, "Containment"),
      el("div", { id: "containment" }, state),
      canHold && can("operator") ? holdForm(a.id, () => containmentSection(box, a)) : null,
      rows.length ? [el("h3", {}, "Changes"), auditTable("incident-audit", rows)] : null);
  }

  // blockHistory fills box with the audit rows of a subscriber's prefix.
  async function blockHistory(box, ip) {
    let d;
    try { d = await auditRows({ prefix: ip, limit: "50" }); } catch (e) {
      return fill(box, el("h2", {}, "Block history"), el("p", { class: "error", id: "block-history" }, e.message));
    }
    if (!d) return fill(box);
    fill(box, el("h2", {}, "Block history"),
      d.actions.length ? auditTable("block-history", d.actions) : el("p", { class: "muted", id: "block-history" }, "Never on the block list."),
      d.next ? el("p", {}, el("a", { href: "/blocklist/actions?" + new URLSearchParams({ prefix: ip }) }, "all changes of " + ip + " »")) : null);
  }

  // ---- Remediation: the abuse desk's cases (one per customer), a case's
  // page with its ladder and history, and the desk's measures. The API is
  // remediation's: where it does not run in this process the console
  // answers 404 and the pages say so. ----
  const NO_REMEDIATION = "Remediation does not run here (remediation.enabled is off).";
  const CASE_STATES = ["open", "notified", "walled", "blocked", "released", "closed", "false_positive"];
  const CASE_WORDS = { false_positive: "false positive" };
  const STEP_WORDS = { notify: "Notify the customer", walled: "Walled garden", block: "Block" };
  // The events that take each step, to tell a step taken from one skipped.
  const STEP_EVENTS = { notify: ["notify", "notify_failed"], walled: ["walled"], block: ["blocked"] };
  async function casesAPI(path) {
    try { return await api("/api/v1/cases" + path); } catch (e) {
      if (/no such API endpoint/.test(e.message)) return null;
      throw e;
    }
  }
  function caseWord(st) { return CASE_WORDS[st] || st; }
  function caseBadge(st) { return el("span", { class: "badge case-" + st, title: st }, caseWord(st)); }
  function caseEnded(c) { return c.state === "released" || c.state === "closed" || c.state === "false_positive"; }
  function noRemediation(title) {
    main.replaceChildren(el("h1", {}, title), el("p", { class: "muted", id: "no-remediation" }, NO_REMEDIATION));
  }
  // span says a number of seconds in words: "45 s", "2 h 5 min", "24 h",
  // "3 d 4 h".
  function span(secs) {
    const s = Math.max(0, Math.round(Number(secs) || 0));
    const two = (a, ua, b, ub) => a + " " + ua + (b ? " " + b + " " + ub : "");
    if (s < 60) return s + " s";
    if (s < 3600) return two(Math.floor(s / 60), "min", s % 60, "s");
    if (s < 2 * 86400) return two(Math.floor(s / 3600), "h", Math.floor((s % 3600) / 60), "min");
    return two(Math.floor(s / 86400), "d", Math.floor((s % 86400) / 3600), "h");
  }
  // ladderStep reads a step as the API writes it: "walled:4h0m0s".
  function ladderStep(s) {
    const i = s.indexOf(":");
    const unit = { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6, "µs": 1e-6, ns: 1e-9 };
    let after = 0;
    for (const m of s.slice(i + 1).matchAll(/([\d.]+)(h|ms|m|s|us|µs|ns)/g)) after += Number(m[1]) * unit[m[2]];
    return { do: s.slice(0, i), after: after };
  }
  // caseCustomer links the case's customer when it is one (identity's, or
  // a subscriber id); a case known only by its address has none.
  function caseCustomer(c) {
    if (c.customer && c.customer !== c.subscriber_ip) return customerLink(c.customer);
    return el("span", { class: "muted", title: "no identity: the case is its address's" }, "–");
  }
  function kindsOf(c) { return (c.kinds || []).map((k, i) => [i ? " " : "", el("span", { class: "kind kind-" + k }, k)]); }
  // nextStep says what the case waits for: the step and when it is due,
  // or the hold that keeps it.
  function nextStep(c, v) {
    if (caseEnded(c)) return el("span", { class: "muted" }, "–");
    if (!v) return el("span", { class: "muted" }, "…");
    if (v.next < 0) return el("span", { class: "muted" }, "none left");
    const s = ladderStep(v.ladder[v.next]);
    const held = c.held_until && new Date(c.held_until) > Date.now();
    return el("span", { title: utc(v.next_at) }, (STEP_WORDS[s.do] || s.do).toLowerCase(),
      el("div", { class: "small muted" }, held ? "held until " + utc(c.held_until) :
        new Date(v.next_at) > Date.now() ? "in " + left(v.next_at) : "due now"));
  }

  async function casesPage() {
    document.title = "Cases · wormsign";
    const q = new URLSearchParams(location.search);
    let state = CASE_STATES.includes(q.get("state")) ? q.get("state") : "";
    const stateSel = el("select", { id: "state-filter", "aria-label": "State" }, el("option", { value: "" }, "all states"),
      CASE_STATES.map((s) => el("option", { value: s, selected: s === state }, caseWord(s))));
    const countsBox = el("div", { id: "cases-counts", class: "counts", "aria-live": "polite" });
    const box = el("div", { id: "cases-box" }, el("p", { class: "muted" }, "Loading…"));
    // The list carries no ladder: each case's next step comes from its
    // own page, fetched again only when the case changed.
    const views = new Map();
    function render(cases) {
      const n = {};
      for (const c of cases) n[c.state] = (n[c.state] || 0) + 1;
      countsBox.replaceChildren(el("span", { class: "count" }, el("b", {}, String(cases.length)), cases.length === 1 ? " case" : " cases"),
        ...CASE_STATES.filter((s) => n[s]).map((s) => el("span", { class: "count", "data-state": s }, el("b", {}, String(n[s])), " " + caseWord(s))));
      box.replaceChildren(cases.length ? el("table", { id: "cases", class: "board" },
        el("thead", {}, el("tr", {}, ["Case", "Customer", "Subscriber", "State", "Kinds", "Opened", "Last activity", "Notices", "Next step"]
          .map((h) => el("th", { scope: "col", class: h === "Notices" ? "num" : null }, h)))),
        el("tbody", {}, cases.map((c) => el("tr", { "data-case": c.id, "data-state": c.state, class: "case-row-" + c.state },
          el("td", { class: "mono" }, el("a", { href: "/cases/" + encodeURIComponent(c.id), title: c.id }, shortID(c.id))),
          el("td", {}, caseCustomer(c)),
          el("td", {}, addressLink(c.subscriber_ip)),
          el("td", { class: "nowrap" }, caseBadge(c.state)),
          el("td", {}, kindsOf(c)),
          el("td", { class: "nowrap" }, timeCell(c.opened), el("div", { class: "small muted" }, utc(c.opened))),
          el("td", { class: "nowrap" }, timeCell(c.last_activity)),
          el("td", { class: "num", title: c.notified_at ? "first notice " + utc(c.notified_at) : "no notice sent" }, num(c.notices)),
          el("td", {}, nextStep(c, views.get(c.id))))))) :
        el("p", { class: "muted", id: "cases" }, state ? "No case is " + caseWord(state) + "." : "No cases yet."));
    }
    // load tells whether there is a list to refresh; a failed refresh
    // keeps what is shown.
    async function load(first) {
      const p = new URLSearchParams({ limit: "200" });
      if (state) p.set("state", state);
      let d;
      try { d = await casesAPI("?" + p); } catch (e) { if (first) showError(e); return false; }
      if (!d) { noRemediation("Cases"); return false; }
      const stale = d.cases.filter((c) => !caseEnded(c) && (!views.has(c.id) || views.get(c.id).case.version !== c.version));
      await Promise.all(stale.map((c) => casesAPI("/" + encodeURIComponent(c.id)).then((v) => { if (v) views.set(c.id, v); }, () => null)));
      render(d.cases);
      return true;
    }
    stateSel.addEventListener("change", function () {
      state = stateSel.value;
      history.replaceState(null, "", "/cases" + (state ? "?" + new URLSearchParams({ state: state }) : ""));
      load(true);
    });
    main.replaceChildren(
      el("div", { class: "bar" }, el("h1", {}, "Cases"), el("label", {}, "State ", stateSel),
        el("nav", { class: "tabs", "aria-label": "Remediation" }, el("a", { href: "/cases", class: "tab on", "aria-current": "page" }, "Cases"),
          el("a", { href: "/desk", class: "tab" }, "Desk"))),
      el("p", { class: "muted", id: "cases-what" }, "One case per customer, from its first incident to its close: notified, walled, blocked as the ladder says, released by the customer or the desk."),
      countsBox, box);
    if (await load(true)) refreshTimer = setInterval(load, 5000);
  }

  async function casePage(id) {
    document.title = "Case · wormsign";
    await session;
    let d;
    try { d = await casesAPI("/" + encodeURIComponent(id)); } catch (e) { return showError(e); }
    if (!d) return noRemediation("Case");
    const head = el("div", { id: "case-head" }), facts = el("dl", { class: "facts two", id: "case-facts" });
    const saw = el("section", { id: "saw-section", "aria-labelledby": "saw-h" });
    const ladder = el("section", { id: "ladder-section", "aria-labelledby": "ladder-h" });
    const hist = el("section", { id: "history-section", "aria-labelledby": "hist-h" });
    // The actions stay as they are across refreshes: a note being typed
    // survives them.
    const note = el("input", { id: "case-note", name: "note", maxlength: "1000", autocomplete: "off", placeholder: "why: e.g. customer called, is cleaning the PC" });
    const dur = el("select", { id: "hold-duration", "aria-label": "Hold for" }, ["1h", "4h", "24h"].map((x) => el("option", { value: x }, x)));
    const btn = (bid, label, title) => el("button", { type: "button", id: bid, title: title }, label);
    const holdBtn = btn("case-hold", "Hold", "hold the ladder: no step is taken until the hold ends");
    const skipBtn = btn("case-skip", "Skip next step", "pass over the next step without taking it");
    const relBtn = btn("case-release", "Release", "lift the case's containment; it reopens on new activity");
    const closeBtn = btn("case-close", "Close", "end the case, lifting its containment");
    const fpBtn = btn("case-fp", "False positive…", "release and close the case, and count it against its rules");
    const fpYes = el("button", { type: "button", id: "case-fp-confirm", class: "danger" }, "Yes, a false positive");
    const fpNo = btn("case-fp-cancel", "Cancel");
    const fpKinds = el("span");
    const fpAsk = el("p", { id: "case-fp-ask", class: "confirm", hidden: true }, "Mark this case a false positive? Its containment is lifted, it closes, and it counts against the precision of ", fpKinds, ". ", fpYes, " ", fpNo);
    const status = el("p", { id: "case-status", role: "status" });
    const actions = el("section", { id: "case-actions", class: "case-actions", "aria-labelledby": "act-h" },
      el("h3", { id: "act-h" }, "Act on the case"),
      el("div", { class: "row" }, el("label", { for: "case-note" }, "Note"), note),
      el("div", { class: "row" }, el("label", { for: "hold-duration" }, "Hold for"), dur, holdBtn,
        el("span", { class: "sep" }), skipBtn, relBtn, closeBtn, fpBtn),
      fpAsk, status);

    function stepStatus(s, i, c) {
      const from = new Date(c.ladder_from).getTime();
      const events = d.events.filter((e) => new Date(e.at).getTime() >= from);
      if (i < c.step) {
        const took = events.find((e) => STEP_EVENTS[s.do].includes(e.type));
        if (!took) return el("span", { class: "tag" }, "skipped");
        return [el("span", { class: "step-mark" }, took.type === "notify_failed" ? "tried" : "taken"), " " + utc(took.at),
          took.type === "notify_failed" ? el("span", { class: "error" }, " notice failed" + (took.note ? ": " + took.note : "")) : null];
      }
      if (i === d.next) {
        const held = c.held_until && new Date(c.held_until) > Date.now();
        return [el("span", { class: "step-mark" }, "next"), " due " + utc(d.next_at) + " (" + (new Date(d.next_at) > Date.now() ? "in " + left(d.next_at) : "now") + ")",
          held ? [" ", el("span", { class: "badge badge-held" }, "held until " + utc(c.held_until))] : null];
      }
      return el("span", { class: "muted" }, caseEnded(c) ? "not taken: the case is " + caseWord(c.state) : "later");
    }
    function render() {
      const c = d.case, ev = d.evidence || {}, a = c.alert || {};
      document.title = "Case " + c.customer + " · wormsign";
      const held = c.held_until && new Date(c.held_until) > Date.now();
      fill(head, el("p", { class: "crumbs" }, el("a", { href: "/cases" }, "Cases"), " › " + shortID(c.id)),
        el("h1", { id: "case-title", "data-state": c.state }, "Case ", el("span", { class: "mono" }, c.customer), " ", caseBadge(c.state),
          held ? [" ", el("span", { class: "badge badge-held" }, "held")] : null));
      fill(facts,
        el("dt", {}, "Customer"), el("dd", { id: "case-customer" }, caseCustomer(c)),
        el("dt", {}, "Subscriber"), el("dd", {}, addressLink(c.subscriber_ip)),
        el("dt", {}, "Kinds"), el("dd", {}, kindsOf(c)),
        el("dt", {}, "Incidents"), el("dd", {}, num((c.incidents || []).length) + " (" + num((c.active || []).length) + " active), latest ",
          a.id ? el("a", { href: "/incidents/" + encodeURIComponent(a.id), id: "latest-incident", class: "mono", title: a.id }, shortID(a.id)) : "–"),
        el("dt", {}, "Opened"), el("dd", {}, utc(c.opened), " (", timeCell(c.opened), ")"),
        el("dt", {}, "Last activity"), el("dd", {}, utc(c.last_activity), " (", timeCell(c.last_activity), ")"),
        el("dt", {}, "Notices"), el("dd", {}, num(c.notices) + (c.notified_at ? ", the first " + utc(c.notified_at) : "")),
        el("dt", {}, "Containment"), el("dd", {}, [c.walled_at ? "walled " + utc(c.walled_at) : null, c.blocked_at ? "blocked " + utc(c.blocked_at) : null]
          .filter((x) => x).join(", ") || "none"),
        el("dt", {}, "Released"), el("dd", {}, c.released_at ? utc(c.released_at) + (c.released_by ? " by " + c.released_by : "") : "–"),
        el("dt", {}, "Closed"), el("dd", {}, c.closed_at ? utc(c.closed_at) : "–"),
        el("dt", {}, "Self-releases"), el("dd", {}, num((c.self_releases || []).length) + ", " + num(d.self_releases_left) + " left"),
        el("dt", {}, "Reopens"), el("dd", {}, num(c.reopens)),
        el("dt", {}, "Abuse report"), el("dd", {}, el("a", { href: d.xarf, id: "xarf-link" }, "X-ARF report of the latest incident")),
        el("dt", {}, "Case id"), el("dd", { class: "mono small" }, c.id));
      fill(saw, el("h2", { id: "saw-h" }, "What we saw ", el("span", { class: "muted small" }, "in the words of the customer's notice")),
        el("ul", { id: "saw", class: "evidence" },
          el("li", {}, "From " + (ev.address || c.subscriber_ip) + ", between " + ev.from + " and " + ev.to + ": " + ev.what + "."),
          ev.destinations ? el("li", {}, "It contacted " + num(ev.destinations) + " distinct destinations.") : null,
          (ev.sample || []).length ? el("li", {}, "Among them: ", el("span", { class: "mono", id: "saw-sample" }, ev.sample.join(", ")), ".") : null,
          ev.detail ? el("li", {}, ev.detail) : null),
        (ev.steps || []).length ? el("details", { id: "saw-steps" }, el("summary", {}, "What the notice asks the customer to do"),
          el("ol", {}, ev.steps.map((s) => el("li", {}, s)))) : null);
      const steps = d.ladder.map(ladderStep);
      fill(ladder, el("h2", { id: "ladder-h" }, "Ladder"),
        el("p", { class: "muted" }, "Started " + utc(c.ladder_from) + (c.reopens ? ", again at the latest reopen" : "") + "; each step is taken while the case still has an active incident and no hold waits."),
        el("ol", { id: "ladder", class: "ladder" }, steps.map((s, i) => {
          const st = i < c.step ? "taken" : i === d.next ? "next" : "later";
          return el("li", { class: "step step-" + st, "data-step": s.do, "data-status": st },
            el("b", {}, STEP_WORDS[s.do] || s.do), " ", el("span", { class: "muted" }, s.after ? span(s.after) + " after the start" : "at the start"),
            " · ", stepStatus(s, i, c));
        })));
      fill(hist, el("h2", { id: "hist-h" }, "History"),
        d.events.length ? el("table", { id: "case-history", class: "board" },
          el("thead", {}, el("tr", {}, ["At (UTC)", "Event", "Actor", "Note", "State after"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, d.events.map((e) => el("tr", { "data-type": e.type },
            el("td", { class: "nowrap" }, utc(e.at), el("div", { class: "small muted" }, age(e.at))),
            el("td", {}, el("span", { class: "change ev-" + e.type }, e.type)),
            el("td", {}, e.actor),
            el("td", { class: "small" }, e.note || ""),
            el("td", {}, caseBadge(e.state)))))) : el("p", { class: "muted", id: "case-history" }, "No events."));
      // Each button as the API allows it in this state.
      const ended = caseEnded(c);
      holdBtn.disabled = dur.disabled = relBtn.disabled = ended;
      skipBtn.disabled = ended || d.next < 0;
      closeBtn.disabled = c.state === "closed" || c.state === "false_positive";
      fpBtn.disabled = fpYes.disabled = c.state === "false_positive";
      note.disabled = fpBtn.disabled;
      if (fpBtn.disabled) fpAsk.hidden = true;
      fpKinds.textContent = (c.kinds || []).join(", ") || "its rules";
      refreshAges();
    }
    async function load() {
      try {
        const v = await casesAPI("/" + encodeURIComponent(id));
        if (v) { d = v; render(); }
      } catch (e) { /* keep what is shown; the next refresh tries again */ }
    }
    async function act(action, body, said) {
      if (!note.value.trim()) {
        answer(status, false, "Write a note first: why (it goes into the case's history).");
        note.focus();
        return;
      }
      body.note = note.value.trim();
      try {
        const r = await postJSON("/api/v1/cases/" + encodeURIComponent(id) + "/" + action, body);
        note.value = "";
        fpAsk.hidden = true;
        d.case = r.case;
        render();
        answer(status, true, said(r.case));
        load(); // the history and the ladder
      } catch (err) { answer(status, false, "Not done: " + err.message); }
    }
    holdBtn.addEventListener("click", () => act("hold", { duration: dur.value }, (c) => "Held until " + utc(c.held_until) + "."));
    skipBtn.addEventListener("click", () => act("skip", {}, () => "Skipped the next step."));
    relBtn.addEventListener("click", () => act("release", {}, () => "Released: the containment is lifted."));
    closeBtn.addEventListener("click", () => act("close", {}, () => "Closed."));
    fpBtn.addEventListener("click", () => { fpAsk.hidden = false; fpYes.focus(); });
    fpNo.addEventListener("click", () => { fpAsk.hidden = true; });
    fpYes.addEventListener("click", () => act("false_positive", {}, () => "Marked a false positive: released and closed."));
    main.replaceChildren(head, facts, el("div", { class: "case-grid" }, saw, ladder),
      can("operator") ? actions : el("p", { class: "muted", id: "case-denied" }, "Acting on a case needs the operator role" + (me ? "; " + me.name + " is " + me.role : "") + "."),
      hist);
    render();
    refreshTimer = setInterval(load, 5000);
  }

  // svg builds an SVG element as el() does HTML; the charts colour
  // themselves with classes of app.css (the policy forbids inline styles).
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v);
    for (const c of children.flat(Infinity)) {
      if (c !== null && c !== undefined) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  // stateChart is a horizontal bar per case state.
  function stateChart(byState) {
    const W = 640, row = 28, left = 120, right = 56;
    const H = CASE_STATES.length * row + 8;
    const max = Math.max(1, ...CASE_STATES.map((s) => byState[s] || 0));
    return svg("svg", { id: "by-state", class: "chart-svg", viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
      "aria-label": "Cases by state: " + CASE_STATES.map((s) => caseWord(s) + " " + (byState[s] || 0)).join(", ") },
      CASE_STATES.map((s, i) => {
        const n = byState[s] || 0, y = 4 + i * row, w = (W - left - right) * n / max;
        return svg("g", { "data-state": s },
          svg("text", { x: left - 10, y: y + row / 2 + 5, "text-anchor": "end", class: "chart-label" }, caseWord(s)),
          svg("rect", { x: left, y: y + 5, width: Math.max(n ? 3 : 0, w), height: row - 10, rx: 3, class: "fill-" + s }),
          svg("text", { x: left + w + 8, y: y + row / 2 + 5, class: "chart-value" }, num(n)));
      }),
      svg("line", { x1: left, x2: left, y1: 0, y2: H, class: "chart-axis" }));
  }
  // daysChart is the cases opened, notified and released per day, as
  // groups of three bars.
  const DAY_SERIES = [["opened", "opened"], ["notified", "notified"], ["released", "released"]];
  function daysChart(days) {
    const W = 720, H = 220, left = 40, right = 12, top = 30, bottom = 28;
    const pw = W - left - right, ph = H - top - bottom;
    const max = Math.max(1, ...days.map((d) => Math.max(d.opened, d.notified, d.released)));
    const gw = pw / Math.max(days.length, 1), bw = Math.min(22, (gw * 0.8) / 3);
    const y = (v) => top + ph - (ph * v) / max;
    const every = Math.ceil(days.length / 10); // at most 10 day labels
    const ticks = [...new Set([0, Math.round(max / 2), max])];
    return svg("svg", { id: "days", class: "chart-svg", viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
      "aria-label": "Cases per day: " + days.map((d) => d.day + " opened " + d.opened + ", notified " + d.notified + ", released " + d.released).join("; ") },
      DAY_SERIES.map(([k, label], i) => svg("g", {},
        svg("rect", { x: left + i * 110, y: 6, width: 12, height: 12, rx: 2, class: "fill-" + k }),
        svg("text", { x: left + i * 110 + 18, y: 17, class: "chart-label" }, label))),
      ticks.map((t) => svg("g", {},
        svg("line", { x1: left, x2: W - right, y1: y(t), y2: y(t), class: "chart-grid" }),
        svg("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end", class: "chart-label" }, num(t)))),
      days.map((d, i) => {
        const x0 = left + i * gw + (gw - 3 * bw) / 2;
        return svg("g", { "data-day": d.day },
          DAY_SERIES.map(([k], j) => svg("rect", { x: x0 + j * bw, y: y(d[k]), width: Math.max(1, bw - 2), height: y(0) - y(d[k]), class: "fill-" + k },
            svg("title", {}, d.day + ": " + d[k] + " " + k))),
          i % every === 0 ? svg("text", { x: left + i * gw + gw / 2, y: H - 8, "text-anchor": "middle", class: "chart-label" }, d.day.slice(5)) : null);
      }));
  }
  function quantileWords(q, none) {
    if (!q || !q.n) return el("span", { class: "muted" }, none);
    return ["median " + span(q.median) + ", 90\u00a0% within " + span(q.p90), el("span", { class: "muted" }, " (" + num(q.n) + (q.n === 1 ? " case)" : " cases)"))];
  }

  async function deskPage() {
    document.title = "Desk · wormsign";
    const box = el("div", { id: "desk" });
    function render(s) {
      const fps = s.false_positives || {}, prec = s.precision || {};
      const kinds = [...new Set([...Object.keys(prec), ...Object.keys(fps)])].sort();
      const fpTotal = Object.values(fps).reduce((x, y) => x + y, 0);
      const count = (id, n, one, many) => el("span", { class: "count", id: id }, el("b", {}, num(n)), " " + (n === 1 ? one : many));
      fill(box,
        el("div", { class: "counts", id: "desk-counts" },
          count("desk-cases", s.cases, "case", "cases"), count("desk-walled", s.walled, "walled", "walled"),
          count("desk-blocked", s.blocked, "blocked", "blocked"), count("desk-self", s.self_releases, "self-release", "self-releases"),
          count("desk-repeat", s.repeat_offenders, "repeat offender", "repeat offenders"),
          count("desk-fp", fpTotal, "false positive", "false positives")),
        el("div", { class: "desk-grid" },
          el("section", { "aria-labelledby": "by-state-h" }, el("h2", { id: "by-state-h" }, "Cases by state"), stateChart(s.by_state || {})),
          el("section", { "aria-labelledby": "days-h" }, el("h2", { id: "days-h" }, "Per day (UTC)"),
            (s.days || []).length ? daysChart(s.days) : el("p", { class: "muted", id: "days" }, "No cases yet."))),
        el("div", { class: "desk-grid" },
        el("section", { "aria-labelledby": "times-h" }, el("h2", { id: "times-h" }, "How long it takes"),
          el("dl", { class: "facts", id: "desk-times" },
            el("dt", {}, "Open to the first notice"), el("dd", { id: "open-to-notice" }, quantileWords(s.open_to_notice, "no case notified yet")),
            el("dt", {}, "Notice to release"), el("dd", { id: "notice-to-release" }, quantileWords(s.notice_to_release, "no case released by the customer or the desk yet")),
            el("dt", {}, "Contained"), el("dd", {}, num(s.walled) + " walled, " + num(s.blocked) + " blocked, " + num(s.self_releases) + " released by the customer, " +
              num(s.repeat_offenders) + " reopened (repeat offenders)"))),
        el("section", { "aria-labelledby": "fp-h" }, el("h2", { id: "fp-h" }, "False positives by rule"),
          el("p", { class: "muted" }, "Precision is the share of a rule's ended cases (released, closed) the desk did not mark a false positive."),
          kinds.length ? el("table", { id: "precision", class: "board narrow" },
            el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Rule"), el("th", { scope: "col", class: "num" }, "False positives"), el("th", { scope: "col", class: "num" }, "Precision"))),
            el("tbody", {}, kinds.map((k) => el("tr", { "data-kind": k },
              el("td", {}, el("span", { class: "kind kind-" + k }, k)),
              el("td", { class: "num" }, num(fps[k] || 0)),
              el("td", { class: "num" }, k in prec ? pct(prec[k]) : el("span", { class: "muted", title: "no ended case of this rule yet" }, "–")))))) :
            el("p", { class: "muted", id: "precision" }, "No case has ended yet."))));
    }
    async function load(first) {
      let s;
      try { s = await casesAPI("/stats"); } catch (e) { if (first) showError(e); return false; }
      if (!s) { noRemediation("Desk"); return false; }
      render(s);
      return true;
    }
    main.replaceChildren(
      el("div", { class: "bar" }, el("h1", {}, "Abuse desk"),
        el("nav", { class: "tabs", "aria-label": "Remediation" }, el("a", { href: "/cases", class: "tab" }, "Cases"),
          el("a", { href: "/desk", class: "tab on", "aria-current": "page" }, "Desk"))),
      el("p", { class: "muted", id: "desk-what" }, "The desk's measures over the cases this process keeps (remediation.max_cases)."),
      box);
    if (await load(true)) refreshTimer = setInterval(load, 5000);
  }

  // ---- Keyboard ----
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    if (e.key === "b") location.href = "/";
    else if (e.key === "t") location.href = "/top";
    else if (e.key === "l") location.href = "/blocklist";
    else if (e.key === "c") location.href = "/cases";
    else if (e.key === "d") location.href = "/desk";
    else if (e.key === "r") route();
    else if (e.key === "n" || e.key === "p") listeners.forEach((l) => l.pageKey && l.pageKey(e.key));
    else if (e.key === "s") {
      e.preventDefault();
      document.getElementById("search-q").focus();
    }
    else if (e.key === "/") {
      const f = document.getElementById("state-filter");
      if (f) { e.preventDefault(); f.focus(); }
    }
  });

  let refreshTimer = null;
  function route() {
    listeners = [];
    clearInterval(refreshTimer);
    const p = location.pathname;
    let m;
    if (p === "/") board();
    else if ((m = p.match(/^\/incidents\/([^/]+)$/))) incidentPage(decodeURIComponent(m[1]));
    else if ((m = p.match(/^\/subscribers\/([^/]+)$/))) subscriberPage(decodeURIComponent(m[1]));
    else if ((m = p.match(/^\/customers\/([^/]+)$/))) customerPage(decodeURIComponent(m[1]));
    else if (p === "/search") return search();
    else if (p === "/top") topPage();
    else if (p === "/blocklist") blocklistPage();
    else if (p === "/blocklist/actions") actionsPage();
    else if (p === "/cases") casesPage();
    else if ((m = p.match(/^\/cases\/([^/]+)$/))) casePage(decodeURIComponent(m[1]));
    else if (p === "/desk") deskPage();
    else main.replaceChildren(el("p", {}, "No such page."));
    refreshAges();
  }
  route();
  connectStream();
})();
