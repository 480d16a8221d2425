/* cluster dashboard: live run page (SSE), metric charts (uPlot), sweep charts (SVG), pool charts, cancel. */
(function () {
  "use strict";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = () => $('meta[name="csrf-token"]').content;
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const fmt = (v) => (typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(6)).toString() : String(v));
  const jsonData = (id) => { const s = document.getElementById(id); return s ? JSON.parse(s.textContent) : null; };
  const FINAL = ["Completed", "Failed", "Canceled"];

  function badge(status) {
    const s = el("span", { class: "badge s-" + String(status).toLowerCase() }, status);
    return s;
  }

  // ---- cancel (POST with the CSRF token) ----------------------------------------------------------
  function initCancel() {
    const btn = $("#cancel");
    if (!btn) return;
    btn.addEventListener("click", async () => {
      if (!window.confirm("Cancel " + btn.dataset.run + "?")) return;
      btn.disabled = true;
      const out = $("#cancel-result");
      try {
        const resp = await fetch("/api/runs/" + encodeURIComponent(btn.dataset.run) + "/cancel", {
          method: "POST", headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" });
        const data = await resp.json();
        out.textContent = resp.ok ? "cancel " + data.outcome : (data.error || "cancel refused");
        if (resp.ok && FINAL.includes(data.status)) setStatus(data.status);
      } catch (e) {
        out.textContent = "cancel failed: " + e;
        btn.disabled = false;
      }
    });
  }

  // ---- run page ---------------------------------------------------------------------------------
  const metrics = new Map(); // name -> {kind, values: [], rows: []}
  const charts = new Map(); // name -> uPlot

  function addMetric(ev) {
    if (!ev || typeof ev.name !== "string") return;
    if (ev.kind === "control" || ev.child) return; // run.fail / run.child_run: not the run's own metrics
    if (ev.kind === "table" && ev.value && typeof ev.value === "object") { // log_table: columns -> rows
      const cols = Object.keys(ev.value), n = Math.max(0, ...cols.map((c) => (ev.value[c] || []).length));
      for (let i = 0; i < n; i++) addMetric({ name: ev.name, kind: "row", value: Object.fromEntries(cols.map((c) => [c, ev.value[c][i]])) });
      return;
    }
    let m = metrics.get(ev.name);
    if (!m) { m = { kind: ev.kind, values: [], rows: [] }; metrics.set(ev.name, m); }
    m.kind = ev.kind;
    if (ev.kind === "row") m.rows.push(ev.value);
    else if (ev.kind === "list") m.values.push(...(Array.isArray(ev.value) ? ev.value : []));
    else m.values.push(ev.value);
  }

  function isSeries(m) {
    const nums = m.values.filter((v) => typeof v === "number");
    return m.kind !== "row" && nums.length > 0 && (m.kind === "list" || m.values.length > 1);
  }

  function renderMetrics() {
    const box = $("#metric-charts"), valuesTable = $("#metric-values"), rowsBox = $("#metric-rows");
    if (!box) return;
    const tbody = $("tbody", valuesTable);
    tbody.textContent = "";
    rowsBox.textContent = "";
    let scalars = 0;
    for (const [name, m] of metrics) {
      if (m.kind === "row") {
        const cols = [];
        m.rows.forEach((r) => Object.keys(r || {}).forEach((k) => { if (!cols.includes(k)) cols.push(k); }));
        const wrap = el("div", { class: "rows", "data-metric": name });
        wrap.appendChild(el("h3", {}, name));
        const t = el("table", { class: "grid" });
        const hr = el("tr");
        cols.forEach((c) => hr.appendChild(el("th", {}, c)));
        t.appendChild(el("thead")).appendChild(hr);
        const tb = t.appendChild(el("tbody"));
        m.rows.forEach((r) => { const tr = el("tr"); cols.forEach((c) => tr.appendChild(el("td", { class: "mono" }, r && c in r ? fmt(r[c]) : ""))); tb.appendChild(tr); });
        wrap.appendChild(t);
        rowsBox.appendChild(wrap);
      } else if (isSeries(m)) {
        drawSeries(box, name, m);
      } else {
        scalars += 1;
        const tr = el("tr", { "data-metric": name });
        tr.appendChild(el("th", {}, name));
        tr.appendChild(el("td", { class: "mono" }, m.values.map(fmt).join(", ")));
        tbody.appendChild(tr);
      }
    }
    valuesTable.hidden = scalars === 0;
    $("#no-metrics").hidden = metrics.size > 0;
  }

  function drawSeries(box, name, m) {
    const ys = m.values.map((v) => (typeof v === "number" ? v : null));
    const xs = ys.map((_, i) => i);
    let chart = charts.get(name);
    if (chart) {
      chart.setData([xs, ys]);
      chart.root.closest(".chart").dataset.points = String(ys.length);
      return;
    }
    const wrap = el("div", { class: "chart", "data-metric": name, "data-points": String(ys.length) });
    wrap.appendChild(el("h4", {}, name));
    box.appendChild(wrap);
    const width = Math.max(320, wrap.clientWidth - 12);
    chart = new uPlot({
      width: width, height: 220, legend: { show: true },
      scales: { x: { time: false } },
      series: [{ label: "index" }, { label: name, stroke: "#2563eb", width: 2, points: { show: true, size: 4 } }],
      axes: [{ label: "index" }, {}],
    }, [xs, ys], wrap);
    charts.set(name, chart);
  }

  function setStatus(status) {
    const holder = $("#run-status");
    if (!holder || !status || holder.dataset.status === status) return;
    holder.dataset.status = status;
    holder.textContent = "";
    holder.appendChild(badge(status));
    if (FINAL.includes(status)) { const b = $("#cancel"); if (b) b.hidden = true; }
    document.body.dispatchEvent(new CustomEvent("run-status", { detail: status }));
  }

  function initRun() {
    const root = $("#run");
    if (!root) return;
    (jsonData("metric-events") || []).forEach(addMetric);
    renderMetrics();
    const log = $("#log"), state = $("#log-state"), count = $("#log-count");
    let lines = 0;
    const url = "/api/runs/" + encodeURIComponent(root.dataset.run) + "/log/stream?metrics_after=" + encodeURIComponent(root.dataset.cursor || "0-0");
    const source = new EventSource(url);
    source.addEventListener("open", () => { state.textContent = "live"; });
    source.addEventListener("log", (e) => {
      const d = JSON.parse(e.data);
      const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      const span = el("span", { class: d.line.startsWith("[node]") ? "sys" : (d.s === "e" ? "err" : "") }, d.line + "\n");
      log.appendChild(span);
      lines += 1;
      count.textContent = lines + " line" + (lines === 1 ? "" : "s");
      if (stick) log.scrollTop = log.scrollHeight;
    });
    let pending = false;
    source.addEventListener("metric", (e) => {
      addMetric(JSON.parse(e.data));
      if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; renderMetrics(); }); }
    });
    source.addEventListener("status", (e) => setStatus(JSON.parse(e.data).status));
    source.addEventListener("end", (e) => {
      source.close();
      state.textContent = "complete";
      setStatus(JSON.parse(e.data).status);
    });
    source.addEventListener("error", () => { if (source.readyState !== EventSource.CLOSED) state.textContent = "reconnecting…"; });
  }

  // ---- file preview -----------------------------------------------------------------------------
  document.addEventListener("click", async (e) => {
    const a = e.target.closest("a.preview");
    if (!a) return;
    e.preventDefault();
    const box = $("#preview");
    box.hidden = false;
    box.textContent = "";
    box.appendChild(el("div", { class: "muted small" }, a.dataset.src.split("/files/")[1].replace("?preview=1", "")));
    if (a.dataset.kind === "image") {
      box.appendChild(el("img", { src: a.dataset.src, alt: "preview" }));
    } else {
      const resp = await fetch(a.dataset.src, { credentials: "same-origin" });
      box.appendChild(el("pre", {}, await resp.text()));
    }
  });

  // ---- sweep charts (SVG) -----------------------------------------------------------------------
  const SVGNS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs, text) => {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  const PAD = 0.05; // keep points off the axes
  function axisScale(values) {
    const nums = values.every((v) => typeof v === "number");
    if (nums) {
      let lo = Math.min(...values), hi = Math.max(...values);
      if (lo === hi) { lo -= 1; hi += 1; }
      const log = lo > 0 && hi / lo > 50;
      const f = log ? Math.log10 : (v) => v;
      const a = f(lo), b = f(hi);
      const mid = log ? Math.pow(10, (a + b) / 2) : (lo + hi) / 2;
      return { pos: (v) => PAD + (1 - 2 * PAD) * (f(v) - a) / (b - a), ticks: [lo, mid, hi], label: fmt, log: log };
    }
    const cats = Array.from(new Set(values.map(String)));
    return { pos: (v) => (cats.length === 1 ? 0.5 : PAD + (1 - 2 * PAD) * cats.indexOf(String(v)) / (cats.length - 1)),
      ticks: cats, label: String, cats: true };
  }

  function sweepCharts() {
    const data = jsonData("sweep-data");
    const box = $("#sweep-scatter");
    if (!data || !box) return;
    box.textContent = "";
    const bestId = data.best ? data.best.run_id : null;
    const rows = data.children.filter((c) => typeof c.best_primary_metric === "number");
    if (!rows.length) { box.appendChild(el("p", { class: "empty" }, "No child has reported " + data.metric.name + " yet.")); }
    for (const p of data.parameters) {
      if (!rows.length) break;
      const wrap = el("div", { class: "chart", "data-param": p });
      wrap.appendChild(el("h4", {}, data.metric.name + " vs " + p));
      box.appendChild(wrap);
      const W = Math.max(320, wrap.clientWidth - 12), H = 260, L = 70, R = 24, T = 12, B = 40;
      const s = svg("svg", { class: "scatter", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
      const xs = axisScale(rows.map((c) => c.hyperparameters[p]));
      const ys = axisScale(rows.map((c) => c.best_primary_metric));
      const X = (v) => L + xs.pos(v) * (W - L - R), Y = (v) => H - B - ys.pos(v) * (H - T - B);
      s.appendChild(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
      s.appendChild(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
      xs.ticks.forEach((t) => s.appendChild(svg("text", { x: X(t), y: H - B + 14, "text-anchor": "middle" }, xs.label(t))));
      ys.ticks.forEach((t) => s.appendChild(svg("text", { x: L - 4, y: Y(t) + 4, "text-anchor": "end" }, ys.label(t))));
      s.appendChild(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, p + (xs.log ? " (log scale)" : "")));
      for (const c of rows) {
        const cls = "dot" + (c.run_id === bestId ? " best" : "") + (c.stopped_by ? " stopped" : "");
        const dot = svg("circle", { class: cls, cx: X(c.hyperparameters[p]), cy: Y(c.best_primary_metric), r: c.run_id === bestId ? 6 : 4.5, "data-run": c.run_id });
        dot.appendChild(svg("title", {}, `${c.run_id}\n${p}=${fmt(c.hyperparameters[p])}\n${data.metric.name}=${fmt(c.best_primary_metric)}`));
        dot.addEventListener("click", () => { window.location.href = "/runs/" + c.run_id; });
        s.appendChild(dot);
      }
      wrap.appendChild(s);
    }
    const par = $("#sweep-parallel");
    if (!par) return;
    par.textContent = "";
    if (!rows.length) return;
    const axes = [...data.parameters, data.metric.name];
    const PW = Math.max(160 * axes.length, par.clientWidth - 4), PH = 300, PT = 24, PB = 34, PL = 60, PR = 90;
    const s = svg("svg", { class: "parallel", width: PW, height: PH, viewBox: `0 0 ${PW} ${PH}` });
    const scales = axes.map((a, i) => axisScale(rows.map((c) => (i === axes.length - 1 ? c.best_primary_metric : c.hyperparameters[a]))));
    const AX = (i) => PL + i * (PW - PL - PR) / (axes.length - 1);
    const AY = (i, v) => PH - PB - scales[i].pos(v) * (PH - PT - PB);
    const ordered = rows.slice().sort((a, b) => (a.run_id === bestId) - (b.run_id === bestId));
    for (const c of ordered) {
      const pts = axes.map((a, i) => `${AX(i)},${AY(i, i === axes.length - 1 ? c.best_primary_metric : c.hyperparameters[a])}`);
      const line = svg("polyline", { class: "line" + (c.run_id === bestId ? " best" : "") + (c.stopped_by ? " stopped" : ""), points: pts.join(" "), "data-run": c.run_id });
      line.appendChild(svg("title", {}, c.run_id));
      s.appendChild(line);
    }
    axes.forEach((a, i) => {
      s.appendChild(svg("line", { class: "axis", x1: AX(i), y1: PT, x2: AX(i), y2: PH - PB }));
      s.appendChild(svg("text", { x: AX(i), y: PH - 10, "text-anchor": "middle" }, a));
      const sc = scales[i];
      sc.ticks.forEach((t) => s.appendChild(svg("text", { x: AX(i) + 5, y: AY(i, t) + 4 }, sc.label(t))));
    });
    par.appendChild(s);
  }

  // ---- pool charts (uPlot) ----------------------------------------------------------------------
  const poolCharts = new Map();
  function poolChartsRender() {
    const pools = jsonData("pools-data");
    if (!pools) return;
    for (const p of pools) {
      const box = $(`.pool-chart[data-pool="${CSS.escape(p.name)}"]`);
      if (!box) continue;
      box.textContent = "";
      if (!p.managed) continue;
      if (!p.events.length) { box.appendChild(el("p", { class: "empty" }, "No scaling events yet.")); continue; }
      const xs = [], ys = [], started = [], drained = [];
      let n = 0;
      for (const e of p.events) {
        const s = e.start || 0, d = (e.drain || []).length;
        n = Math.max(0, n + s - d);
        xs.push(e.t); ys.push(n); started.push(s ? n : null); drained.push(d ? n : null);
      }
      const now = Date.now() / 1000;
      if (p.status && p.status.updated && p.status.updated > xs[xs.length - 1]) {
        xs.push(p.status.updated); ys.push(p.status.currentNodeCount); started.push(null); drained.push(null);
      } else if (now > xs[xs.length - 1]) {
        xs.push(now); ys.push(n); started.push(null); drained.push(null);
      }
      box.appendChild(el("h4", {}, "Nodes over time (from scaling events)"));
      const width = Math.max(320, box.clientWidth - 12);
      const u = new uPlot({
        width: width, height: 200,
        series: [{}, { label: "nodes", stroke: "#2563eb", width: 2, fill: "rgba(37,99,235,.08)", paths: uPlot.paths.stepped({ align: 1 }) },
          { label: "started", stroke: "#16a34a", width: 0, points: { show: true, size: 8, fill: "#16a34a" } },
          { label: "drained", stroke: "#f59e0b", width: 0, points: { show: true, size: 8, fill: "#f59e0b" } }],
        axes: [{}, { label: "nodes", incrs: [1, 2, 5, 10] }],
      }, [xs, ys, started, drained], box);
      poolCharts.set(p.name, u);
    }
  }

  // ---- boot -------------------------------------------------------------------------------------
  function boot() {
    initCancel();
    initRun();
    sweepCharts();
    poolChartsRender();
    document.body.addEventListener("htmx:afterSwap", (e) => {
      if (e.target.id === "sweep-panel") {
        sweepCharts();
        const data = jsonData("sweep-data");
        if (data && data.final) { const b = $("#cancel"); if (b) b.hidden = true; }
      }
      if (e.target.id === "pools-panel") { poolCharts.forEach((u) => u.destroy()); poolCharts.clear(); poolChartsRender(); }
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
