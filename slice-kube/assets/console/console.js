// slicenet console: renders /api/model (live through /api/events, polling when server-sent
// events are unavailable). Read-only; no external resources.
"use strict";
let model = null;

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const rank = { Down: 3, Pending: 2, Unknown: 1, Up: 0 };
const bytes = (n) => {
  if (n === null || n === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
};
const rtt = (ms) => (ms === null || ms === undefined ? "" : ms + " ms");
const rate = (bps) => {
  if (bps === null || bps === undefined) return "";
  const u = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"]; let i = 0;
  while (bps >= 1000 && i < u.length - 1) { bps /= 1000; i++; }
  return (i ? bps.toFixed(1) : bps) + " " + u[i];
};

// One link per slice and pair of clusters: the worse of the two directions.
function links(m) {
  const by = new Map();
  for (const t of m.tunnels) {
    const [a, b] = [t.from, t.to].sort();
    const key = t.slice + "|" + a + "|" + b;
    const l = by.get(key) || { slice: t.slice, a, b, state: "Up", reasons: [], rtt: null, bps: null };
    if (rank[t.state] > rank[l.state]) l.state = t.state;
    if (t.state !== "Up" && t.reason) l.reasons.push(t.from + " → " + t.to + ": " + t.reason);
    if (t.rttMillis !== null && t.rttMillis !== undefined) l.rtt = t.rttMillis;
    // Throughput of the link: the larger of the two directions' sent rates.
    if (t.txBitsPerSecond !== null && t.txBitsPerSecond !== undefined) l.bps = Math.max(l.bps ?? 0, t.txBitsPerSecond);
    by.set(key, l);
  }
  return [...by.values()];
}

function topology(m, only) {
  const names = m.clusters.map((c) => c.name);
  for (const t of m.tunnels) for (const n of [t.from, t.to]) if (!names.includes(n)) names.push(n);
  const W = 400, H = 300, R = Math.min(W, H) / 2 - 45, cx = W / 2, cy = H / 2;
  const pos = {};
  names.forEach((n, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(names.length, 1);
    pos[n] = [cx + (names.length > 1 ? R * Math.cos(a) : 0), cy + (names.length > 1 ? R * Math.sin(a) : 0)];
  });
  let svg = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="topology">`;
  for (const l of links(m).filter((l) => !only || l.slice === only)) {
    const [x1, y1] = pos[l.a], [x2, y2] = pos[l.b];
    const why = l.reasons.join("; ");
    svg += `<g class="link tunnel ${esc(l.state)}" data-slice="${esc(l.slice)}" data-a="${esc(l.a)}" data-b="${esc(l.b)}" data-state="${esc(l.state)}" data-reason="${esc(why)}">` +
      `<title>${esc(l.slice)}: ${esc(l.a)} ↔ ${esc(l.b)} ${esc(l.state)} ${esc(why)}</title>` +
      `<line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}"/>` +
      `<text x="${(x1 + x2) / 2}" y="${(y1 + y2) / 2 - 4}">${esc(l.state === "Up" ? [rtt(l.rtt), rate(l.bps)].filter((x) => x).join(" · ") : l.state)}</text></g>`;
  }
  for (const n of names) {
    const c = m.clusters.find((c) => c.name === n);
    const cls = c && c.healthy ? "healthy" : "unhealthy";
    const [x, y] = pos[n];
    svg += `<a href="#/cluster/${encodeURIComponent(n)}"><g class="node cluster ${cls}" data-cluster="${esc(n)}">` +
      `<circle cx="${x}" cy="${y}" r="28"/><text x="${x}" y="${y + 5}">${esc(n)}</text></g></a>`;
  }
  return `<div id="topology">${svg}</div>`;
}

function tunnelTable(ts) {
  if (!ts.length) return "<p>No tunnels.</p>";
  const rows = ts.map((t) => `<tr class="tunnel-row" data-slice="${esc(t.slice)}" data-from="${esc(t.from)}" data-to="${esc(t.to)}" data-state="${esc(t.state)}">` +
    `<td>${esc(t.slice)}</td><td>${esc(t.from)} → ${esc(t.to)}</td><td class="state ${esc(t.state)}">${esc(t.state)}</td>` +
    `<td class="reason">${esc(t.reason)}</td><td>${esc(rtt(t.rttMillis))}</td><td>${bytes(t.rxBytes)} / ${bytes(t.txBytes)}</td><td class="rate">${esc(rate(t.rxBitsPerSecond) || "-")} / ${esc(rate(t.txBitsPerSecond) || "-")}</td><td>${esc(t.lastHandshake || "-")}</td></tr>`).join("");
  return `<div class="scroll"><table id="tunnels"><tr><th>slice</th><th>tunnel</th><th>state</th><th>reason</th><th>RTT</th><th>rx / tx</th><th>rate rx / tx</th><th>last handshake</th></tr>${rows}</table></div>`;
}

function problems(m) {
  if (!m.problems.length) return `<p id="problems" class="ok">No problems.</p>`;
  return `<ul id="problems">` + m.problems.map((p) => `<li class="problem ${esc(p.severity)}" data-check="${esc(p.check)}">` +
    `<b>${esc(p.place)}</b>: ${esc(p.problem)}<br><span class="fix">fix: ${esc(p.fix)}</span></li>`).join("") + `</ul>`;
}

function overview(m) {
  const slices = m.slices.map((s) => `<div class="card slice-card" data-slice="${esc(s.name)}"><a href="#/slice/${encodeURIComponent(s.name)}">${esc(s.name)}</a> ` +
    `<span class="state ${s.ready ? "Up" : "Down"}">${s.ready ? "Ready" : "not ready"}</span><br>${esc(s.subnet)} · ${s.clusters.length} clusters · ${s.connectedPods} pods</div>`).join("");
  return `<h1>Cluster set</h1>${topology(m)}<h2>Problems</h2>${problems(m)}<h2>Slices</h2><div class="cards">${slices || "<p>No slices.</p>"}</div><h2>Tunnels</h2>${tunnelTable(m.tunnels)}`;
}

function slicePage(m, name) {
  const s = m.slices.find((s) => s.name === name);
  if (!s) return `<h1>Slice ${esc(name)}</h1><p>No such slice.</p>`;
  const members = m.clusters.flatMap((c) => c.gateways.filter((g) => g.slice === name).map((g) => ({ c: c.name, g })));
  const rows = members.map(({ c, g }) => `<tr data-cluster="${esc(c)}"><td><a href="#/cluster/${encodeURIComponent(c)}">${esc(c)}</a></td><td>${esc(g.clusterPrefix)}</td>` +
    `<td class="state ${g.ready ? "Up" : "Down"}">${g.ready ? "Ready" : esc(g.reason)}</td><td>${g.connectedPods}</td><td>${esc(g.endpoint || "behind NAT")}</td><td>${esc(g.exports.join(", ") || "-")}</td><td class="policies ${g.policiesOk ? "" : "bad"}">${esc(g.policies || "-")}</td></tr>`).join("");
  return `<h1 id="slice-title">Slice ${esc(s.name)}</h1><p>${esc(s.subnet)} · VNI ${esc(s.vni ?? "-")} · <span class="state ${s.ready ? "Up" : "Down"}">${s.ready ? "Ready" : esc(s.reason)}</span></p>` +
    `<p>Namespaces: ${esc(s.namespaces.join(", ") || "-")}<br>QoS: ${esc(s.qos || "none")}<br>Services: ${esc(s.services.join(", ") || "-")}</p>` +
    topology(m, name) + `<h2>Members</h2><div class="scroll"><table id="members"><tr><th>cluster</th><th>prefix</th><th>ready</th><th>pods</th><th>gateway endpoint</th><th>exports</th><th>policies</th></tr>${rows}</table></div>` +
    `<h2>Tunnels</h2>${tunnelTable(m.tunnels.filter((t) => t.slice === name))}`;
}

function clusterPage(m, name) {
  const c = m.clusters.find((c) => c.name === name);
  if (!c) return `<h1>Cluster ${esc(name)}</h1><p>No such cluster registered.</p>`;
  const gws = c.gateways.map((g) => `<div class="card gateway-card" data-slice="${esc(g.slice)}"><b>gateway of <a href="#/slice/${encodeURIComponent(g.slice)}">${esc(g.slice)}</a></b> ` +
    `<span class="state ${g.ready ? "Up" : "Down"}">${g.ready ? "Ready" : esc(g.reason)}</span><br>endpoint ${esc(g.endpoint || "behind NAT")}<br>prefix ${esc(g.clusterPrefix)}<br>` +
    `nodes: ${esc(g.nodes.join(" ") || "-")}<br>key ${esc(g.publicKey || "-")}</div>`).join("");
  const a = c.agents;
  const agents = !a ? `<p id="cluster-agents">Node agents: not reported (no agent Lease)</p>` :
    `<p id="cluster-agents" class="${a.ready === a.nodes && !(a.problems || []).length ? "ok" : "bad"}">Node agents: ${a.ready} of ${a.nodes} ready` +
    `${(a.versions || []).length ? " · " + esc(a.versions.join(", ")) : ""}</p>` +
    ((a.problems || []).length ? `<ul class="agent-problems">${a.problems.map((p) => `<li><b>${esc(p.node)}</b>: ${esc(p.message)} (${esc(p.reason)})</li>`).join("")}</ul>` : "");
  return `<h1 id="cluster-title">Cluster ${esc(c.name)}</h1><p class="${c.healthy ? "ok" : "bad"}">${c.healthy ? "Healthy" : "Not healthy: " + esc(c.reason)} · last heartbeat ${esc(c.lastHeartbeat || "never")}</p>` +
    agents + `<p id="cluster-versions">slicenet worker ${esc(c.workerVersion || "unknown")} · clock ${c.clockOffsetSeconds == null ? "not measured" : esc(c.clockOffsetSeconds) + " s from the hub's"}</p>` +
    `<p>Gateway addresses: ${esc(c.gatewayAddresses.join(", ") || "-")}<br>Pod CIDRs: ${esc(c.podCidrs.join(", ") || "-")}<br>Uplink: ${esc(c.uplinkKbps ? c.uplinkKbps + " kbit/s" : "-")}</p>` +
    `<h2>Gateways</h2><div class="cards">${gws || "<p>No slices here.</p>"}</div><h2>Tunnels</h2>${tunnelTable(m.tunnels.filter((t) => t.from === name || t.to === name))}`;
}

function render() {
  if (!model) return;
  const nav = `<a href="#/">overview</a>` + model.slices.map((s) => `<a href="#/slice/${encodeURIComponent(s.name)}">${esc(s.name)}</a>`).join("");
  document.getElementById("nav").innerHTML = nav;
  const [, kind, name] = (location.hash || "#/").slice(1).split("/").map(decodeURIComponent);
  const html = kind === "slice" ? slicePage(model, name) : kind === "cluster" ? clusterPage(model, name) : overview(model);
  document.getElementById("main").innerHTML = html;
  document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
  // Time to first render since navigation start, for the benchmark.
  if (window.__firstRender === undefined) window.__firstRender = performance.now();
}

function show(text, how) {
  model = JSON.parse(text);
  document.getElementById("live").textContent = how + " · " + new Date().toLocaleTimeString();
  render();
}

function poll() {
  fetch("api/model").then((r) => r.text()).then((t) => show(t, "polling")).catch(() => {
    document.getElementById("live").textContent = "hub unreachable, retrying";
  });
}

function live() {
  if (!window.EventSource) { poll(); setInterval(poll, 2000); return; }
  const es = new EventSource("api/events");
  es.onmessage = (e) => show(e.data, "live");
  es.onerror = () => { document.getElementById("live").textContent = "reconnecting…"; };
}

window.addEventListener("hashchange", render);
live();
