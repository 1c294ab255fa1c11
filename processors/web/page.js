// The journeys page: fetches /api/* (or reads window.JOURNEYS_DATA in a static report) and draws.
"use strict";
(function () {
  const STATIC = window.JOURNEYS_DATA;
  const PHASE_COLOURS = ["#4c78a8", "#72b7b2", "#f58518", "#54a24b", "#b279a2"];
  const END_COLOURS = { converted: "#54a24b", retained: "#2e7d32", dropped: "#c0392b", churned: "#8e44ad", open: "#9aa5b1", unengaged: "#cbd2d9" };
  const PLOT = { displayModeBar: false, responsive: true };

  function query(params) {
    const search = new URLSearchParams();
    Object.entries(params).forEach(([k, v]) => { if (v !== "" && v != null) search.set(k, v); });
    const text = search.toString();
    return text ? "?" + text : "";
  }

  // A report's key for a request: the path and its non-empty parameters, sorted (see web/__init__.py).
  function staticKey(path, params) {
    const entries = Object.entries(params).filter(([, v]) => v !== "" && v != null).map(([k, v]) => [k, String(v)]);
    entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    return path + " " + JSON.stringify(entries);
  }

  async function load(path, params) {
    if (STATIC) {
      const key = staticKey(path, params || {});
      if (!(key in STATIC.responses)) throw new Error("not in this report: " + key);
      return STATIC.responses[key];
    }
    const response = await fetch("api/" + path + query(params || {}));
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function showError(error) {
    const box = document.getElementById("error");
    box.textContent = String(error.message || error);
    box.style.display = "block";
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : text;
    if (className) td.className = className;
    return td;
  }

  function fill(tableId, rows, makeRow) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren(...rows.map(makeRow));
  }

  function filters() {
    const form = document.getElementById("filters");
    return Object.fromEntries(new FormData(form).entries());
  }

  function drawOverview(o) {
    const items = [["journeys", o.journeys], ["customers", o.customers], ["converted", o.converted], ["dropped", o.dropped], ["still open", o.open]];
    document.getElementById("overview").replaceChildren(...items.map(([label, value]) => {
      const div = document.createElement("div");
      div.dataset.metric = label;
      const b = document.createElement("b");
      b.textContent = value.toLocaleString("en");
      div.append(b, label);
      return div;
    }));
  }

  function drawFunnel(steps) {
    Plotly.react("funnel", [{
      type: "funnel", y: steps.map(s => s.label), x: steps.map(s => s.journeys),
      textinfo: "value+percent initial", marker: { color: PHASE_COLOURS },
    }], { margin: { l: 190, r: 20, t: 10, b: 20 } }, PLOT);
    fill("funnel-table", steps, s => {
      const tr = document.createElement("tr");
      tr.dataset.phase = s.phase;
      tr.append(cell(s.label), cell(s.journeys, "n"),
        cell(s.conversion_to_next == null ? "" : (100 * s.conversion_to_next).toFixed(1) + "%", "n"),
        cell(s.median_days_to_next, "n"), cell(s.dropped_here, "n"));
      return tr;
    });
  }

  function drawSankey(flows) {
    const names = [];
    const index = name => { if (!names.includes(name)) names.push(name); return names.indexOf(name); };
    const links = flows.links.filter(l => l.journeys > 0);
    const source = links.map(l => index(l.source)), target = links.map(l => index(l.target));
    const colours = names.map(n => END_COLOURS[n] || PHASE_COLOURS[["orientation", "consideration", "purchase", "usage", "retention"].indexOf(n)] || "#888");
    Plotly.react("sankey", [{
      type: "sankey", arrangement: "snap",
      node: { label: names, color: colours, pad: 14, thickness: 14 },
      link: { source, target, value: links.map(l => l.journeys) },
    }], { margin: { l: 10, r: 10, t: 10, b: 10 } }, PLOT);
  }

  function drawDropoffs(points) {
    fill("dropoffs", points, p => {
      const tr = document.createElement("tr");
      tr.className = "clickable";
      tr.dataset.point = JSON.stringify({ phase: p.phase, channel: p.channel, action: p.action, detail: p.detail });
      tr.append(cell(p.phase), cell(p.channel), cell(p.action), cell(p.detail), cell(p.dropped_journeys, "n"),
        cell(p.did_just_before.join("; ")));
      tr.addEventListener("click", () => drill(tr));
      return tr;
    });
  }

  function drawSwitches(cells) {
    const channels = ["web", "email", "phone", "social"];
    const z = channels.map(to => channels.map(from => {
      const c = cells.find(x => x.from_channel === from && x.to_channel === to);
      return c ? c.switches : 0;
    }));
    const text = channels.map(to => channels.map(from => {
      const c = cells.find(x => x.from_channel === from && x.to_channel === to);
      return c ? `${from} → ${to}: ${c.switches} switches, ${(100 * c.share_after_failure).toFixed(0)}% after a failure` : "";
    }));
    Plotly.react("switches", [{
      type: "heatmap", x: channels, y: channels, z, text, hoverinfo: "text", colorscale: "Reds", showscale: true,
    }], { margin: { l: 60, r: 10, t: 10, b: 40 }, xaxis: { title: "from" }, yaxis: { title: "to" } }, PLOT);
  }

  function drawEmotion(points) {
    Plotly.react("emotion", [{
      type: "scatter", mode: "lines+markers", x: points.map(p => p.label), y: points.map(p => p.mean_sentiment),
      text: points.map(p => `low: ${p.low_point} (${p.low}) · high: ${p.high_point} (${p.high})`), hoverinfo: "text+y",
      line: { color: "#4c78a8" },
    }], { margin: { l: 40, r: 10, t: 10, b: 60 }, yaxis: { range: [-1, 1], zeroline: true } }, PLOT);
  }

  function drawMoments(rows) {
    fill("moments", rows, m => {
      const tr = document.createElement("tr");
      tr.append(cell(m.channel), cell(m.action), cell(m.journeys_with, "n"),
        cell((100 * m.conversion_with).toFixed(1) + "%", "n"), cell(m.conversion_lift, "n"),
        cell((100 * m.dropoff_with).toFixed(1) + "%", "n"), cell(m.dropoff_lift, m.dropoff_lift > 1.5 ? "n fail" : "n"));
      return tr;
    });
  }

  async function drill(row) {
    document.querySelectorAll("#dropoffs tr.selected").forEach(r => r.classList.remove("selected"));
    row.classList.add("selected");
    const point = JSON.parse(row.dataset.point);
    const params = Object.assign({}, STATIC ? {} : filters(),
      { point_phase: point.phase, point_channel: point.channel, point_action: point.action, point_detail: point.detail });
    try {
      const examples = await load("dropoff-examples", params);
      document.getElementById("drilldown").hidden = false;
      document.getElementById("drilldown-title").textContent =
        `Customers who left at ${point.phase} · ${point.channel} · ${point.action}${point.detail ? " · " + point.detail : ""}`;
      fill("examples", examples, e => {
        const tr = document.createElement("tr");
        tr.className = "clickable";
        tr.dataset.customer = e.customer_id;
        tr.append(cell(e.customer_id), cell(e.persona), cell(String(e.ended_at).replace("T", " ").slice(0, 16)),
          cell(e.touchpoints, "n"));
        tr.addEventListener("click", () => showTimeline(e.customer_id, tr));
        return tr;
      });
      document.getElementById("drilldown").scrollIntoView({ behavior: "smooth" });
    } catch (error) { showError(error); }
  }

  async function showTimeline(customer, row) {
    document.querySelectorAll("#examples tr.selected").forEach(r => r.classList.remove("selected"));
    row.classList.add("selected");
    try {
      const events = await load("timeline", { customer });
      const title = document.getElementById("timeline-title");
      title.hidden = false;
      title.textContent = `Timeline of ${customer} (${events.length} touchpoints)`;
      document.getElementById("timeline").hidden = false;
      fill("timeline", events, t => {
        const tr = document.createElement("tr");
        tr.dataset.channel = t.channel;
        tr.append(cell(String(t.occurred_at).replace("T", " ").slice(0, 19)), cell(t.channel),
          cell(t.action, t.is_failure ? "fail" : ""), cell(t.phase), cell(t.detail),
          cell(t.sentiment == null ? "" : Number(t.sentiment).toFixed(2), "n"));
        return tr;
      });
    } catch (error) { showError(error); }
  }

  async function refresh() {
    document.getElementById("error").style.display = "none";
    try {
      const data = await load("all", STATIC ? {} : filters());
      drawOverview(data.overview);
      drawFunnel(data.funnel);
      drawSankey(data.flows);
      drawDropoffs(data.dropoffs);
      drawSwitches(data.switches);
      drawEmotion(data.emotion);
      drawMoments(data.moments);
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
    } catch (error) { showError(error); }
  }

  async function start() {
    const options = await load("options", {});
    const persona = document.getElementById("filter-persona");
    options.personas.forEach(p => persona.append(new Option(p, p)));
    const channel = document.getElementById("filter-channel");
    options.channels.forEach(c => channel.append(new Option(c, c)));
    if (STATIC) {
      document.getElementById("filters").hidden = true;
      document.getElementById("subtitle").textContent += ` Static report of ${STATIC.generated_at} (all journeys).`;
    }
    document.getElementById("filters").addEventListener("submit", event => { event.preventDefault(); refresh(); });
    await refresh();
  }

  start().catch(showError);
})();
