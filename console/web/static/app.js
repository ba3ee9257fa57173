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
  function pct(x) { return (Math.round((x || 0) * 1000) / 10) + " %"; }
  function num(x) { return (x === undefined || x === null) ? "" : Number(x).toLocaleString("en-US"); }
  function score(x) { return (Math.round((x || 0) * 100) / 100).toFixed(2); }
  function shortID(id) { return id.length > 12 ? id.slice(0, 12) + "…" : id; }
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
      el("thead", {}, el("tr", {}, ["Kind", withSubscriber ? "Subscriber" : null, "Incident", "State", "Score", "First seen", "Destinations", "Ack"]
        .filter((h) => h).map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, incidents.map((a) => el("tr", { "data-id": a.id },
        el("td", {}, el("span", { class: "kind kind-" + a.kind }, a.kind)),
        withSubscriber ? el("td", { class: "mono" }, el("a", { href: "/subscribers/" + encodeURIComponent(a.subscriber_ip) }, a.subscriber_ip)) : null,
        el("td", { class: "mono" }, el("a", { href: "/incidents/" + encodeURIComponent(a.id) }, shortID(a.id))),
        el("td", {}, el("span", { class: "badge badge-" + a.state }, a.state)),
        el("td", { class: "num" }, score(a.score)),
        el("td", {}, utc(a.first_seen), " (", timeCell(a.first_seen), ")"),
        el("td", { class: "num" }, num(a.distinct_dsts)),
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
        ["Kind", "Subscriber", "Incident", "Score", "Age", "Trigger", "Destinations", "Failed", "State", "Ack"]
          .map((h) => el("th", { scope: "col" }, h)))),
      tbody);
    const empty = el("p", { id: "board-empty", class: "muted" }, "No incidents.");
    main.replaceChildren(
      el("div", { class: "bar" },
        el("h1", {}, "Incidents"),
        el("label", {}, "State ", stateSel),
        el("label", {}, "Kind ", kindSel)),
      countsBox, table, empty);

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
      const list = [...incidents.values()].filter(matches).sort(order);
      tbody.replaceChildren(...list.map((a) => {
        const ev = a.evidence || {};
        return el("tr", { "data-id": a.id, class: (fresh.has(a.id) ? "fresh " : "") + "state-" + a.state },
          el("td", {}, el("span", { class: "kind kind-" + a.kind }, a.kind)),
          el("td", { class: "mono" }, el("a", { href: "/subscribers/" + encodeURIComponent(a.subscriber_ip) }, a.subscriber_ip),
            a.subscriber_id ? el("div", { class: "small" }, customerLink(a.subscriber_id, "muted")) : null),
          el("td", { class: "mono" }, el("a", { href: "/incidents/" + encodeURIComponent(a.id), title: a.id }, shortID(a.id))),
          el("td", { class: "num" }, score(a.score)),
          el("td", {}, timeCell(a.first_seen)),
          el("td", {}, ev.trigger || ""),
          el("td", { class: "num" }, num(a.distinct_dsts)),
          el("td", { class: "num" }, a.kind === "smtp_fanout" ? pct(ev.failed_share) : "–"),
          el("td", {}, el("span", { class: "badge badge-" + a.state }, a.state)),
          el("td", {}, a.ack ? el("span", { class: "acked", title: (a.ack.note || "") + " (" + utc(a.ack.at) + ")" }, "✓ " + a.ack.by) : el("span", { class: "unacked" }, "not acked")));
      }));
      empty.hidden = list.length > 0;
      const total = Object.values(counts).reduce((x, y) => x + y, 0);
      countsBox.replaceChildren(el("span", { class: "count" }, el("b", {}, String(total)), " " + state),
        ...Object.keys(counts).sort().map((k) => el("span", { class: "count kind-" + k }, el("b", {}, String(counts[k])), " " + k)));
    }
    async function load() {
      const p = new URLSearchParams({ state: state, limit: "1000" });
      if (kind) p.set("kind", kind);
      try {
        const body = await api("/api/v1/incidents?" + p);
        incidents.clear();
        for (const i of body.incidents) incidents.set(i.id, i);
        counts = body.counts || {};
        render();
      } catch (e) { showError(e); }
    }
    function recount() {
      counts = {};
      for (const a of incidents.values()) {
        if (state === "open" && a.state === "resolved") continue;
        if (state === "resolved" && a.state !== "resolved") continue;
        counts[a.kind] = (counts[a.kind] || 0) + 1;
      }
    }
    function filter() {
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
    listeners.push({
      reload: load,
      alert: function (a) {
        const prev = incidents.get(a.id);
        a.ack = prev ? prev.ack : null;
        incidents.set(a.id, a);
        fresh.add(a.id);
        setTimeout(() => { fresh.delete(a.id); render(); }, 10000);
        recount();
        render();
      },
    });
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
    }
    if (ev.trigger) out.push("Opened by: " + ({
      threshold: "the fixed threshold of distinct destinations",
      slow_window: "the slow-sender threshold over 60 minutes",
      sequential: "the sequential test on first contacts, before the threshold",
      worm_pattern: "the worm pattern",
      baseline_departure: "a departure from the baseline",
    }[ev.trigger] || ev.trigger) + ".");
    if (ev.sampling_rate > 1) out.push("Flows are sampled 1:" + ev.sampling_rate + "; flow counts are scaled, distinct counts are as observed.");
    if (ev.group) out.push("Thresholds of subscriber group " + ev.group + ".");
    return out;
  }

  async function incidentPage(id) {
    let d;
    try { d = await api("/api/v1/incidents/" + encodeURIComponent(id)); } catch (e) { return showError(e); }
    const a = d.incident;
    document.title = a.kind + " " + a.subscriber_ip + " · wormsign";
    const ev = a.evidence || {};
    const samples = (ev.sample_dsts || []);
    const who = el("input", { id: "ack-by", name: "by", required: true, maxlength: "100", autocomplete: "name", value: localStorage.getItem("wormsign-ack-by") || "" });
    const note = el("textarea", { id: "ack-note", name: "note", rows: "2", maxlength: "2000" });
    const status = el("p", { id: "ack-status", role: "status" });
    const hold = el("input", { id: "ack-hold", name: "hold", type: "checkbox" });
    const form = el("form", { id: "ack-form", class: "ack-form" },
      el("label", { for: "ack-by" }, "Your name"), who,
      el("label", { for: "ack-note" }, "Note"), note,
      el("label", { for: "ack-hold", title: "where containment runs: postpone or lift this incident's block while you work on it" }, hold, " Hold the block"),
      el("button", { type: "submit", id: "ack-submit" }, a.ack ? "Acknowledge again" : "Acknowledge"), status);
    form.addEventListener("submit", async function (e) {
      e.preventDefault();
      localStorage.setItem("wormsign-ack-by", who.value);
      try {
        await api("/api/v1/incidents/" + encodeURIComponent(id) + "/ack", {
          method: "POST", headers: { "Content-Type": "application/json", "Accept": "application/json" },
          body: JSON.stringify({ by: who.value, note: note.value, hold: hold.checked }),
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
      el("dl", { class: "facts" },
        el("dt", {}, "Score"), el("dd", { id: "score" }, score(a.score)),
        el("dt", {}, "Customer"), el("dd", {}, a.subscriber_id ? customerLink(a.subscriber_id) : "–"),
        el("dt", {}, "Incident id"), el("dd", { class: "mono" }, a.id),
        el("dt", {}, "First seen"), el("dd", {}, utc(a.first_seen), " (", timeCell(a.first_seen), ")"),
        el("dt", {}, "Last seen"), el("dd", {}, utc(a.last_seen), " (", timeCell(a.last_seen), ")"),
        el("dt", {}, "Window"), el("dd", {}, utc(a.window_start) + " – " + utc(a.window_end)),
        el("dt", {}, "Flows"), el("dd", {}, num(a.flows)),
        el("dt", {}, "Distinct destinations"), el("dd", {}, num(a.distinct_dsts)),
        el("dt", {}, "Exporter"), el("dd", { class: "mono" }, a.exporter),
        el("dt", {}, "Acknowledged"), el("dd", { id: "ack-state" }, a.ack ? ("by " + a.ack.by + ", " + utc(a.ack.at) + (a.ack.note ? ": " + a.ack.note : "")) : "not yet")),
      el("section", { "aria-labelledby": "ev-h" },
        el("h2", { id: "ev-h" }, "Evidence"),
        el("ul", { id: "evidence", class: "evidence" }, evidenceWords(a).map((s) => el("li", {}, s))),
        samples.length ? el("p", {}, "Sample destinations (first contacts): ",
          el("span", { id: "samples", class: "mono" }, samples.join(", "))) : null),
      el("section", { "aria-labelledby": "tl-h" },
        el("h2", { id: "tl-h" }, "Timeline"),
        el("table", { id: "timeline", class: "board" },
          el("thead", {}, el("tr", {}, ["Window end (UTC)", "State", "Destinations", "Flows", "Score", "Failed", "Trigger"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, d.events.map((e) => el("tr", { class: "state-" + e.state },
            el("td", {}, utc(e.window_end)), el("td", {}, el("span", { class: "badge badge-" + e.state }, e.state)),
            el("td", { class: "num" }, num(e.distinct_dsts)), el("td", { class: "num" }, num(e.flows)),
            el("td", { class: "num" }, score(e.score)),
            el("td", { class: "num" }, e.kind === "smtp_fanout" ? pct((e.evidence || {}).failed_share) : "–"),
            el("td", {}, (e.evidence || {}).trigger || "")))))),
      el("section", { "aria-labelledby": "ack-h" },
        el("h2", { id: "ack-h" }, "Acknowledgements"),
        d.acks.length ? el("ul", { id: "acks" }, d.acks.map((k) => el("li", {}, utc(k.at) + " " + k.by + (k.note ? ": " + k.note : "")))) :
          el("p", { class: "muted", id: "acks" }, "None yet."),
        form));
  }

  // ---- Subscriber page ----
  async function subscriberPage(ip) {
    let d;
    try { d = await api("/api/v1/subscribers/" + encodeURIComponent(ip) + "?hours=24"); } catch (e) { return showError(e); }
    document.title = d.subscriber_ip + " · wormsign";
    const chart = (metric, label) => el("figure", { class: "chart" },
      el("img", { src: "/api/v1/subscribers/" + encodeURIComponent(ip) + "/chart.svg?hours=24&metric=" + metric, alt: label + " for " + d.subscriber_ip + ", last 24 hours", width: "960", height: "200" }));
    const total = d.series.reduce((s, p) => s + p.flows, 0);
    const smtp = d.series.reduce((s, p) => s + p.smtp_flows, 0);
    const sources = [...new Set(d.holdings.map((h) => h.source))];
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
      el("p", {}, "Last 24 hours (" + utc(d.from) + " – " + utc(d.to) + "): " + num(total) + " flows, " + num(smtp) + " of them to TCP port 25, in " + d.series.length + " active minutes."),
      el("section", { id: "charts" },
        chart("flows", "Flows per minute"),
        chart("smtp_flows", "TCP/25 flows per minute"),
        chart("destinations", "Distinct destinations per minute"),
        chart("smtp_destinations", "Distinct TCP/25 destinations per minute")),
      el("h2", {}, "Incidents"),
      d.incidents.length ? incidentsTable("sub-incidents", d.incidents, false) : el("p", { class: "muted" }, "No incidents."));
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

  // ---- Top TCP/25 talkers ----
  async function topPage() {
    document.title = "Top TCP/25 talkers · wormsign";
    let d;
    try { d = await api("/api/v1/top/smtp?window=1h&limit=20"); } catch (e) { return showError(e); }
    main.replaceChildren(
      el("h1", {}, "Top TCP/25 talkers, last hour"),
      el("p", { class: "muted" }, "Subscribers by distinct destinations on TCP port 25 since " + utc(d.from) + "."),
      d.talkers.length ? el("table", { id: "top", class: "board" },
        el("thead", {}, el("tr", {}, ["#", "Subscriber", "Distinct TCP/25 destinations", "TCP/25 flows", "All flows"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, d.talkers.map((t, i) => el("tr", {},
          el("td", { class: "num" }, String(i + 1)),
          el("td", { class: "mono" }, el("a", { href: "/subscribers/" + encodeURIComponent(t.subscriber_ip) }, t.subscriber_ip)),
          el("td", { class: "num" }, num(t.smtp_destinations)),
          el("td", { class: "num" }, num(t.smtp_flows)),
          el("td", { class: "num" }, num(t.flows)))))) : el("p", { class: "muted" }, "No TCP/25 traffic in the last hour."));
  }

  // ---- Keyboard ----
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    if (e.key === "b") location.href = "/";
    else if (e.key === "t") location.href = "/top";
    else if (e.key === "r") route();
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
    else main.replaceChildren(el("p", {}, "No such page."));
    refreshAges();
  }
  route();
  connectStream();
})();
