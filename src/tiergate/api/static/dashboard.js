// tiergate dashboard: polls dashboard/data (cumulative counters) once a second and turns
// successive snapshots into rates and latency quantiles. Vanilla JS, no dependencies.
// Every number on the page sits in an element with a stable id (also its data-metric),
// its raw value in data-value, so a browser test can read it.
"use strict";
(function () {
  const POLL_MS = 1000;
  const RATE_WINDOW_S = 5;
  const LATENCY_WINDOW_S = 10;
  const KEEP_S = 130;
  const SPARK_POINTS = 60;
  const DATA_URL = new URL("dashboard/data", document.baseURI).toString();

  const history = []; // snapshots, oldest first
  const sparks = { rps: [], escalation: [], p50: [], p99: [], cost: [] };
  let tierNames = "";

  const $ = (id) => document.getElementById(id);

  function set(id, value, text, cls) {
    const el = $(id);
    if (!el) return;
    el.textContent = text;
    el.dataset.value = value === null || value === undefined || Number.isNaN(value) ? "" : String(value);
    if (!el.dataset.metric) el.dataset.metric = id;
    if (cls !== undefined) {
      el.classList.remove("good", "warn", "bad");
      if (cls) el.classList.add(cls);
    }
  }

  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + (isNum(b) ? b : 0), 0);

  function fmt(x, digits) {
    if (!isNum(x)) return "–";
    const d = digits === undefined ? (Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2) : digits;
    return x.toFixed(d);
  }
  const pct = (x, d) => (isNum(x) ? (100 * x).toFixed(d === undefined ? 1 : d) + " %" : "–");
  function money(x) {
    if (!isNum(x)) return "–";
    if (x === 0) return "0";
    return Math.abs(x) >= 0.01 ? x.toFixed(4) : x.toExponential(2);
  }

  // The snapshot about `seconds` before the newest one (at least the one before it).
  function base(seconds) {
    const cur = history[history.length - 1];
    if (history.length < 2) return null;
    for (const s of history) {
      if (cur.t - s.t <= seconds + 0.25 && s !== cur) return s;
    }
    return history[history.length - 2];
  }

  function totalRequests(s) { return s.requests ? s.requests.total : 0; }
  function tierOf(s, name) { return (s.tiers || []).find((t) => t.name === name) || null; }
  function tierRequests(s, name) { const t = tierOf(s, name); return t ? sum(t.requests) : 0; }
  function tierCalls(s, name, outcome) {
    const t = tierOf(s, name);
    if (!t) return 0;
    return outcome ? t.calls[outcome] || 0 : sum(t.calls);
  }
  function tierCost(s, name) { const t = tierOf(s, name); return t ? t.cost : 0; }
  function totalCost(s) { return (s.tiers || []).reduce((a, t) => a + t.cost, 0); }
  function outcomeTotal(s, outcome) {
    return (s.requests && s.requests[outcome]) || 0;
  }

  function rate(f, windowS) {
    const cur = history[history.length - 1];
    const b = base(windowS);
    if (!b || cur.t <= b.t) return null;
    return (f(cur) - f(b)) / (cur.t - b.t);
  }

  // num/den over the window; since start when nothing happened in the window.
  function ratio(num, den, windowS) {
    const cur = history[history.length - 1];
    const b = base(windowS);
    if (b) {
      const d = den(cur) - den(b);
      if (d > 0) return { value: (num(cur) - num(b)) / d, scope: "window" };
    }
    const d0 = den(cur);
    return d0 > 0 ? { value: num(cur) / d0, scope: "start" } : { value: null, scope: "none" };
  }

  // Prometheus-style histogram_quantile over cumulative bucket counts.
  function quantile(q, le, counts, total) {
    if (!(total > 0)) return null;
    const rank = q * total;
    let prevCount = 0;
    let prevLe = 0;
    for (let i = 0; i < le.length; i++) {
      if (counts[i] >= rank) {
        const inBucket = counts[i] - prevCount;
        if (inBucket <= 0) return le[i];
        return prevLe + ((le[i] - prevLe) * (rank - prevCount)) / inBucket;
      }
      prevCount = counts[i];
      prevLe = le[i];
    }
    return le.length ? le[le.length - 1] : null; // in the +Inf bucket: the largest bound
  }

  function latency() {
    const cur = history[history.length - 1];
    const h = cur.latency;
    if (!h || !h.le) return { p50: null, p99: null, scope: "none" };
    const b = base(LATENCY_WINDOW_S);
    if (b && b.latency && b.latency.le.length === h.le.length) {
      const total = h.count - b.latency.count;
      if (total > 0) {
        const counts = h.counts.map((c, i) => c - b.latency.counts[i]);
        return { p50: quantile(0.5, h.le, counts, total), p99: quantile(0.99, h.le, counts, total), scope: "window" };
      }
    }
    return { p50: quantile(0.5, h.le, h.counts, h.count), p99: quantile(0.99, h.le, h.counts, h.count), scope: "start" };
  }

  function spark(id, values, slo) {
    const svg = $(id);
    if (!svg) return;
    const pts = values.filter(isNum);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (pts.length < 2) return;
    let max = Math.max(...pts, isNum(slo) ? slo : -Infinity);
    if (!(max > 0)) max = 1;
    const ns = "http://www.w3.org/2000/svg";
    const line = document.createElementNS(ns, "polyline");
    const step = 100 / (SPARK_POINTS - 1);
    const offset = 100 - step * (values.length - 1);
    line.setAttribute("points", values.map((v, i) => (isNum(v) ? `${(offset + i * step).toFixed(2)},${(23 - (22 * v) / max).toFixed(2)}` : null)).filter(Boolean).join(" "));
    svg.appendChild(line);
    if (isNum(slo)) {
      const y = (23 - (22 * slo) / max).toFixed(2);
      const l = document.createElementNS(ns, "line");
      l.setAttribute("class", "slo");
      l.setAttribute("x1", "0"); l.setAttribute("x2", "100"); l.setAttribute("y1", y); l.setAttribute("y2", y);
      svg.appendChild(l);
    }
  }

  function push(name, v) {
    const arr = sparks[name];
    arr.push(isNum(v) ? v : null);
    while (arr.length > SPARK_POINTS) arr.shift();
  }

  function cell(row, id, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    if (id) {
      const span = document.createElement("span");
      span.id = id;
      span.dataset.metric = id;
      span.textContent = "–";
      td.appendChild(span);
    }
    row.appendChild(td);
    return td;
  }

  function buildTierRows(tiers) {
    const body = $("tier-rows");
    while (body.firstChild) body.removeChild(body.firstChild);
    for (const t of tiers) {
      const n = t.name;
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      const b = document.createElement("b");
      b.textContent = n;
      name.appendChild(b);
      tr.appendChild(name);
      cell(tr, `rps-${n}`, "num");
      cell(tr, `accepted-${n}`, "num");
      cell(tr, `escalated-${n}`, "num");
      cell(tr, `errors-${n}`, "num");
      cell(tr, `threshold-${n}`, "num");
      cell(tr, `breaker-${n}`);
      const sh = cell(tr, `shadow-${n}`);
      const shb = document.createElement("span");
      shb.className = "bounds";
      shb.id = `shadow-bounds-${n}`;
      sh.appendChild(document.createTextNode(" "));
      sh.appendChild(shb);
      const lb = cell(tr, `labelled-${n}`);
      const lbb = document.createElement("span");
      lbb.className = "bounds";
      lbb.id = `labelled-bounds-${n}`;
      lb.appendChild(document.createTextNode(" "));
      lb.appendChild(lbb);
      cell(tr, `cost-rate-${n}`, "num");
      body.appendChild(tr);
    }
  }

  function bounds(id, lower, upper, n, extra) {
    const el = $(id);
    if (!el) return;
    if (!n) el.textContent = "no samples";
    else el.textContent = isNum(lower) && isNum(upper) ? `[${pct(lower)}, ${pct(upper)}] n=${n}${extra || ""}` : `n=${n}`;
    el.dataset.lower = isNum(lower) ? String(lower) : "";
    el.dataset.upper = isNum(upper) ? String(upper) : "";
  }

  function renderTiers(cur, monitor, target) {
    const names = cur.tiers.map((t) => t.name).join("\u0000");
    if (names !== tierNames) { buildTierRows(cur.tiers); tierNames = names; }
    const shadow = (monitor && monitor.shadow && monitor.shadow.tiers) || {};
    const labelled = (monitor && monitor.labelled && monitor.labelled.tiers) || {};
    const last = cur.tiers.length - 1;
    cur.tiers.forEach((t, i) => {
      const n = t.name;
      const r = rate((s) => tierRequests(s, n), RATE_WINDOW_S);
      set(`rps-${n}`, r, fmt(r));
      set(`accepted-${n}`, t.calls.accepted, fmt(t.calls.accepted, 0));
      set(`escalated-${n}`, t.calls.escalated, fmt(t.calls.escalated, 0));
      const errors = (t.calls.error || 0) + (t.calls.timeout || 0);
      set(`errors-${n}`, errors, fmt(errors, 0), errors > 0 ? "warn" : "");
      set(`threshold-${n}`, t.threshold, i === last ? "last tier" : fmt(t.threshold, 3));
      const br = t.breaker || "–";
      set(`breaker-${n}`, br, br.replace("_", "-"), br === "open" ? "bad" : br === "half_open" ? "warn" : "good");
      const c = rate((s) => tierCost(s, n), RATE_WINDOW_S);
      set(`cost-rate-${n}`, c, money(c));

      const sh = shadow[n];
      if (sh && sh.window) {
        const w = sh.window;
        const low = isNum(w.lower) && isNum(target) && w.lower < target;
        set(`shadow-${n}`, w.estimate, pct(w.estimate), sh.state === "alarm" ? "bad" : low ? "warn" : "");
        bounds(`shadow-bounds-${n}`, w.lower, w.upper, w.n);
      } else {
        set(`shadow-${n}`, null, i === last ? "reference" : "–");
        if (i === last) $(`shadow-bounds-${n}`).textContent = "";
        else bounds(`shadow-bounds-${n}`, null, null, 0);
      }
      const lb = labelled[n];
      if (lb && lb.window) {
        const w = lb.window;
        const low = isNum(w.lower) && isNum(target) && w.n > 0 && w.lower < target;
        set(`labelled-${n}`, w.accuracy, pct(w.accuracy), low ? "warn" : "");
        bounds(`labelled-bounds-${n}`, w.lower, w.upper, w.n);
      } else {
        set(`labelled-${n}`, null, "–");
        bounds(`labelled-bounds-${n}`, null, null, 0);
      }
    });
  }

  function renderDegraded(cur) {
    const body = $("degraded-rows");
    const reasons = Object.keys(cur.degraded || {}).sort();
    while (body.firstChild) body.removeChild(body.firstChild);
    if (!reasons.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = document.createElement("td");
      td.colSpan = 3;
      td.textContent = "none";
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    for (const reason of reasons) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.textContent = reason;
      tr.appendChild(td);
      const key = reason.replace(/[^A-Za-z0-9_-]/g, "_");
      cell(tr, `degraded-${key}`, "num");
      cell(tr, `degraded-rate-${key}`, "num");
      body.appendChild(tr);
      const total = cur.degraded[reason];
      set(`degraded-${key}`, total, fmt(total, 0));
      const r = rate((s) => (s.degraded || {})[reason] || 0, RATE_WINDOW_S);
      set(`degraded-rate-${key}`, r, fmt(r));
    }
  }

  function renderDrift(monitor) {
    const drift = (monitor && monitor.drift) || {};
    const alarms = drift.alarms || [];
    const on = alarms.length > 0;
    set("drift-state", on ? 1 : 0, on ? "ALARM" : monitor ? "ok" : "off", on ? "bad" : monitor ? "good" : "");
    $("drift-card").classList.toggle("bad", on);
    $("drift-banner").hidden = !on;
    const list = $("drift-alarms");
    while (list.firstChild) list.removeChild(list.firstChild);
    for (const a of alarms) {
      const li = document.createElement("li");
      li.dataset.tier = a.tier || "";
      li.dataset.kind = a.kind || "";
      li.dataset.estimate = a.raised_at ? String(a.raised_at.estimate) : "";
      li.textContent = `${a.tier || "?"} · ${a.kind || "?"}${a.since ? " since " + a.since : ""}${a.detail ? " — " + a.detail : ""}`;
      list.appendChild(li);
    }
    list.dataset.value = String(alarms.length);
    $("drift-note").textContent = on ? `${alarms.length} alarm${alarms.length > 1 ? "s" : ""} raised` : monitor ? "no alarm" : "monitor off";

    const body = $("input-drift-rows");
    const input = drift.input || {};
    const tiers = Object.keys(input);
    while (body.firstChild) body.removeChild(body.firstChild);
    if (!tiers.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = document.createElement("td");
      td.colSpan = 5;
      td.textContent = monitor ? "no reference in the calibration" : "monitor off";
      tr.appendChild(td);
      body.appendChild(tr);
    }
    for (const n of tiers) {
      const d = input[n] || {};
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.textContent = n;
      tr.appendChild(td);
      cell(tr, `input-statistic-${n}`, "num");
      cell(tr, `input-pvalue-${n}`, "num");
      cell(tr, `input-n-${n}`, "num");
      cell(tr, `input-state-${n}`);
      body.appendChild(tr);
      set(`input-statistic-${n}`, d.statistic, fmt(d.statistic));
      set(`input-pvalue-${n}`, d.pvalue, isNum(d.pvalue) ? d.pvalue.toPrecision(2) : "–");
      set(`input-n-${n}`, d.n, fmt(d.n, 0));
      set(`input-state-${n}`, d.alarm ? 1 : 0, d.alarm ? "ALARM" : "ok", d.alarm ? "bad" : "good");
    }

    const changes = (drift.threshold_changes || []).slice(-10).reverse();
    const ul = $("threshold-changes");
    while (ul.firstChild) ul.removeChild(ul.firstChild);
    ul.dataset.value = String((drift.threshold_changes || []).length);
    if (!changes.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "none";
      ul.appendChild(li);
    }
    for (const c of changes) {
      const li = document.createElement("li");
      const from = isNum(c.from) ? c.from.toFixed(3) : "–";
      const to = isNum(c.to) ? c.to.toFixed(3) : "–";
      li.textContent = `${c.at || ""} · ${c.tier}: ${from} → ${to} (${c.reason || "?"})`;
      ul.appendChild(li);
    }
  }

  function renderMonitor(monitor) {
    const sh = (monitor && monitor.shadow) || null;
    set("shadow-rate", sh ? sh.rate : null, sh && isNum(sh.rate) ? pct(sh.rate, 1) : "–");
    set("shadow-sent", sh ? sh.sent : null, sh ? fmt(sh.sent, 0) : "–");
    const dropped = sh && sh.dropped ? sum(sh.dropped) : null;
    const parts = sh && sh.dropped ? Object.entries(sh.dropped).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`) : [];
    set("shadow-dropped", dropped, isNum(dropped) ? fmt(dropped, 0) + (parts.length ? ` (${parts.join(", ")})` : "") : "–");
    set("shadow-cost", sh ? sh.cost : null, sh ? money(sh.cost) : "–");
    const lab = (monitor && monitor.labelled) || null;
    set("labels-received", lab ? lab.received : null, lab ? fmt(lab.received, 0) : "–");
    set("labels-unknown", lab ? lab.unknown : null, lab ? fmt(lab.unknown, 0) : "–");
    const cache = (lab && lab.cache) || {};
    const text = Object.entries(cache).map(([k, v]) => {
      const w = (v && v.window) || {};
      return `${k} ${w.n ? pct(w.accuracy) + " n=" + w.n : "–"}`;
    });
    set("labelled-cache", null, text.length ? text.join(" · ") : "–");
    const target = monitor ? monitor.target_accuracy : null;
    set("target-accuracy", target, isNum(target) ? pct(target) : "–");
    return target;
  }

  function render() {
    const cur = history[history.length - 1];
    const slo = cur.slo || {};
    set("service-name", cur.service, cur.service || "");
    document.title = `tiergate · ${cur.service || "dashboard"}`;
    set("calibration-version", cur.calibration_version, cur.calibration_version || "none");
    set("inflight", cur.inflight, fmt(cur.inflight, 0));

    const rps = rate(totalRequests, RATE_WINDOW_S);
    set("rps-total", rps, fmt(rps));
    set("requests-total", totalRequests(cur), `${fmt(totalRequests(cur), 0)} answered since start`);
    push("rps", rps);

    const first = cur.tiers.length > 1 ? cur.tiers[0].name : null;
    let esc = { value: null, scope: "none" };
    if (first) {
      esc = ratio((s) => tierCalls(s, first, "escalated"), (s) => tierCalls(s, first) - tierCalls(s, first, "skipped"), RATE_WINDOW_S);
    }
    set("escalation-rate", esc.value, first ? pct(esc.value) : "single tier");
    $("escalation-scope").textContent = first ? `of ${first}'s calls, ${esc.scope === "start" ? "since start" : "last 5 s"}` : "";
    push("escalation", esc.value);

    const lat = latency();
    const p50 = isNum(lat.p50) ? lat.p50 * 1000 : null;
    const p99 = isNum(lat.p99) ? lat.p99 * 1000 : null;
    const p99slo = isNum(slo.p99_ms) ? slo.p99_ms : null;
    set("p50-ms", p50, fmt(p50));
    set("p99-ms", p99, fmt(p99), isNum(p99) && isNum(p99slo) ? (p99 > p99slo ? "bad" : "good") : "");
    set("p99-slo", p99slo, isNum(p99slo) ? `${p99slo} ms` : "none");
    $("latency-scope").textContent = lat.scope === "start" ? "since start (idle)" : "last 10 s";
    push("p50", p50);
    push("p99", p99);

    const cost = ratio(totalCost, totalRequests, LATENCY_WINDOW_S);
    const per1k = isNum(cost.value) ? cost.value * 1000 : null;
    const costSlo = isNum(slo.cost_per_1k) ? slo.cost_per_1k : null;
    set("cost-per-1k", per1k, money(per1k), isNum(per1k) && isNum(costSlo) ? (per1k > costSlo ? "bad" : "good") : "");
    set("cost-slo", costSlo, isNum(costSlo) ? money(costSlo) : "none");
    push("cost", per1k);

    let cacheScope = "window";
    for (const kind of ["exact", "semantic"]) {
      const seen = history.some((s) => s.cache && s.cache[kind]);
      if (!seen) { set(`cache-${kind}`, null, "off"); continue; }
      const r = ratio((s) => ((s.cache || {})[kind] || {}).hit || 0, (s) => sum((s.cache || {})[kind]), RATE_WINDOW_S);
      if (r.scope === "start") cacheScope = "start";
      set(`cache-${kind}`, r.value, pct(r.value));
    }
    $("cache-scope").textContent = `share of lookups, ${cacheScope === "start" ? "since start" : "last 5 s"}`;

    const deg = ratio((s) => outcomeTotal(s, "degraded"), totalRequests, RATE_WINDOW_S);
    set("degraded-rate", deg.value, pct(deg.value), isNum(deg.value) && deg.value > 0.01 ? "bad" : "");
    const failed = ratio((s) => outcomeTotal(s, "failed"), totalRequests, RATE_WINDOW_S);
    set("failed-rate", failed.value, pct(failed.value), isNum(failed.value) && failed.value > 0 ? "bad" : "");
    set("shed-total", cur.shed, fmt(cur.shed, 0));

    const monitor = cur.monitor || null;
    const target = renderMonitor(monitor);
    renderTiers(cur, monitor, target);
    renderDegraded(cur);
    renderDrift(monitor);

    spark("spark-rps", sparks.rps);
    spark("spark-escalation", sparks.escalation);
    spark("spark-p50", sparks.p50);
    spark("spark-p99", sparks.p99, p99slo);
    spark("spark-cost", sparks.cost, costSlo);
  }

  function status(text, cls) {
    const el = $("status");
    el.textContent = text;
    el.dataset.value = cls;
    el.className = `pill ${cls}`;
  }

  // With API keys on and `metrics` protected, the data needs a key with that right. A
  // browser cannot send one on navigation, so the page takes it from the URL's fragment
  // (`/dashboard#key=...`: a fragment never reaches the server or its logs), keeps it in
  // this tab's sessionStorage and drops it from the address bar.
  const KEY_ITEM = "tiergate-dashboard-key";
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("key")) {
    sessionStorage.setItem(KEY_ITEM, fragment.get("key"));
    history.replaceState(null, "", location.pathname + location.search);
  }

  async function poll() {
    const started = performance.now();
    try {
      const headers = { accept: "application/json" };
      const key = sessionStorage.getItem(KEY_ITEM);
      if (key) headers.authorization = `Bearer ${key}`;
      const res = await fetch(DATA_URL, { cache: "no-store", headers });
      const body = await res.json();
      if (!res.ok) {
        const denied = res.status === 401 || res.status === 403;
        status(res.status === 503 ? "not ready" : denied ? "key needed" : `HTTP ${res.status}`, "warn");
        if (denied) $("updated").textContent = "open /dashboard#key=<a key with the metrics right>";
        else if (body && body.error) $("updated").textContent = body.error.message || "";
        if (denied) return setTimeout(poll, POLL_MS);
        if (body && body.error) $("updated").textContent = body.error.message || "";
      } else {
        const prev = history[history.length - 1];
        // A restarted server starts its counters over: so does the page.
        if (prev && (body.t < prev.t || totalRequests(body) < totalRequests(prev))) history.length = 0;
        history.push(body);
        while (history.length > 2 && body.t - history[0].t > KEEP_S) history.shift();
        render();
        status(body.draining ? "draining" : "live", body.draining ? "warn" : "live");
        const now = new Date();
        set("updated", history.length, now.toLocaleTimeString());
      }
    } catch (err) {
      status("unreachable", "down");
    }
    setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
  }

  poll();
})();
