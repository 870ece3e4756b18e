// raftmq console: reads this node's HTTP API every REFRESH_MS and renders it. No framework,
// no build step, no external requests (same origin only; see the CSP in node/ui.py).
"use strict";

const REFRESH_MS = 2000;
// A refresh that takes long (thousands of queues) stretches the interval, so that an open
// console keeps its share of a node's time under about 1/REFRESH_BACKOFF_FACTOR.
const REFRESH_BACKOFF_FACTOR = 10;
const REFRESH_MAX_MS = 60000;
const REQUEST_TIMEOUT_MS = 5000;
const REDRIVE_MAX_DEFAULT = 100;
const REDRIVE_MAX = 1000;            // the node's batch_messages_max default
const WATERMARKS_SHOWN_MAX = 8;      // partitions listed per topic row before "..."
const TOKEN_KEY = "raftmq.console.token";

const state = { paused: false, prev: null, refreshes: 0, timer: null, running: false,
                again: false, queueNames: [] };
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en-US");

// -- HTTP --------------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const init = { method, headers, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    const res = await fetch(path, init);
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { raw: text }; }
    return { ok: res.ok, status: res.status, data };
  } catch (e) {
    return { ok: false, status: 0, data: { error: { code: "network", message: String(e) } } };
  }
}

function errorText(what, resp) {
  const err = resp.data && resp.data.error;
  if (err) return `${what}: ${err.code}: ${err.message}`;
  return `${what}: HTTP ${resp.status}`;
}

// -- formatting ----------------------------------------------------------------------------
function num(v) { return v === null || v === undefined ? "\u2013" : fmt.format(v); }

function age(seconds) {
  if (!seconds) return "\u2013";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${String(Math.floor(seconds % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

function rate(prevValue, value, dtS) {
  if (prevValue === undefined || dtS <= 0) return "\u2013";
  return (Math.max(0, value - prevValue) / dtS).toFixed(1);
}

// -- keyed table rows: rows (and any input in them) survive a refresh ---------------------
function syncRows(tbody, items, key, create, update) {
  const existing = new Map();
  for (const tr of Array.from(tbody.rows)) existing.set(tr.dataset.key, tr);
  items.forEach((item, i) => {
    const k = key(item);
    let tr = existing.get(k);
    if (!tr) { tr = create(item); tr.dataset.key = k; }
    existing.delete(k);
    update(tr, item);
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
  });
  for (const tr of existing.values()) tr.remove();
}

function row(cells, numeric) {
  const tr = document.createElement("tr");
  for (let i = 0; i < cells; i++) {
    const td = tr.insertCell();
    if (numeric.includes(i)) td.className = "n";
  }
  return tr;
}

function setText(tr, values) {
  values.forEach((v, i) => { if (v !== null && tr.cells[i].textContent !== String(v)) tr.cells[i].textContent = v; });
}

// -- cluster -------------------------------------------------------------------------------
function renderCluster(c) {
  $("cluster-name").textContent = "cluster " + c.cluster;
  $("node-name").textContent = "via node " + c.node;
  $("leader").textContent = c.leader || "none (election?)";
  $("leader").className = c.leader ? "" : "bad";
  $("term").textContent = num(c.term);
  $("commit-index").textContent = num(c.commit_index);
  $("applied-index").textContent = num(c.applied_index);
  $("this-node").textContent = `${c.node} (${c.role})`;
  syncRows($("members"), c.members, (m) => m.id, () => {
    const tr = row(6, []);
    tr.cells[5].appendChild(document.createElement("a")).textContent = "open";
    return tr;
  }, (tr, m) => {
    // this node's view of another member's role is only a guess once it cannot reach it
    const role = m.reachable || m.id === c.node ? m.role : "unknown";
    setText(tr, [m.id + (m.id === c.node ? " (this node)" : ""), role,
                 m.reachable ? "yes" : "no", m.raft, m.http, null]);
    tr.cells[1].className = "role-" + role;
    tr.cells[2].className = m.reachable ? "good" : "bad";
    tr.cells[5].firstChild.href = `http://${m.http}/ui`;
  });
}

// -- queues --------------------------------------------------------------------------------
function renderQueues(queues, prev, dtS) {
  $("queue-count").textContent = `(${queues.length})`;
  $("no-queues").hidden = queues.length > 0;
  syncRows($("queue-rows"), queues, (q) => q.name, () => row(11, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    (tr, q) => {
      const s = q.stats, p = prev[q.name] || {};
      setText(tr, [q.name, num(s.ready), num(s.in_flight), num(s.delayed),
                   age(s.oldest_ready_age_s), num(s.published_total),
                   rate(p.published, s.published_total, dtS), num(s.acked_total),
                   rate(p.acked, s.acked_total, dtS), num(s.dead_lettered_total),
                   q.config.dead_letter_queue || "\u2013"]);
    });
}

function deadLetterQueues(queues) {
  const sources = new Map();
  for (const q of queues) {
    const dlq = q.config.dead_letter_queue;
    if (dlq) sources.set(dlq, (sources.get(dlq) || []).concat([q.name]));
  }
  const names = new Set(queues.map((q) => q.name));
  return queues.filter((q) => sources.has(q.name) || /dlq$/i.test(q.name)).map((q) => {
    const from = sources.get(q.name) || [];
    const stripped = q.name.replace(/[-_.]?dlq$/i, "");
    const target = from[0] || (names.has(stripped) ? stripped : "");
    return { queue: q, from, target };
  });
}

function renderDlqs(queues) {
  const dlqs = deadLetterQueues(queues);
  $("no-dlqs").hidden = dlqs.length > 0;
  syncRows($("dlq-rows"), dlqs, (d) => d.queue.name, createDlqRow, (tr, d) => {
    const s = d.queue.stats;
    setText(tr, [d.queue.name, d.from.join(", ") || "\u2013", num(s.ready), num(s.in_flight),
                 age(s.oldest_ready_age_s), null, null, null]);
  });
}

function createDlqRow(d) {
  const tr = row(8, [2, 3, 4]);
  const to = tr.cells[5].appendChild(document.createElement("input"));
  Object.assign(to, { type: "text", name: "to", value: d.target, placeholder: "target queue" });
  to.setAttribute("list", "queue-names");
  const max = tr.cells[6].appendChild(document.createElement("input"));
  Object.assign(max, { type: "number", name: "max", min: 1, max: REDRIVE_MAX,
                       value: REDRIVE_MAX_DEFAULT });
  const button = tr.cells[7].appendChild(document.createElement("button"));
  Object.assign(button, { type: "button", name: "redrive", textContent: "Redrive" });
  button.addEventListener("click", () => redrive(d.queue.name, to, max, button));
  return tr;
}

async function redrive(dlq, toInput, maxInput, button) {
  const out = $("redrive-result");
  const to = toInput.value.trim();
  const max = Number(maxInput.value);
  if (!to) { out.className = "bad"; out.textContent = "Redrive: name a target queue."; return; }
  if (!Number.isInteger(max) || max < 1 || max > REDRIVE_MAX) {
    out.className = "bad";
    out.textContent = `Redrive: max must be a whole number from 1 to ${REDRIVE_MAX}.`;
    return;
  }
  button.disabled = true;
  const resp = await api("POST", `/v1/queues/${encodeURIComponent(dlq)}/redrive`,
                         { to, max_messages: max });
  button.disabled = false;
  if (resp.ok) {
    out.className = "good";
    out.textContent = `Moved ${resp.data.moved} message(s) from ${dlq} to ${to}.`;
  } else {
    out.className = "bad";
    out.textContent = errorText("Redrive", resp);
  }
  refreshNow();
}

function renderQueueNames(queues) {
  let list = $("queue-names");
  if (!list) {
    list = document.body.appendChild(document.createElement("datalist"));
    list.id = "queue-names";
  }
  const names = queues.map((q) => q.name);
  if (names.join("\n") === state.queueNames.join("\n")) return;
  state.queueNames = names;
  list.replaceChildren(...names.map((n) => Object.assign(document.createElement("option"), { value: n })));
}

// -- topics --------------------------------------------------------------------------------
function watermarks(parts) {
  const shown = parts.slice(0, WATERMARKS_SHOWN_MAX)
    .map((p) => `p${p.partition} ${p.low_watermark}\u2013${p.high_watermark}`);
  return shown.join(", ") + (parts.length > shown.length ? ", \u2026" : "");
}

function renderTopics(resp, prev, dtS) {
  if (resp.status === 404) {
    $("topic-count").textContent = "(not served by this node)";
    $("no-topics").hidden = true;
    return;
  }
  const topics = resp.data.topics;
  $("topic-count").textContent = `(${topics.length})`;
  $("no-topics").hidden = topics.length > 0;
  syncRows($("topic-rows"), topics, (t) => t.name, () => row(7, [1, 2, 3, 4]), (tr, t) => {
    const messages = t.partitions.reduce((sum, p) => sum + p.messages, 0);
    setText(tr, [t.name, num(t.partitions.length), num(messages), num(t.published_total),
                 rate(prev[t.name], t.published_total, dtS), watermarks(t.partitions),
                 (t.groups || []).join(", ") || "\u2013"]);
  });
}

// -- the refresh loop --------------------------------------------------------------------
function snapshot(queues, topics) {
  const q = {}, t = {};
  for (const x of queues) q[x.name] = { published: x.stats.published_total, acked: x.stats.acked_total };
  for (const x of topics) t[x.name] = x.published_total;
  return { at: performance.now(), queues: q, topics: t };
}

async function refresh() {
  // consistency=local: the console shows what this node holds even while it cannot reach a
  // majority (an operator needs the view most then); it refreshes every few seconds anyway
  const [cluster, queues, topics] = await Promise.all([
    api("GET", "/v1/cluster"), api("GET", "/v1/queues?consistency=local"),
    api("GET", "/v1/topics?consistency=local")]);
  const errors = [];
  const prev = state.prev || { at: performance.now(), queues: {}, topics: {} };
  const dtS = state.prev ? (performance.now() - prev.at) / 1000 : 0;
  if (cluster.ok) renderCluster(cluster.data); else errors.push(errorText("cluster", cluster));
  const queueList = queues.ok ? queues.data.queues : [];
  if (queues.ok) {
    renderQueues(queueList, prev.queues, dtS);
    renderDlqs(queueList);
    renderQueueNames(queueList);
  } else errors.push(errorText("queues", queues));
  const topicList = topics.ok ? topics.data.topics : [];
  if (topics.ok || topics.status === 404) renderTopics(topics, prev.topics, dtS);
  else errors.push(errorText("topics", topics));
  if (queues.ok && (topics.ok || topics.status === 404)) state.prev = snapshot(queueList, topicList);
  showErrors(errors);
  state.refreshes += 1;
  document.body.dataset.refreshes = String(state.refreshes);
}

function showErrors(errors) {
  const box = $("error");
  box.hidden = errors.length === 0;
  box.textContent = errors.join(" \u00b7 ");
  const when = new Date().toLocaleTimeString();
  $("refresh-state").textContent = errors.length ? `errors at ${when}` : `updated ${when}`;
}

// One refresh at a time: a refresh asked for while one runs (a redrive) follows it at once.
async function loop() {
  if (state.running) { state.again = true; return; }
  clearTimeout(state.timer);
  state.running = true;
  const started = performance.now();
  try {
    if (!state.paused) await refresh();
  } catch (e) {
    showErrors(["console: " + e]);
  } finally {
    state.running = false;
  }
  if (state.again) { state.again = false; loop(); return; }
  state.timer = setTimeout(loop, nextDelayMs(performance.now() - started));
}

function nextDelayMs(tookMs) {
  const delay = Math.min(REFRESH_MAX_MS, Math.max(REFRESH_MS, tookMs * REFRESH_BACKOFF_FACTOR));
  if (delay > REFRESH_MS && !state.paused) {
    $("refresh-state").textContent += ` (next in ${(delay / 1000).toFixed(0)} s: slow answers)`;
  }
  return delay;
}

function refreshNow() { loop(); }

function init() {
  const token = $("token");
  token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("change", () => {
    if (token.value) sessionStorage.setItem(TOKEN_KEY, token.value);
    else sessionStorage.removeItem(TOKEN_KEY);
    refreshNow();
  });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("refresh-state").textContent = state.paused ? "paused" : "resuming\u2026";
    if (!state.paused) refreshNow();
  });
  loop();
}

document.addEventListener("DOMContentLoaded", init);
