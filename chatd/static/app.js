// chatd's page: plain JavaScript against the public API (no build step, no dependencies).
// Live updates come from EventSource on /applications/{token}/chats/{n}/events, which resumes
// by itself after a disconnect (the browser sends Last-Event-ID).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: null, chat: null, chatEvents: null, appEvents: null, last: 0 };

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = (data && data.error) || { code: String(response.status), message: response.statusText };
    throw new Error(`${error.code}: ${error.message}`);
  }
  return data;
}

function status(text) { $("status").textContent = text; }

function base() { return `/applications/${encodeURIComponent(state.token)}`; }

function remember() {
  const parts = [`token=${encodeURIComponent(state.token || "")}`];
  if (state.chat) parts.push(`chat=${state.chat}`);
  history.replaceState(null, "", `#${parts.join("&")}`);
}

// Applications ---------------------------------------------------------------------------

async function openApplication(token) {
  state.token = token;
  const app = await api("GET", base());
  $("token").value = token;
  $("app-info").hidden = false;
  $("app-info").innerHTML = "";
  $("app-info").append("Application ", strong(app.name), " · token ", code(app.token));
  $("chats-panel").hidden = false;
  $("chats").innerHTML = "";
  let after = 0;
  for (;;) {
    const page = await api("GET", `${base()}/chats?after=${after}&limit=100`);
    page.data.forEach((chat) => addChat(chat.number));
    if (page.meta.next_after === null) break;
    after = page.meta.next_after;
  }
  if (state.appEvents) state.appEvents.close();
  state.appEvents = new EventSource(`${base()}/events?after=${after}`);
  state.appEvents.addEventListener("chat.created", (e) => addChat(JSON.parse(e.data).number));
  remember();
}

function addChat(number) {
  if (document.querySelector(`#chats li[data-number="${number}"]`)) return;
  const item = document.createElement("li");
  item.dataset.number = number;
  item.textContent = `Chat ${number}`;
  item.addEventListener("click", () => openChat(number));
  const items = [...$("chats").children];
  const before = items.find((other) => Number(other.dataset.number) > number);
  $("chats").insertBefore(item, before || null);
}

// One chat ---------------------------------------------------------------------------------

async function openChat(number) {
  state.chat = number;
  state.last = 0;
  document.querySelectorAll("#chats li").forEach((li) => li.classList.toggle("selected", Number(li.dataset.number) === number));
  $("chat-panel").hidden = false;
  $("chat-title").textContent = `Chat ${number}`;
  $("messages").innerHTML = "";
  $("search-results").hidden = true;
  if (state.chatEvents) state.chatEvents.close();
  let after = 0;
  for (;;) {
    const page = await api("GET", `${base()}/chats/${number}/messages?after=${after}&limit=100`);
    page.data.forEach(showMessage);
    if (page.meta.next_after === null) break;
    after = page.meta.next_after;
  }
  // Live from the last message shown: the server replays anything stored since, then streams.
  const source = new EventSource(`${base()}/chats/${number}/events?after=${state.last}`);
  state.chatEvents = source;
  source.addEventListener("open", () => status(`live: chat ${number}`));
  source.addEventListener("error", () => status("reconnecting…"));
  source.addEventListener("message.created", (e) => showMessage(JSON.parse(e.data)));
  source.addEventListener("message.updated", (e) => showMessage(JSON.parse(e.data)));
  source.addEventListener("close", (e) => status(`server closed the stream (${JSON.parse(e.data).error.code}); resuming`));
  remember();
}

function showMessage(message) {
  let item = document.querySelector(`#messages li[data-number="${message.number}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.number = message.number;
    const items = [...$("messages").children];
    const before = items.find((other) => Number(other.dataset.number) > message.number);
    $("messages").insertBefore(item, before || null);
  }
  item.classList.remove("pending");
  item.innerHTML = "";
  const edit = document.createElement("button");
  edit.className = "link edit";
  edit.type = "button";
  edit.textContent = "edit";
  edit.addEventListener("click", () => editMessage(message.number, item.querySelector(".content").textContent));
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = message.content;
  item.append(meta(`#${message.number}`), content, edit);
  if (message.revision) item.append(meta(` (edited)`));
  state.last = Math.max(state.last, message.number);
  $("messages").scrollTop = $("messages").scrollHeight;
}

async function send(text) {
  const created = await api("POST", `${base()}/chats/${state.chat}/messages`, { content: text });
  // Shown as pending until the stored message arrives over the live stream.
  if (!document.querySelector(`#messages li[data-number="${created.number}"]`)) {
    const item = document.createElement("li");
    item.dataset.number = created.number;
    item.className = "pending";
    item.append(meta(`#${created.number}`), text, " (storing…)");
    $("messages").append(item);
  }
}

async function editMessage(number, current) {
  const text = prompt(`Edit message ${number}`, current);
  if (text === null || text.trim() === "" || text === current) return;
  await api("PUT", `${base()}/chats/${state.chat}/messages/${number}`, { content: text });
}

async function search(query) {
  const found = await api("GET", `${base()}/chats/${state.chat}/messages/search?query=${encodeURIComponent(query)}&per_page=50`);
  const list = $("search-results");
  list.innerHTML = "";
  list.hidden = false;
  const heading = document.createElement("li");
  heading.append(strong(`${found.total} found for “${query}”`));
  list.append(heading);
  found.messages.forEach((hit) => {
    const item = document.createElement("li");
    item.dataset.number = hit.message_number;
    item.append(meta(`#${hit.message_number}`), hit.content);
    list.append(item);
  });
}

// Helpers and wiring ---------------------------------------------------------------------

function meta(text) { const span = document.createElement("span"); span.className = "meta"; span.textContent = text; return span; }
function strong(text) { const b = document.createElement("strong"); b.textContent = text; return b; }
function code(text) { const c = document.createElement("code"); c.textContent = text; return c; }

function guarded(action) {
  return async (event) => {
    event.preventDefault();
    try { await action(event); } catch (error) { status(String(error.message || error)); }
  };
}

$("create-app-form").addEventListener("submit", guarded(async () => {
  const app = await api("POST", "/applications", { application: { name: $("app-name").value } });
  await openApplication(app.token);
}));
$("open-app-form").addEventListener("submit", guarded(() => openApplication($("token").value.trim())));
$("new-chat").addEventListener("click", guarded(async () => {
  const chat = await api("POST", `${base()}/chats`);
  addChat(chat.number);
  await openChat(chat.number);
}));
$("send-form").addEventListener("submit", guarded(async () => {
  const text = $("message-input").value;
  $("message-input").value = "";
  await send(text);
}));
$("search-form").addEventListener("submit", guarded(() => search($("search-input").value)));

// A link like /#token=...&chat=2 opens that chat.
(async () => {
  const params = new URLSearchParams(location.hash.slice(1));
  try {
    if (params.get("token")) await openApplication(params.get("token"));
    if (params.get("chat")) await openChat(Number(params.get("chat")));
  } catch (error) { status(String(error.message || error)); }
})();
