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

// One operation of the admin API: a POST to `path`; the error it answers
// with, shown, if it fails.
async function act(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body || {}),
  });
  if (!response.ok) {
    const reply = await response.json().catch(() => ({}));
    showError(path + ": " + (reply.error || response.status));
  } else {
    showError("");
  }
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
  const c = listener.cluster || {};
  add("cluster role", c.role ?? "-");
  if (c.cluster) add("cluster", c.cluster + " / " + (c.group ?? "-") + ", leader " + (c.leader ?? "none"));
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

function render(state) {
  renderListener(state.listener || {});
  renderChannels(state.channels || []);
  renderSubscribers(state.subscribers || []);
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

$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value;
  sessionStorage.setItem("pgnotifier-token", token);
  $("#token").value = "";
  follow();
});

follow();
