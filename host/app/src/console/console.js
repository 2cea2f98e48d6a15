// The operator console: the host's live state from GET /v1/stream, and the
// same operations as `pgnotifier ctl`, through the admin API's routes. With
// an admin token, it is kept for this tab only (sessionStorage) and sent as
// a bearer token: never in a URL, never in a cookie.
"use strict";

const $ = (selector) => document.querySelector(selector);
let token = sessionStorage.getItem("pgnotifier-token") || "";

function headers(extra) {
  const all = Object.assign({}, extra);
  if (token) all.Authorization = "Bearer " + token;
  return all;
}

function showError(text) {
  $("#error").textContent = text || "";
}

// One request to the admin API; its JSON reply, or null with the error it
// answers with shown.
async function call(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init).catch(() => null);
  const reply = response ? await response.json().catch(() => ({})) : {};
  if (!response || !response.ok) {
    showError(method + " " + path + ": " + (reply.error || (response ? response.status : "host unreachable")));
    return null;
  }
  showError("");
  return reply;
}

// An operation: a POST (or `method`) to `path`.
function act(path, body, method) {
  return call(method || "POST", path, body || {});
}

const encode = encodeURIComponent;

function cell(row, label, text, className) {
  const td = document.createElement("td");
  td.dataset.label = label;
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function button(td, text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  td.appendChild(b);
}

function renderListener(listener) {
  const dl = $("#listener");
  dl.replaceChildren();
  const add = (name, value) => {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  };
  add("connected", listener.connected ? "yes" : "NO");
  add("backend pid", listener.backend_pid ?? "-");
  add("listening", (listener.listening || []).join(", ") || "nothing");
  add("reconnects", listener.reconnects ?? 0);
  add("NOTIFY queue", ((listener.notify_queue_usage || 0) * 100).toFixed(1) + "% full");
  const gap = listener.last_gap;
  if (gap) {
    const time = (ms) => (ms == null ? "?" : new Date(ms).toLocaleTimeString());
    add("last gap", time(gap.lost_at_ms) + " to " + time(gap.resumed_at_ms) + " on " + gap.channels.join(", ") + ": " + gap.cause);
  }
  const c = listener.cluster || {};
  add("cluster role", c.role ?? "-");
  if (c.cluster) add("cluster", c.cluster + " / " + (c.group ?? "-") + ", leader " + (c.leader ?? "none"));
}

// Rates, from the counters of successive states: per channel, the
// notifications received per second over the last five minutes, a sample
// every 5 s (shown as a line and as a number); per subscriber, the last rate.
const RATE_EVERY_MS = 5000;
const RATE_SAMPLES = 60;
const history = new Map();

function rate(key, count, now) {
  let h = history.get(key);
  if (!h) {
    h = { samples: [], at: now, count, seenAt: now, seenCount: count, current: count, last: 0 };
    history.set(key, h);
  }
  h.current = count;
  if (now - h.seenAt >= 900) {
    h.last = ((count - h.seenCount) * 1000) / (now - h.seenAt);
    h.seenAt = now;
    h.seenCount = count;
  }
  if (now - h.at >= RATE_EVERY_MS) {
    h.samples.push(((count - h.count) * 1000) / (now - h.at));
    if (h.samples.length > RATE_SAMPLES) h.samples.shift();
    h.at = now;
    h.count = count;
  }
  return h;
}

// A rate's cell: its text (and line), kept current between states, since
// the stream sends nothing while nothing changes.
function rateCell(row, label, key, count, line) {
  const td = cell(row, label, "", "number");
  td.dataset.rate = key;
  td.dataset.line = line ? "yes" : "";
  showRate(td, rate(key, count, Date.now()));
  return td;
}

function showRate(td, h) {
  td.replaceChildren(document.createTextNode((td.dataset.line ? h.current + ", " : "") + perSecond(h.last) + " "));
  if (td.dataset.line) td.appendChild(sparkline(h.samples));
}

setInterval(() => {
  for (const td of document.querySelectorAll("td[data-rate]")) {
    const h = history.get(td.dataset.rate);
    if (h) showRate(td, rate(td.dataset.rate, h.current, Date.now()));
  }
}, 1000);

const SVG = "http://www.w3.org/2000/svg";

function sparkline(samples) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("viewBox", "0 0 " + RATE_SAMPLES + " 20");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const peak = Math.max(1, ...samples);
  svg.setAttribute("aria-label", "notifications per second, last 5 minutes, peak " + peak.toFixed(1));
  const line = document.createElementNS(SVG, "polyline");
  const start = RATE_SAMPLES - samples.length;
  line.setAttribute("points", samples.map((v, i) => (start + i) + "," + (20 - (v / peak) * 19).toFixed(1)).join(" "));
  svg.appendChild(line);
  return svg;
}

function perSecond(value) {
  return (value < 10 ? value.toFixed(1) : Math.round(value)) + "/s";
}

function renderChannels(channels) {
  const body = $("#channels tbody");
  body.replaceChildren();
  for (const c of channels) {
    const row = document.createElement("tr");
    row.dataset.channel = c.channel;
    cell(row, "Channel", c.channel);
    cell(row, "State", c.muted ? "muted" : c.active ? "active" : "inactive", c.muted ? "state-bad" : "");
    cell(row, "Subscribers", (c.subscribers || []).map((s) => s.id + (s.quarantined ? " (quarantined)" : s.muted ? " (muted)" : "")).join(", "));
    rateCell(row, "Received", "channel:" + c.channel, c.received || 0, true).dataset.field = "received";
    const actions = cell(row, "Action", "");
    const path = c.muted ? "/v1/channels/unmute" : "/v1/channels/mute";
    button(actions, c.muted ? "Unmute" : "Mute", () => act(path, { channels: [c.channel] }));
    body.appendChild(row);
  }
}

function source(s) {
  const p = s.source || {};
  if (p.kind !== "plugin") return "native";
  return p.path + " sha256:" + String(p.sha256).slice(0, 12) + " wit " + p.wit;
}

function renderSubscribers(subscribers) {
  const body = $("#subscribers tbody");
  body.replaceChildren();
  for (const s of subscribers) {
    const row = document.createElement("tr");
    row.dataset.subscriber = s.id;
    const muted = (s.channels || []).some((c) => c.muted);
    const state = s.quarantine ? "quarantined: " + s.quarantine : muted ? "muted" : "ok";
    cell(row, "Subscriber", s.id);
    cell(row, "Source", source(s));
    cell(row, "Channels", (s.channels || []).map((c) => c.channel + (c.muted ? " (muted)" : "")).join(", "));
    cell(row, "State", state, state === "ok" ? "" : "state-bad");
    const stats = s.stats || {};
    cell(row, "Delivered", stats.delivered ?? 0, "number").dataset.field = "delivered";
    rateCell(row, "Rate", "subscriber:" + s.id, stats.delivered || 0, false);
    const ms = (us) => (us == null ? "-" : "≤" + (us >= 1000 ? us / 1000 + " ms" : us + " µs"));
    cell(row, "Call p50 / p99", ms(stats.call_p50_us) + " / " + ms(stats.call_p99_us), "number");
    cell(row, "Failed", stats.failed ?? 0, "number");
    cell(row, "Dropped", stats.dropped ?? 0, "number");
    cell(row, "Queued", stats.queued ?? 0, "number");
    const d = s.durable;
    cell(row, "At least once", d ? "lag " + d.lag_events + " (" + (d.lag_ms / 1000).toFixed(1) + " s), retries " + d.retries + ", dead " + d.dead_letters : "-");
    const actions = cell(row, "Actions", "");
    const base = "/v1/subscribers/" + encode(s.id);
    button(actions, muted || s.quarantine ? "Unmute" : "Mute", () => act(base + (muted || s.quarantine ? "/unmute" : "/mute")));
    button(actions, "Reload", () => act(base + "/reload"));
    if (d) button(actions, "Skip backlog", () => act(base + "/skip"));
    body.appendChild(row);
  }
}

// The host's events, newest first, fetched as the stream says there are more.
let lastEvent = 0;
const EVENTS_SHOWN = 200;

let fetchingEvents = false;

async function fetchEvents(latest) {
  if (latest <= lastEvent || fetchingEvents) return;
  fetchingEvents = true;
  const events = await call("GET", "/v1/events?after=" + lastEvent);
  fetchingEvents = false;
  if (!events) return;
  const list = $("#events");
  for (const e of events) {
    const item = document.createElement("li");
    item.dataset.kind = e.kind;
    const at = new Date(e.at_ms).toLocaleTimeString();
    item.textContent = at + " " + e.kind.replace("_", " ") + ": " + e.subject + (e.detail ? " — " + e.detail : "");
    if (e.kind === "load_failed" || e.kind === "quarantined" || e.kind === "gap") item.className = "state-bad";
    list.prepend(item);
    lastEvent = Math.max(lastEvent, e.seq);
  }
  while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
}

// Dead letters, fetched when a subscriber's count of them changes.
let deadLettersSeen = "";

async function fetchDeadLetters(subscribers) {
  const durable = subscribers.filter((s) => s.durable);
  const counts = durable.map((s) => s.id + ":" + s.durable.dead_letters).join(",");
  if (counts === deadLettersSeen) return;
  deadLettersSeen = counts;
  $("#dead-letters-section").hidden = durable.length === 0;
  if (durable.length === 0) return;
  const letters = await call("GET", "/v1/dead-letters");
  if (!letters) return;
  const body = $("#dead-letters tbody");
  body.replaceChildren();
  for (const d of letters) {
    const row = document.createElement("tr");
    row.dataset.deadLetter = d.id;
    cell(row, "ID", d.id, "number");
    cell(row, "Subscriber", d.subscriber);
    cell(row, "Channel", d.channel);
    cell(row, "Payload", d.payload, "payload");
    cell(row, "Attempts", d.attempts, "number");
    cell(row, "Error", d.error);
    const actions = cell(row, "Actions", d.redeliver ? "redelivering… " : "");
    const path = "/v1/dead-letters/" + encode(d.id);
    const refresh = () => { deadLettersSeen = ""; fetchDeadLetters(subscribers); };
    if (!d.redeliver) button(actions, "Redeliver", () => act(path + "/redeliver").then(refresh));
    button(actions, "Discard", () => act(path, null, "DELETE").then(refresh));
    body.appendChild(row);
  }
  // A letter asked for again leaves once delivered: look again until then.
  if (letters.some((d) => d.redeliver)) {
    setTimeout(() => { deadLettersSeen = ""; fetchDeadLetters(subscribers); }, 1000);
  }
}

function render(state) {
  renderListener(state.listener || {});
  renderChannels(state.channels || []);
  renderSubscribers(state.subscribers || []);
  fetchEvents(state.last_event || 0);
  fetchDeadLetters(state.subscribers || []);
}

// Follow the live stream; server-sent events read through fetch, which can
// send the token as a header (EventSource cannot).
async function follow() {
  const status = $("#connection");
  let response;
  try {
    response = await fetch("/v1/stream", { headers: headers({ Accept: "text/event-stream" }) });
  } catch (e) {
    status.textContent = "host unreachable; retrying";
    return setTimeout(follow, 2000);
  }
  if (response.status === 401) {
    status.textContent = "token needed";
    $("#token-form").hidden = false;
    return;
  }
  if (!response.ok) {
    status.textContent = "stream refused: " + response.status + "; retrying";
    return setTimeout(follow, 2000);
  }
  $("#token-form").hidden = true;
  status.textContent = "live";
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ done: true }));
    if (done) break;
    text += decoder.decode(value, { stream: true });
    let end;
    while ((end = text.indexOf("\n\n")) >= 0) {
      const event = text.slice(0, end);
      text = text.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (event.includes("event: state") && data) render(JSON.parse(data));
    }
  }
  status.textContent = "stream ended; reconnecting";
  setTimeout(follow, 2000);
}

$("#notify-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const channel = $("#notify-channel").value;
  act("/v1/channels/" + encode(channel) + "/notify", { payload: $("#notify-payload").value });
});

$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value;
  sessionStorage.setItem("pgnotifier-token", token);
  $("#token").value = "";
  follow();
});

follow();
