// sieve dashboard: vanilla JS, no dependencies. Reads the service's JSON
// endpoints every few seconds and draws charts as inline SVG. Every request
// goes through `api()`, which never throws: failures are shown in the page.
"use strict";

(() => {
  const KEY_STORE = "sieve.dashboard.apiKey";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#3461d1", "#e07b28", "#1f8a4c", "#9b4dca", "#c2372f", "#0f8fa3"];
  const MAX_EXPERIMENTS = 8;

  const state = { meta: null, busy: false, pending: false, timer: null, refreshes: 0 };

  // ------------------------------------------------------------ DOM helpers
  /** An element with attributes and children (strings become text nodes: no HTML injection). */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  /** An SVG element, like `h`. */
  function s(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
  }

  function append(node, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  const $ = (sel, root = document) => root.querySelector(sel);

  function section(id) {
    return document.getElementById(id);
  }

  function showError(id, message) {
    const box = $(".error", section(id));
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
    const placeholder = $(".loading", section(id));
    if (message && placeholder) placeholder.remove(); // nothing is coming: say so once
  }

  function setBody(id, ...children) {
    const body = $(".body", section(id));
    body.replaceChildren();
    append(body, children);
  }

  function notice(text) {
    return h("p", { class: "notice" }, text);
  }

  function banner(message) {
    const b = document.getElementById("banner");
    b.textContent = message || "";
    b.hidden = !message;
  }

  // ------------------------------------------------------------ formatting
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const fmtInt = (x) => (isNum(x) ? Math.round(x).toLocaleString("en-US") : "–");
  const fmtPct = (x, digits = 2) => (isNum(x) ? `${(x * 100).toFixed(digits)}%` : "–");

  function fmtNum(x) {
    if (!isNum(x)) return "–";
    if (Math.abs(x) >= 1000) return x.toLocaleString("en-US", { maximumFractionDigits: 1 });
    if (Number.isInteger(x)) return String(x);
    return x.toLocaleString("en-US", { maximumSignificantDigits: 4 });
  }

  function fmtP(p) {
    if (!isNum(p)) return "–";
    return p < 0.001 ? "<0.001" : p.toFixed(3);
  }

  function fmtSigned(x, unit, scale = 1, digits = 2) {
    if (!isNum(x)) return "–";
    const v = x * scale;
    return `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(digits)}${unit}`;
  }

  function fmtClock(epoch, withDate = false) {
    if (!isNum(epoch)) return "–";
    const d = new Date(epoch * 1000);
    const opts = { hour: "2-digit", minute: "2-digit", hour12: false };
    if (withDate) Object.assign(opts, { month: "short", day: "numeric" });
    return d.toLocaleString("en-GB", opts);
  }

  function fmtDateTime(epoch) {
    if (!isNum(epoch)) return "–";
    const d = new Date(epoch * 1000);
    return d.toLocaleString("en-GB", {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    });
  }

  function ago(epoch) {
    if (!isNum(epoch)) return "–";
    const sec = Math.max(0, Date.now() / 1000 - epoch);
    if (sec < 60) return `${Math.round(sec)} s ago`;
    if (sec < 3600) return `${Math.round(sec / 60)} min ago`;
    if (sec < 86400) return `${(sec / 3600).toFixed(1)} h ago`;
    return `${(sec / 86400).toFixed(1)} days ago`;
  }

  const isRate = (metric) => /rate|ctr/i.test(metric || "");

  // --------------------------------------------------------------- the API
  function getKey() {
    try {
      return window.localStorage.getItem(KEY_STORE) || "";
    } catch (e) {
      return "";
    }
  }

  function setKey(key) {
    try {
      if (key) window.localStorage.setItem(KEY_STORE, key);
      else window.localStorage.removeItem(KEY_STORE);
    } catch (e) {
      banner("This browser does not let the page store the key (localStorage is blocked).");
    }
  }

  /** `detail` of an error body as one readable line. */
  function describe(status, body) {
    const detail = body && body.detail;
    let text = "";
    if (typeof detail === "string") text = detail;
    else if (Array.isArray(detail)) {
      text = detail
        .map((d) => `${Array.isArray(d.loc) ? d.loc.join(".") + ": " : ""}${d.msg || JSON.stringify(d)}`)
        .join("; ");
    }
    return `HTTP ${status}${text ? ` — ${text}` : ""}`;
  }

  /** GET `path` as JSON: {ok, status, data, error}; never throws. */
  async function api(path) {
    const headers = { Accept: "application/json" };
    const key = getKey();
    if (key) headers["X-API-Key"] = key;
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store" });
    } catch (e) {
      return { ok: false, status: 0, data: null, error: `the service is unreachable (${e.message || e})` };
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      return { ok: false, status: response.status, data: body, error: describe(response.status, body) };
    }
    return { ok: true, status: response.status, data: body, error: null };
  }

  // ----------------------------------------------------------------- charts
  /** About `count` round tick values covering [lo, hi]. */
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) hi = lo + 1;
    const raw = (hi - lo) / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
    const first = Math.floor(lo / step + 1e-9) * step;
    const ticks = [];
    for (let k = 0; k < 50; k++) { // up to the first tick at or above `hi`
      const v = Number((first + k * step).toPrecision(12));
      ticks.push(v);
      if (v >= hi - step * 1e-9) break;
    }
    if (ticks.length < 2) ticks.push(Number((first + step).toPrecision(12)));
    return ticks;
  }

  /**
   * A line chart over time: `times` (epoch seconds, one per point) and
   * `series` [{name, values}] (null values break the line).
   */
  function lineChart(times, series, opts = {}) {
    const W = 560, H = 230;
    const m = { l: 52, r: 14, t: 28, b: 30 };
    const fmtY = opts.format || fmtNum;
    const svg = s("svg", {
      class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "chart",
      "data-chart": opts.id || null,
    });
    const all = series.flatMap((x) => x.values).filter(isNum);
    let top = all.length ? Math.max(...all) : 0;
    if (!(top > 0)) top = opts.emptyTop || 1;
    if (opts.integer && top < 4) top = 4; // counts: no fractional ticks
    const ticks = niceTicks(0, top, 4);
    const yMax = ticks[ticks.length - 1];
    const n = times.length;
    const x0 = times[0], x1 = times[n - 1];
    const X = (t) => (n < 2 || x1 === x0 ? (m.l + W - m.r) / 2 : m.l + ((t - x0) / (x1 - x0)) * (W - m.l - m.r));
    const Y = (v) => H - m.b - (v / yMax) * (H - m.t - m.b);

    for (const t of ticks) {
      svg.append(s("line", { class: "grid", x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t) }));
      svg.append(s("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end", text: fmtY(t) }));
    }
    svg.append(s("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    svg.append(s("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));

    const span = n > 1 ? x1 - x0 : 0;
    const labels = Math.min(6, n);
    for (let k = 0; k < labels; k++) {
      const i = labels < 2 ? 0 : Math.round((k * (n - 1)) / (labels - 1));
      svg.append(s("line", { class: "axis", x1: X(times[i]), x2: X(times[i]), y1: H - m.b, y2: H - m.b + 4 }));
      svg.append(s("text", {
        x: X(times[i]), y: H - m.b + 17, "text-anchor": "middle", text: fmtClock(times[i], span > 86400),
      }));
    }
    if (opts.yLabel) {
      svg.append(s("text", { x: m.l, y: 12, "text-anchor": "start", text: opts.yLabel }));
    }

    series.forEach((line, k) => {
      const color = line.color || COLORS[k % COLORS.length];
      let run = [];
      const runs = [];
      line.values.forEach((v, i) => {
        if (isNum(v)) run.push(`${X(times[i]).toFixed(1)},${Y(v).toFixed(1)}`);
        else if (run.length) { runs.push(run); run = []; }
      });
      if (run.length) runs.push(run);
      const g = s("g", { "data-series": line.name });
      for (const r of runs) {
        g.append(s("polyline", { class: "series", stroke: color, points: r.join(" ") }));
      }
      if (n <= 120) {
        line.values.forEach((v, i) => {
          if (!isNum(v)) return;
          g.append(s("circle", { class: "pt", cx: X(times[i]).toFixed(1), cy: Y(v).toFixed(1), r: 2.6, fill: color },
            s("title", { text: `${line.name} at ${fmtClock(times[i], span > 86400)}: ${fmtY(v)}` })));
        });
      }
      svg.append(g);
    });

    // legend, top right
    const legend = s("g", { class: "legend" });
    let lx = W - m.r;
    [...series].reverse().forEach((line, rk) => {
      const k = series.length - 1 - rk;
      const color = line.color || COLORS[k % COLORS.length];
      const width = 18 + line.name.length * 6.4;
      lx -= width + 10;
      legend.append(s("rect", { x: lx, y: 6, width: 10, height: 10, rx: 2, fill: color }));
      legend.append(s("text", { x: lx + 14, y: 15, text: line.name }));
    });
    svg.append(legend);
    return svg;
  }

  /**
   * Point estimates with interval whiskers, one row per arm: rows
   * [{label, estimate, low, high}]; the first row's estimate is drawn as a
   * dashed reference line (the control).
   */
  function intervalChart(rows, opts = {}) {
    const fmt = opts.format || fmtNum;
    const rowH = 32;
    const m = { l: 120, r: 20, t: 8, b: 30 };
    const W = 520, H = m.t + m.b + rowH * rows.length;
    const svg = s("svg", {
      class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "intervals",
      "data-chart": opts.id || null,
    });
    const lows = rows.map((r) => (isNum(r.low) ? r.low : r.estimate));
    const highs = rows.map((r) => (isNum(r.high) ? r.high : r.estimate));
    let lo = Math.min(...lows), hi = Math.max(...highs);
    if (!(hi > lo)) { lo -= 0.01; hi += 0.01; }
    const pad = (hi - lo) * 0.08;
    const ticks = niceTicks(Math.max(opts.floor ?? -Infinity, lo - pad), hi + pad, 4);
    const a = ticks[0], b = ticks[ticks.length - 1];
    const X = (v) => m.l + ((v - a) / (b - a)) * (W - m.l - m.r);

    for (const t of ticks) {
      svg.append(s("line", { class: "grid", x1: X(t), x2: X(t), y1: m.t, y2: H - m.b }));
      svg.append(s("text", { x: X(t), y: H - m.b + 16, "text-anchor": "middle", text: fmt(t) }));
    }
    svg.append(s("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    if (rows.length > 1 && isNum(rows[0].estimate)) {
      svg.append(s("line", { class: "ref", x1: X(rows[0].estimate), x2: X(rows[0].estimate), y1: m.t, y2: H - m.b }));
    }
    rows.forEach((r, k) => {
      const y = m.t + rowH * k + rowH / 2;
      const color = COLORS[k % COLORS.length];
      const g = s("g", { "data-arm": r.label });
      const label = r.label.length > 16 ? `${r.label.slice(0, 15)}…` : r.label;
      g.append(s("text", { class: "label", x: m.l - 10, y: y + 4, "text-anchor": "end", text: label },
        s("title", { text: r.label })));
      if (isNum(r.low) && isNum(r.high)) {
        g.append(s("line", { class: "whisker", stroke: color, x1: X(r.low), x2: X(r.high), y1: y, y2: y }));
        for (const v of [r.low, r.high]) {
          g.append(s("line", { class: "whisker", stroke: color, x1: X(v), x2: X(v), y1: y - 6, y2: y + 6 }));
        }
      }
      g.append(s("circle", { class: "pt", cx: X(r.estimate), cy: y, r: 4.5, fill: color },
        s("title", { text: `${r.label}: ${fmt(r.estimate)} [${fmt(r.low)}, ${fmt(r.high)}]` })));
      svg.append(g);
    });
    return svg;
  }

  // ------------------------------------------------------------------ KPIs
  function windowParams() {
    const [minutes, bucket] = document.getElementById("window").value.split(":");
    return { minutes: Number(minutes), bucket: Number(bucket) };
  }

  function setTile(name, value, text) {
    const tile = $(`[data-kpi="${name}"]`);
    tile.textContent = text;
    tile.dataset.value = value === null || value === undefined ? "" : String(value);
  }

  async function loadKpis() {
    const { minutes, bucket } = windowParams();
    const res = await api(`/dashboard/api/kpis?minutes=${minutes}&bucket_seconds=${bucket}`);
    if (!res.ok) {
      showError("traffic", `Traffic could not be loaded: ${res.error}`);
      return false;
    }
    showError("traffic", null);
    const k = res.data;
    const t = k.totals;
    const events = Object.values(t.events || {}).reduce((x, y) => x + y, 0);
    setTile("requests", t.requests, fmtInt(t.requests));
    setTile("impressions", t.impressions, fmtInt(t.impressions));
    // say which events count: the server's EventSemantics, shared with the experiment reports
    const clickTypes = (k.click_types || []).join(" + ") || "click";
    const clicksLabel = document.querySelector('[data-label="clicks"]');
    if (clicksLabel) clicksLabel.textContent = `Clicks (${clickTypes} events citing a list)`;
    setTile("clicks", t.clicks, fmtInt(t.clicks));
    setTile("ctr", t.ctr, fmtPct(t.ctr));
    setTile("events", events, fmtInt(events));
    setTile("users", t.users, fmtInt(t.users));
    // sessions end after the server's session gap; a bounce left within bounce_seconds
    const sem = k.semantics || {};
    const sessionsLabel = document.querySelector('[data-label="sessions"]');
    if (sessionsLabel && isNum(sem.session_gap_seconds)) {
      sessionsLabel.textContent = `Sessions started (end after ${Math.round(sem.session_gap_seconds / 60)} min idle)`;
    }
    const bounceLabel = document.querySelector('[data-label="bounce_rate"]');
    if (bounceLabel && isNum(sem.bounce_seconds)) {
      bounceLabel.textContent = `Bounce rate (left within ${sem.bounce_seconds} s, of ${fmtInt(t.ended_sessions)} ended)`;
    }
    setTile("sessions", t.sessions, fmtInt(t.sessions));
    setTile("bounce_rate", t.bounce_rate, fmtPct(t.bounce_rate));
    setTile("mean_dwell_seconds", t.mean_dwell_seconds,
      isNum(t.mean_dwell_seconds) ? `${t.mean_dwell_seconds.toFixed(1)} s` : "–");

    const times = k.series.map((b) => b.start);
    $("#chart-traffic").replaceChildren(lineChart(times, [
      { name: "requests", values: k.series.map((b) => b.requests) },
      { name: "impressions", values: k.series.map((b) => b.impressions) },
      { name: "clicks", values: k.series.map((b) => b.clicks) },
    ], { id: "traffic", label: "requests, impressions and clicks over time", integer: true }));
    $("#chart-ctr").replaceChildren(lineChart(times, [
      { name: "CTR", values: k.series.map((b) => b.ctr), color: COLORS[2] },
    ], { id: "ctr", label: "click-through rate over time", format: (v) => fmtPct(v, 1), emptyTop: 0.1 }));

    const chips = Object.entries(t.events || {}).sort((x, y) => y[1] - x[1]);
    const box = $("#events-by-type");
    box.replaceChildren();
    append(box, [
      h("span", { class: "muted" }, `Events by type, last ${minutes >= 60 ? minutes / 60 + " h" : minutes + " min"}: `),
      chips.length ? chips.map(([type, n]) => h("span", { class: "chip", "data-event-type": type }, `${type} `, h("b", {}, fmtInt(n))))
        : h("span", { class: "muted" }, "none"),
      h("span", { class: "muted" }, ` · clicks are ${k.click_types.join(", ")} events that cite a request; CTR = clicks / impressions, as in the experiment reports`),
    ]);
    return true;
  }

  // --------------------------------------------------------------- models
  function statusBadge(status) {
    const kind = { promoted: "good", candidate: "neutral", rejected: "bad", retired: "warn" }[status] || "neutral";
    return h("span", { class: `badge ${kind}` }, status);
  }

  function snapshot(data) {
    const parts = ["events", "users", "items"].filter((key) => isNum(data[key]))
      .map((key) => h("div", {}, `${fmtInt(data[key])} `, h("span", { class: "muted" }, key)));
    return parts.length ? parts : "–";
  }

  async function loadModels() {
    const res = await api("/dashboard/api/models");
    if (!res.ok) {
      showError("models", `Models could not be loaded: ${res.error}`);
      return false;
    }
    showError("models", null);
    const d = res.data;
    if (!d.versions.length) {
      setBody("models", notice("No model is registered yet: run `sieve train`."));
      return true;
    }
    const rows = d.versions.map((v) => h("tr", { "data-version": v.version },
      h("td", {}, h("code", {}, v.version), " ",
        v.serving ? h("span", { class: "badge good" }, "serving") : null, " ",
        v.current && !v.serving ? h("span", { class: "badge warn" }, "promoted, not loaded") : null),
      h("td", {}, v.model),
      h("td", { title: fmtDateTime(v.created_at) }, ago(v.created_at)),
      h("td", {}, statusBadge(v.status)),
      h("td", { class: "nowrap" }, snapshot(v.data || {})),
      h("td", {}, Object.keys(v.metrics).length
        ? Object.entries(v.metrics).map(([name, value]) => h("div", {}, h("span", { class: "muted" }, `${name} `), fmtNum(value)))
        : h("span", { class: "muted" }, "none recorded")),
    ));
    const history = d.history.slice(0, 5).map((e) => h("tr", {},
      h("td", { title: fmtDateTime(e.time) }, ago(e.time)),
      h("td", {}, e.action),
      h("td", {}, h("code", {}, e.version || "–")),
      h("td", { class: "muted" }, e.note || ""),
    ));
    setBody("models",
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["version", "model", "created", "status", "trained on", "offline metrics"].map((c) => h("th", {}, c)))),
        h("tbody", {}, rows))),
      history.length ? [h("h4", {}, "Promotion history"), h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["when", "action", "version", "note"].map((c) => h("th", {}, c)))),
        h("tbody", {}, history)))] : null,
    );
    return true;
  }

  // ---------------------------------------------------------- experiments
  function interval(est, fmt) {
    if (!est) return "–";
    return `${fmt(est.estimate)} [${fmt(est.low)}, ${fmt(est.high)}]`;
  }

  function renderReport(exp, res) {
    const status = exp.status === "running" ? h("span", { class: "badge good" }, "running") : h("span", { class: "badge neutral" }, exp.status || "?");
    const variants = (exp.variants || []).map((v) =>
      `${v.name} ${fmtPct(v.share, 0)}${v.model_version ? ` (model ${v.model_version})` : ""}${v.shadow ? " shadow" : ""}`).join(" · ");
    const head = h("div", { class: "exp-head" },
      h("h3", {}, exp.name), status,
      h("span", { class: "badge neutral" }, exp.kind === "interleaving" ? "interleaving" : "A/B"),
      h("span", { class: "exp-meta" }, `layer ${exp.layer || "–"} · started ${ago(exp.created_at)}${isNum(exp.stopped_at) ? ` · stopped ${ago(exp.stopped_at)}` : ""}`));
    const card = h("div", { class: "experiment", "data-experiment": exp.name }, head,
      variants ? h("div", { class: "exp-meta" }, variants) : null);
    if (!res.ok) {
      card.append(h("div", { class: "error" }, `The report could not be loaded: ${res.error}`));
      return card;
    }
    const r = res.data || {};
    card.append(h("div", { class: "verdict", "data-verdict": "" }, r.verdict || "No verdict yet."));

    const arms = r.arms || [];
    const sem = r.semantics || {};
    const clickWord = (sem.click_types || ["click"]).join(" + ");
    const convWord = (sem.conversion_types || ["purchase"]).join(" + ");
    const armTable = h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {},
        h("th", {}, "arm"), h("th", { class: "num" }, "units"), h("th", { class: "num" }, "impressions"),
        h("th", { class: "num", title: `events of type ${clickWord} citing the arm's lists` }, `clicks (${clickWord})`),
        h("th", {}, "CTR [95% CI]"), h("th", {}, `conversion (${convWord})`), h("th", {}, "revenue / user"),
        h("th", {}, "bounce rate"), h("th", {}, "dwell s / user"))),
      h("tbody", {}, arms.map((a) => h("tr", { "data-arm": a.arm },
        h("td", {}, h("b", {}, a.arm)), h("td", { class: "num" }, fmtInt(a.units)),
        h("td", { class: "num" }, fmtInt(a.impressions)), h("td", { class: "num" }, fmtInt(a.clicks)),
        h("td", {}, interval(a.ctr, (x) => fmtPct(x))),
        h("td", {}, interval(a.conversion_rate, (x) => fmtPct(x))),
        h("td", {}, interval(a.revenue_per_user, fmtNum)),
        h("td", { "data-metric": "bounce_rate" }, interval(a.bounce_rate, (x) => fmtPct(x))),
        h("td", { "data-metric": "mean_dwell" }, interval(a.mean_dwell, fmtNum)))))));
    const ctrRows = arms.filter((a) => a.ctr && isNum(a.ctr.estimate))
      .map((a) => ({ label: a.arm, estimate: a.ctr.estimate, low: a.ctr.low, high: a.ctr.high }));
    const chart = ctrRows.length
      ? h("figure", { class: "chart-box" }, h("figcaption", {}, "CTR per arm with 95% intervals (dashed: control)"),
        intervalChart(ctrRows, { id: `ctr-${exp.name}`, label: `CTR per arm of ${exp.name}`, format: (x) => fmtPct(x, 1), floor: 0 }))
      : notice("No CTR estimate yet (no impressions).");
    card.append(h("div", { class: "exp-grid" }, armTable, chart));

    const comps = r.comparisons || [];
    if (comps.length) {
      card.append(h("h4", {}, "Comparisons"), h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["metric", "treatment vs control", "difference [95% CI]", "relative", "p", "always-valid p", ""].map((c) => h("th", {}, c)))),
        h("tbody", {}, comps.map((c) => {
          const rate = isRate(c.metric);
          const f = (x) => (rate ? fmtSigned(x, " pp", 100) : fmtSigned(x, "", 1, 3));
          return h("tr", {},
            h("td", {}, c.metric), h("td", {}, `${c.treatment} vs ${c.control}`),
            h("td", {}, `${f(c.estimate)} [${f(c.low)}, ${f(c.high)}]`),
            h("td", {}, isNum(c.relative) ? fmtSigned(c.relative, "%", 100, 1) : "–"),
            h("td", {}, fmtP(c.p_value)), h("td", {}, fmtP(c.always_valid_p)),
            h("td", {}, c.significant ? h("span", { class: "badge good" }, "significant") : h("span", { class: "badge neutral" }, "not significant")));
        })))));
    }
    const extras = [];
    if (r.srm) {
      extras.push(h("div", {}, h("span", { class: "muted" }, "Sample ratio: "),
        h("span", { class: `badge ${r.srm.ok ? "good" : "bad"}` }, r.srm.ok ? "ok" : "mismatch"),
        ` p = ${fmtP(r.srm.p_value)} · ${r.srm.message || ""}`));
    }
    if (r.interleaving) {
      const il = r.interleaving;
      const wins = Object.entries(il.wins || {}).map(([arm, n]) => `${arm} wins ${fmtInt(n)}`).join(" · ");
      extras.push(h("div", {}, h("span", { class: "muted" }, "Interleaving: "),
        `${wins} · ties ${fmtInt(il.ties)} · p = ${fmtP(il.p_value)}`));
    }
    if (extras.length) card.append(h("div", { class: "exp-meta", style: "margin-top:10px;display:grid;gap:4px" }, extras));
    const shadows = r.shadows || [];
    if (shadows.length) {
      const pct = (x) => (isNum(x) ? fmtPct(x) : "–");
      card.append(h("h4", {}, "Shadows (what each would have shown, against the served list)"),
        h("div", { class: "table-wrap" }, h("table", {},
          h("thead", {}, h("tr", {}, [
            h("th", {}, "shadow"), h("th", {}, "model"), h("th", { class: "num" }, "requests"),
            h("th", { class: "num" }, "failed / skipped"),
            h("th", { class: "num", title: "mean share of the served list's items among the shadow's top n" }, "overlap@n"),
            h("th", { class: "num", title: "share of the shadow's items the served list did not show" }, "not shown by served"),
            h("th", { class: "num", title: `served list's ${clickWord} rate on the items the shadow would have shown too` }, "served CTR: shared"),
            h("th", { class: "num", title: `served list's ${clickWord} rate on the other items` }, "served CTR: rest")])),
          h("tbody", {}, shadows.map((s) => h("tr", { "data-shadow": s.shadow },
            h("td", {}, h("b", {}, s.shadow)), h("td", {}, s.model_version || "serving"),
            h("td", { class: "num" }, fmtInt(s.requests)),
            h("td", { class: "num" }, `${fmtInt(s.failed)} / ${fmtInt(s.skipped)}`),
            h("td", { class: "num" }, pct(s.mean_overlap)), h("td", { class: "num" }, pct(s.novel_share)),
            h("td", { class: "num" }, `${pct(s.ctr_shared)} of ${fmtInt(s.shared_slots)}`),
            h("td", { class: "num" }, `${pct(s.ctr_served_only)} of ${fmtInt(s.served_only_slots)}`)))))));
    }
    return card;
  }

  async function loadExperiments() {
    if (!state.meta.features.experiments) {
      setBody("experiments", notice("This service has no experiments endpoint."));
      showError("experiments", null);
      return true;
    }
    const res = await api("/experiments");
    if (!res.ok) {
      if (res.status === 404) {
        setBody("experiments", notice("This service has no experiments endpoint."));
        showError("experiments", null);
        return true;
      }
      showError("experiments", `Experiments could not be loaded: ${res.error}`);
      return false;
    }
    showError("experiments", null);
    const list = Array.isArray(res.data) ? res.data : [];
    if (!list.length) {
      setBody("experiments", notice("No experiments yet."));
      return true;
    }
    const order = [...list].sort((a, b) =>
      (a.status === "running" ? 0 : 1) - (b.status === "running" ? 0 : 1) || (b.created_at || 0) - (a.created_at || 0));
    const shown = order.slice(0, MAX_EXPERIMENTS);
    const reports = await Promise.all(shown.map((e) => api(`/experiments/${encodeURIComponent(e.name)}/report`)));
    setBody("experiments", shown.map((e, i) => renderReport(e, reports[i])),
      list.length > shown.length ? h("p", { class: "muted" }, `${list.length - shown.length} more not shown.`) : null);
    return reports.every((r) => r.ok);
  }

  // ------------------------------------------------------------ monitoring
  async function loadMonitoring() {
    if (!state.meta.features.monitoring) {
      setBody("monitoring", notice("This service has no drift monitoring endpoint."));
      showError("monitoring", null);
      return true;
    }
    const res = await api("/monitoring/drift");
    if (!res.ok) {
      if (res.status === 404) {
        setBody("monitoring", notice("This service has no drift monitoring endpoint."));
        showError("monitoring", null);
        return true;
      }
      showError("monitoring", `Drift checks could not be loaded: ${res.error}`);
      return false;
    }
    showError("monitoring", null);
    const rows = Array.isArray(res.data) ? res.data : [];
    if (!rows.length) {
      setBody("monitoring", notice("No drift check has run yet."));
      return true;
    }
    setBody("monitoring", h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "check"), h("th", { class: "num" }, "value"), h("th", { class: "num" }, "threshold"),
        h("th", {}, "status"), h("th", {}, "detail"), h("th", {}, "checked"))),
      h("tbody", {}, rows.map((c) => h("tr", { "data-check": c.check },
        h("td", {}, c.check), h("td", { class: "num" }, fmtNum(c.value)), h("td", { class: "num" }, fmtNum(c.threshold)),
        h("td", {}, c.fired ? h("span", { class: "badge bad" }, "fired") : h("span", { class: "badge good" }, "ok")),
        h("td", { class: "muted" }, c.detail || ""), h("td", { title: fmtDateTime(c.checked_at) }, ago(c.checked_at))))))));
    return true;
  }

  // ------------------------------------------------------------- inspector
  function renderInspection(d) {
    const badges = [
      d.known ? h("span", { class: "badge good" }, "known user") : h("span", { class: "badge warn" }, "unknown user"),
      d.cold_start ? h("span", { class: "badge warn" }, "cold start") : null,
      d.model_version ? h("span", { class: "badge neutral" }, `model ${d.model_version}`) : null,
    ];
    const head = h("div", { class: "exp-head" }, h("h3", {}, d.user_id), badges,
      d.request_id ? h("span", { class: "exp-meta" }, "request ", h("code", {}, d.request_id)) : null);

    let recs;
    if (d.recommendations === null) {
      recs = h("div", { class: "error" }, `No list: ${d.recommendations_error || "no model serves"}`);
    } else if (!d.recommendations.length) {
      recs = notice("The model returned no item for this user.");
    } else {
      recs = h("div", { class: "table-wrap" }, h("table", { id: "user-recs" },
        h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "item"), h("th", { class: "num" }, "score"), h("th", {}, "why"), h("th", {}, "sources"))),
        h("tbody", {}, d.recommendations.map((it, i) => h("tr", { "data-item": it.id },
          h("td", { class: "num" }, String(i + 1)),
          h("td", {}, h("code", {}, it.id), it.title ? h("div", { class: "muted" }, it.title) : null),
          h("td", { class: "num" }, fmtNum(it.score)),
          h("td", {}, it.explanation || "–"),
          h("td", {}, h("div", { class: "sources" }, Object.entries(it.sources || {}).map(([k, v]) =>
            h("span", { class: "chip" }, `${k} ${fmtNum(v)}`)))))))));
    }

    const feats = d.features
      ? h("dl", { class: "features" }, Object.entries(d.features).map(([k, v]) => [
        h("dt", {}, k), h("dd", {}, k.startsWith("affinity:") ? fmtPct(v, 1) : fmtNum(v))]))
      : notice("Online features are unavailable (cache unreadable).");
    const events = d.events.length
      ? h("div", { class: "table-wrap" }, h("table", { id: "user-events" },
        h("thead", {}, h("tr", {}, ["when", "type", "item", "request"].map((c) => h("th", {}, c)))),
        h("tbody", {}, d.events.map((e) => h("tr", {},
          h("td", { title: fmtDateTime(e.timestamp) }, fmtDateTime(e.timestamp)), h("td", {}, e.type),
          h("td", {}, h("code", {}, e.item_id)),
          h("td", {}, e.request_id ? h("code", { title: e.request_id }, e.request_id.slice(0, 8)) : "–"))))))
      : notice("No events recorded for this user.");

    return [head, h("div", { class: "inspector-grid" },
      h("div", {}, h("h4", {}, "What they get now"), recs),
      h("div", {}, h("h4", {}, "Online features"), feats, h("h4", {}, `Last ${d.events.length} events`), events))];
  }

  async function inspect(event) {
    event.preventDefault();
    const id = document.getElementById("user-id").value.trim();
    const n = Number(document.getElementById("user-n").value) || 10;
    if (!id) {
      showError("inspector", "Type a user id first.");
      return;
    }
    showError("inspector", null);
    setBody("inspector", h("p", { class: "muted" }, `Loading ${id}…`));
    const res = await api(`/dashboard/api/users/${encodeURIComponent(id)}?n=${n}`);
    if (!res.ok) {
      setBody("inspector");
      showError("inspector", `User ${id} could not be inspected: ${res.error}`);
      return;
    }
    section("inspector").dataset.user = id;
    setBody("inspector", renderInspection(res.data));
  }

  // --------------------------------------------------------------- refresh
  function setRefreshState(ok, text) {
    const el = document.getElementById("refresh-state");
    el.className = `refresh ${ok ? "ok" : "failed"}`;
    el.textContent = text;
  }

  async function refresh() {
    if (state.busy) {
      state.pending = true; // asked again mid-refresh (a new key, a new window): run once more
      return;
    }
    state.busy = true;
    try {
      const meta = await api("/dashboard/api/meta");
      if (!meta.ok) {
        banner(`The service did not answer: ${meta.error}`);
        setRefreshState(false, "service unreachable");
        return;
      }
      state.meta = meta.data;
      const badge = document.getElementById("model-version");
      badge.textContent = state.meta.model_version || "none";
      document.getElementById("sieve-version").textContent = state.meta.version;
      document.getElementById("user-n").max = String(state.meta.max_n);
      if (!state.meta.open_read && !getKey()) {
        banner("Enter an API key with the read scope (top right) to see the data.");
        setRefreshState(false, "waiting for an API key");
        return;
      }
      const results = await Promise.all([loadKpis(), loadModels(), loadExperiments(), loadMonitoring()]);
      const ok = results.every(Boolean);
      banner(null);
      state.refreshes += 1;
      document.body.dataset.refreshes = String(state.refreshes);
      const word = ok ? "updated" : results.some(Boolean) ? "partly updated" : "update failed";
      setRefreshState(ok, `${word} ${new Date().toLocaleTimeString("en-GB", { hour12: false })}`);
    } catch (e) {
      banner(`The dashboard failed to render: ${e && e.message ? e.message : e}`);
      setRefreshState(false, "render failed");
    } finally {
      state.busy = false;
      if (state.pending) {
        state.pending = false;
        clearTimeout(state.timer);
        state.timer = setTimeout(refresh, 0);
      } else {
        schedule();
      }
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    const seconds = (state.meta && state.meta.refresh_seconds) || 5;
    state.timer = setTimeout(refresh, seconds * 1000);
  }

  function start() {
    const keyInput = document.getElementById("api-key");
    keyInput.value = getKey();
    document.getElementById("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      setKey(keyInput.value.trim());
      refresh();
    });
    document.getElementById("key-clear").addEventListener("click", () => {
      keyInput.value = "";
      setKey("");
      refresh();
    });
    document.getElementById("window").addEventListener("change", () => refresh());
    document.getElementById("inspect-form").addEventListener("submit", (e) => {
      inspect(e).catch((err) => showError("inspector", `Inspection failed: ${err && err.message ? err.message : err}`));
    });
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
