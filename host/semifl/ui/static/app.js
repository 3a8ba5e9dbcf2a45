// semifl's page: plain JavaScript, no build step. It reads the JSON API and listens to /api/events
// (server-sent events); the fleet table is paged, sorted and filtered on the server.
"use strict";
(function () {
  const $ = (s) => document.querySelector(s);
  const ui = (window.semifl = { run: 0, renders: 0, firstRender: null, rounds: [], runs: [], charts: {} });
  const fleet = { sort: "id", desc: false, offset: 0, busy: false, dirty: false };
  let view = "fleet", state = null, es = null;

  const api = (path, params = {}) => {
    const u = new URL("api/" + path, document.baseURI);
    u.searchParams.set("run", ui.run);
    for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
    return fetch(u, { cache: "no-store" }).then((r) => (r.ok ? r.json() : Promise.reject(new Error(r.status))));
  };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const bytes = (n) => (n == null ? "–" : n < 1e3 ? n + " B" : n < 1e6 ? (n / 1e3).toFixed(1) + " kB" : n < 1e9 ? (n / 1e6).toFixed(2) + " MB" : (n / 1e9).toFixed(2) + " GB");
  const pct = (x) => (x == null ? "–" : (100 * x).toFixed(2) + " %");
  const num = (x, d = 2) => (x == null ? "–" : Number(x).toFixed(d));
  const ago = (t) => {
    if (t == null) return "–";
    const s = Math.max(0, Date.now() / 1000 - t);
    return s < 60 ? s.toFixed(0) + " s ago" : s < 3600 ? (s / 60).toFixed(0) + " min ago" : new Date(t * 1000).toLocaleString();
  };
  const reasons = (r) => Object.entries(r || {}).map(([k, v]) => `${k} ${v}`).join(", ");

  // --- header ------------------------------------------------------------------------------------
  function head(st) {
    state = st;
    $("#run-name").textContent = st.name || "";
    const m = $("#mode");
    m.textContent = st.mode;
    m.className = "badge " + st.mode;
    $("#h-round").textContent = st.mode === "live" ? `${st.round} (${st.rounds_done} done)` : String(st.rounds_done);
    $("#h-acc").textContent = pct(st.accuracy);
    const on = Object.values(st.online || {}).reduce((a, b) => a + b, 0);
    const per = Object.entries(st.known || {}).map(([c, n]) => `${c} ${(st.online || {})[c] || 0}/${n}`).join(" · ");
    $("#h-online").textContent = st.mode === "live" ? `${on} of ${st.devices}` : `${st.devices} devices`;
    $("#h-online").title = per;
    $("#h-bytes").textContent = `${bytes(st.bytes_up)} / ${bytes(st.bytes_down)}`;
    $("#h-joules").textContent = num(st.joules, 1);
    const rej = Object.values(st.rejected || {}).reduce((a, b) => a + b, 0);
    $("#h-rej").textContent = String(rej);
    $("#h-rej").title = reasons(st.rejected);
    const ph = Object.entries(st.open_phases || {}).map(([k, v]) => `${k} ${v.toFixed(2)} s`).join(", ");
    $("#said").textContent = st.mode === "live" ? `round ${st.round}: ${st.said || "…"}${ph ? " · " + ph : ""}` : "";
  }

  // --- fleet -------------------------------------------------------------------------------------
  const COLS = ["id", "class", "runtime", "board", "role", "now", "online", "last_seen", "battery", "rssi", "bytes_up",
    "bytes_down", "joules", "int8_accuracy", "personal_accuracy", "values_up", "values_down", "rejected"];
  const OPT = ["personal_accuracy", "values_up", "values_down"];
  function cell(r, c) {
    const v = r[c];
    switch (c) {
      case "online": return `<td data-col="online" class="${v ? "on" : "off"}">${v ? "online" : "offline"}</td>`;
      case "last_seen": return `<td data-col="last_seen" data-t="${v ?? ""}">${ago(v)}</td>`;
      case "battery": return `<td data-col="battery" class="num">${v == null ? "–" : (100 * v).toFixed(0) + " %"}</td>`;
      case "rssi": return `<td data-col="rssi" class="num">${num(v, 1)}</td>`;
      case "bytes_up": case "bytes_down": return `<td data-col="${c}" class="num">${bytes(v)}</td>`;
      case "joules": return `<td data-col="joules" class="num">${num(v, 2)}</td>`;
      case "int8_accuracy": case "personal_accuracy": return `<td data-col="${c}" class="num">${pct(v)}</td>`;
      case "values_up": case "values_down": return `<td data-col="${c}" class="num">${v == null ? "–" : v.toLocaleString()}</td>`;
      case "rejected": return `<td data-col="rejected" class="${v && Object.keys(v).length ? "rej" : ""}">${esc(reasons(v) || "–")}</td>`;
      case "now": return `<td data-col="now" title="${esc(r.failed || "")}">${esc(v ?? "–")}${r.failed ? " ⚠" : ""}</td>`;
      default: return `<td data-col="${c}">${esc(v ?? "–")}</td>`;
    }
  }
  function loadFleet() {
    if (fleet.busy) { fleet.dirty = true; return; }
    fleet.busy = true;
    const limit = +$("#limit").value;
    api("devices", { q: $("#q").value, online: $("#online").value, sort: fleet.sort, desc: fleet.desc ? 1 : 0, offset: fleet.offset, limit })
      .then((p) => {
        const show = OPT.filter((c) => p.rows.some((r) => r[c] != null));
        document.querySelectorAll("#fleet th.opt").forEach((th) => th.classList.toggle("hidden", !show.includes(th.dataset.col)));
        const cols = COLS.filter((c) => !OPT.includes(c) || show.includes(c));
        $("#fleet tbody").innerHTML = p.rows.map((r) =>
          `<tr data-device="${esc(r.id)}" class="${r.online || state?.mode !== "live" ? "" : "offline"}">${cols.map((c) => cell(r, c)).join("")}</tr>`).join("");
        const end = Math.min(p.offset + p.rows.length, p.matched);
        $("#pageinfo").textContent = `${p.matched ? p.offset + 1 : 0}–${end} of ${p.matched}` + (p.matched !== p.total ? ` (${p.total} in all)` : "");
        $("#prev").disabled = p.offset === 0;
        $("#next").disabled = end >= p.matched;
        ui.renders++;
        if (ui.firstRender == null) ui.firstRender = performance.now();
        $("#fleet").dataset.renders = ui.renders;
      })
      .catch(() => {})
      .finally(() => {
        fleet.busy = false;
        if (fleet.dirty) { fleet.dirty = false; loadFleet(); }
      });
  }
  document.querySelectorAll("#fleet th").forEach((th) => th.addEventListener("click", () => {
    const c = th.dataset.col;
    fleet.desc = fleet.sort === c ? !fleet.desc : false;
    fleet.sort = c;
    document.querySelectorAll("#fleet th").forEach((h) => h.classList.remove("sorted", "desc"));
    th.classList.add("sorted");
    th.classList.toggle("desc", fleet.desc);
    fleet.offset = 0;
    loadFleet();
  }));
  let typing = null;
  $("#q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { fleet.offset = 0; loadFleet(); }, 200); });
  $("#online").addEventListener("change", () => { fleet.offset = 0; loadFleet(); });
  $("#limit").addEventListener("change", () => { fleet.offset = 0; loadFleet(); });
  $("#prev").addEventListener("click", () => { fleet.offset = Math.max(0, fleet.offset - +$("#limit").value); loadFleet(); });
  $("#next").addEventListener("click", () => { fleet.offset += +$("#limit").value; loadFleet(); });
  setInterval(() => document.querySelectorAll("#fleet td[data-t]").forEach((td) => { if (td.dataset.t) td.textContent = ago(+td.dataset.t); }), 1000);

  // --- rounds ------------------------------------------------------------------------------------
  const PHASE_COLORS = ["#2d5be3", "#e3862d", "#1f8a4c", "#b3261e", "#7b3fbf", "#6a7480", "#c2a000"];
  const ROUND_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];   // rounds are whole: no tick at 1.5
  const width = (el) => Math.max(360, (el.parentElement && el.parentElement.clientWidth - 20) || 520);
  function chart(el, series, opts = {}) {
    const y = opts.yfmt ? { values: (u, vals) => vals.map(opts.yfmt), size: 70 } : {};
    const scales = { x: { time: false } };
    if (opts.zero) scales.y = { range: (u, min, max) => [0, max > 0 ? max * 1.05 : 1] };
    return new uPlot({ width: width(el), height: 220, scales, axes: [{ label: "round", incrs: ROUND_STEPS }, y].concat(opts.axes || []),
      series: [{ label: "round" }].concat(series), legend: { live: true } }, [[]].concat(series.map(() => [])), el);
  }
  function resize() {
    for (const [k, c] of Object.entries(ui.charts)) if (c && c.setSize && c.root) c.setSize({ width: width(c.root.parentElement), height: k === "compare" ? 300 : 220 });
  }
  window.addEventListener("resize", resize);
  function makeCharts() {
    const c = ui.charts;
    if (c.acc) return;
    c.acc = chart($("#chart-acc"), [{ label: "accuracy %", stroke: "#2d5be3", width: 2, points: { show: true } },
      { label: "loss", stroke: "#e3862d", scale: "loss" }], { axes: [{ side: 1, scale: "loss", grid: { show: false } }] });
    const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
    c.bytes = chart($("#chart-bytes"), [{ label: "up", stroke: "#2d5be3", fill: "#2d5be355", paths: bars, value: (u, v) => bytes(v) },
      { label: "down", stroke: "#e3862d", value: (u, v) => bytes(v) }], { yfmt: bytes, zero: true });
    c.joules = chart($("#chart-joules"), [{ label: "J", stroke: "#1f8a4c", fill: "#1f8a4c33", paths: bars }], { zero: true });
  }
  function phaseChart(names) {
    const el = $("#chart-phases");
    const key = names.join(",");
    if (ui.charts.phases && ui.charts.phasesKey === key) return ui.charts.phases;
    if (ui.charts.phases) ui.charts.phases.destroy();
    ui.charts.phasesKey = key;
    ui.charts.phases = chart(el, names.map((n, i) => ({ label: n, stroke: PHASE_COLORS[i % PHASE_COLORS.length], width: 1.5 })), { zero: true });
    return ui.charts.phases;
  }
  function optChart(fig, el, name, series) {
    $(fig).hidden = false;
    if (!ui.charts[name]) ui.charts[name] = chart($(el), series);
    return ui.charts[name];
  }
  function drawRounds() {
    makeCharts();
    const R = ui.rounds, x = R.map((r) => r.round), c = ui.charts;
    const shown = R.filter((r) => r.accuracy != null);
    c.acc.setData([shown.map((r) => r.round), shown.map((r) => 100 * r.accuracy), shown.map((r) => r.loss)]);
    $("#chart-acc").dataset.points = shown.length;
    c.bytes.setData([x, R.map((r) => r.bytes_up), R.map((r) => r.bytes_down)]);
    c.joules.setData([x, R.map((r) => r.joules)]);
    const names = [...new Set(R.flatMap((r) => Object.keys(r.phases_s || {})))];
    if (names.length) phaseChart(names).setData([x].concat(names.map((n) => R.map((r) => (r.phases_s || {})[n] ?? null))));
    if (R.some((r) => r.personal_mean != null)) {
      optChart("#fig-personal", "#chart-personal", "personal", [{ label: "mean %", stroke: "#2d5be3", width: 2 }, { label: "worst decile %", stroke: "#b3261e" }])
        .setData([x, R.map((r) => r.personal_mean == null ? null : 100 * r.personal_mean), R.map((r) => r.personal_p10 == null ? null : 100 * r.personal_p10)]);
    }
    if (R.some((r) => r.values_up != null)) {
      optChart("#fig-values", "#chart-values", "values", [{ label: "up", stroke: "#2d5be3" }, { label: "down", stroke: "#e3862d" }])
        .setData([x, R.map((r) => r.values_up), R.map((r) => r.values_down)]);
    }
    const phases = (p) => Object.entries(p || {}).map(([k, v]) => `${k} ${Number(v).toFixed(2)}`).join(", ");
    $("#rounds tbody").innerHTML = R.slice().reverse().slice(0, 500).map((r) => `<tr data-round="${r.round}"><td>${r.round}</td><td>${pct(r.accuracy)}</td>
      <td>${num(r.loss, 3)}</td><td>${num(r.wall_s, 2)}</td><td>${r.fl}</td><td>${r.cl}</td><td>${bytes(r.bytes_up)}</td>
      <td>${bytes(r.bytes_down)}</td><td>${num(r.joules, 2)}</td><td>${esc(phases(r.phases_s))}</td><td>${esc(reasons(r.rejected) || "–")}</td>
      <td>${esc(reasons(r.late) || "–")}</td></tr>`).join("");
  }
  function loadRounds() {
    const since = ui.rounds.length ? ui.rounds[ui.rounds.length - 1].round : 0;
    return api("rounds", { since }).then((rs) => {
      if (rs.length) { ui.rounds = ui.rounds.concat(rs); drawRounds(); }
    }).catch(() => {});
  }
  $("#rounds tbody").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (!tr) return;
    api("round/" + tr.dataset.round).then((m) => {
      const part = m.participants || {};
      const per = m.personal ? Object.entries(m.personal).sort((a, b) => a[1] - b[1]).map(([d, a]) => `${d} ${pct(a)}`).join(", ") : "";
      const vals = m.device_values ? Object.entries(m.device_values).map(([d, v]) => `${d} ↑${v.up} ↓${v.down}`).join(", ") : "";
      $("#round-detail").innerHTML = `<h3>round ${m.round}</h3><p><b>FL merged</b> ${esc((part.fl || []).join(", ") || "–")}<br>
        <b>CL merged</b> ${esc((part.cl || []).join(", ") || "–")}<br><b>idle</b> ${esc(Object.entries(m.idle || {}).map(([d, w]) => `${d} (${w})`).join(", ") || "–")}
        ${per ? `<br><b>personal accuracy, worst first</b> ${esc(per)}` : ""}${vals ? `<br><b>values moved</b> ${esc(vals)}` : ""}</p>
        <details><summary>stored metrics</summary><pre>${esc(JSON.stringify(m, null, 1))}</pre></details>`;
    });
  });

  // --- rejections --------------------------------------------------------------------------------
  function loadRejections() {
    return api("rejections", { limit: 300 }).then((r) => {
      $("#rej-counts").innerHTML = Object.entries(r.counts || {}).map(([k, v]) => `<div><b>${v}</b><small>${esc(k)}</small></div>`).join("") || "<div><b>0</b><small>rejected</small></div>";
      $("#rejections tbody").innerHTML = r.latest.map((x) => `<tr data-reason="${esc(x.reason)}"><td>${new Date(x.t * 1000).toLocaleTimeString()}</td>
        <td>${x.round ?? "–"}</td><td>${esc(x.device ?? "–")}</td><td>${esc(x.reason)}</td><td>${esc(x.detail || "")}</td></tr>`).join("");
    }).catch(() => {});
  }

  // --- compare -----------------------------------------------------------------------------------
  function loadCompare() {
    const COL = ["#2d5be3", "#e3862d", "#1f8a4c", "#b3261e", "#7b3fbf"];
    Promise.all(ui.runs.map((r) => Promise.all([
      fetch(`api/rounds?run=${r.run}`).then((x) => x.json()), fetch(`api/state?run=${r.run}`).then((x) => x.json())])))
      .then((all) => {
        const xs = [...new Set(all.flatMap(([rs]) => rs.map((r) => r.round)))].sort((a, b) => a - b);
        const el = $("#chart-compare");
        el.innerHTML = "";
        const series = all.map((_, i) => ({ label: ui.runs[i].name, stroke: COL[i % COL.length], width: 2 }));
        const data = [xs].concat(all.map(([rs]) => { const m = new Map(rs.map((r) => [r.round, r.accuracy == null ? null : 100 * r.accuracy])); return xs.map((x) => m.get(x) ?? null); }));
        ui.charts.compare = new uPlot({ width: Math.max(600, el.clientWidth), height: 300, scales: { x: { time: false } },
          axes: [{ label: "round", incrs: ROUND_STEPS }, { label: "accuracy %" }], series: [{ label: "round" }].concat(series) }, data, el);
        $("#compare tbody").innerHTML = all.map(([rs, st], i) => `<tr><td>${esc(ui.runs[i].name)}</td><td>${esc(st.strategy || "–")}</td>
          <td>${rs.length}</td><td>${pct(st.accuracy)}</td><td>${st.devices}</td><td>${bytes(st.bytes_up)}</td><td>${bytes(st.bytes_down)}</td>
          <td>${num(st.joules, 1)}</td><td>${esc(reasons(st.rejected) || "–")}</td></tr>`).join("");
      });
  }

  // --- views and live updates --------------------------------------------------------------------
  function show(v) {
    view = v;
    document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("on", b.dataset.view === v));
    document.querySelectorAll("section").forEach((s) => (s.hidden = s.id !== "view-" + v));
    if (v === "fleet") loadFleet();
    if (v === "rounds") { makeCharts(); drawRounds(); resize(); }
    if (v === "rejections") loadRejections();
    if (v === "compare") loadCompare();
  }
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => show(b.dataset.view)));

  function onState(st) {
    const before = state;
    head(st);
    if (!before || st.seq !== before.seq || st.mode !== before.mode || st.rounds_done !== before.rounds_done) {
      if (view === "fleet") loadFleet();
    }
    if (!before || st.rounds_done !== before.rounds_done) loadRounds();
    if (view === "rejections" && (!before || st.rejections_stored !== before.rejections_stored || st.seq !== before.seq)) loadRejections();
  }
  function listen() {
    if (es) es.close();
    es = new EventSource(`api/events?run=${ui.run}`);
    es.addEventListener("state", (e) => onState(JSON.parse(e.data)));
  }
  function start(run) {
    ui.run = run;
    ui.rounds = [];
    state = null;
    for (const k of Object.keys(ui.charts)) { if (ui.charts[k] && ui.charts[k].destroy) ui.charts[k].destroy(); }
    ui.charts = {};
    document.querySelectorAll(".chart").forEach((el) => (el.innerHTML = ""));
    api("state").then((st) => { onState(st); listen(); });
    show(view);
  }
  fetch("api/runs").then((r) => r.json()).then((runs) => {
    ui.runs = runs;
    if (runs.length > 1) {
      const pick = $("#run-pick");
      pick.innerHTML = runs.map((r) => `<option value="${r.run}">${esc(r.name)}</option>`).join("");
      pick.hidden = false;
      pick.addEventListener("change", () => start(+pick.value));
      document.querySelector('nav button[data-view="compare"]').hidden = false;
    }
    start(0);
  });
})();
