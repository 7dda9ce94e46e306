/* Concierge chat widget: <script src="https://HOST/chat/widget.js" async></script>
   with optional data-title, data-color, data-greeting. Plain ES2017, no dependencies. */
(() => {
'use strict';
if (window.ConciergeChat) return;
const script = document.currentScript || document.querySelector('script[src*="/chat/widget.js"]');
const src = new URL(script ? script.src : '/chat/widget.js', location.href);
const WS_URL = src.origin.replace(/^http/, 'ws') + '/chat/ws'; // same origin as this script
const attr = (n, d) => (script && script.getAttribute('data-' + n)) || d;
const TITLE = attr('title', 'Chat with us'), COLOR = attr('color', '');
const GREETING = attr('greeting', 'Hi! How can we help you today?');
const TOKEN = 'concierge.chat.token', OUTBOX = 'concierge.chat.outbox';
const NAMES = { customer: 'You', brand_agent: 'Assistant', staff: 'Support team' };
const get = k => { try { return localStorage.getItem(k); } catch (e) { return null; } }; // storage may be blocked
const put = (k, v) => { try { localStorage.setItem(k, v); } catch (e) { /* ignore */ } };

const uuid = () => crypto.randomUUID ? crypto.randomUUID() // not on plain-http pages:
  : '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, c => (c ^ crypto.getRandomValues(new Uint8Array(1))[0] & 15 >> c / 4).toString(16));
// `text` goes through textContent: message text never touches innerHTML.
const el = (tag, props = {}, kids = []) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) k === 'text' ? (e.textContent = v) : e.setAttribute(k, v);
  e.append(...kids);
  return e;
};
const icon = d => `<svg viewBox="0 0 24 24" width="24" height="24" aria-hidden="true"><path fill="currentColor" d="${d}"/></svg>`;
const I_CHAT = icon('M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2zm3 5v2h10V9zm0 4v2h7v-2z');
const I_CLOSE = icon('M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12l5.6 5.6-1.4 1.4-5.6-5.6L6.4 19 5 17.6 10.6 12 5 6.4z');
const I_SEND = icon('M3 20.5v-6l9-2.5-9-2.5v-6L22 12z');

const STYLE = `:host{all:initial}*{box-sizing:border-box}[hidden]{display:none!important}
.w{--a:#1f3a2e;--at:#fff;font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1c1c1c;position:fixed;right:20px;bottom:20px;z-index:2147483000}
button{border:0;border-radius:50%;background:var(--a);color:var(--at);cursor:pointer;display:grid;place-items:center;flex:none}
.l{width:60px;height:60px;box-shadow:0 6px 20px #0004;position:relative}
*:focus-visible{outline:3px solid #4c9aff;outline-offset:2px}
.badge{position:absolute;top:-4px;right:-4px;min-width:22px;padding:0 6px;border-radius:11px;background:#d33;color:#fff;font:700 12px/22px sans-serif}
.p{position:absolute;right:0;bottom:76px;width:370px;height:560px;max-height:calc(100vh - 110px);background:#fff;border-radius:16px;box-shadow:0 12px 40px #0005;display:flex;flex-direction:column;overflow:hidden}
header{background:var(--a);color:var(--at);padding:12px 10px 12px 18px;display:flex;align-items:center;gap:10px}
h2{font-size:17px;margin:0}
.hd{flex:1;min-width:0}.st{font-size:12px;opacity:.85;display:flex;align-items:center;gap:6px}
.dot{width:8px;height:8px;border-radius:50%;background:#f5b400}
:host([data-state=open]) .dot{background:#3ccf6e}:host([data-state=offline]) .dot{background:#bbb}
.x{background:none;width:40px;height:40px;border-radius:8px}
ul{list-style:none;margin:0;padding:16px 14px;flex:1;overflow-y:auto;display:flex;flex-direction:column;gap:10px;background:#f6f5f2}
li{display:flex;flex-direction:column;max-width:85%;align-self:flex-start}
li.customer{align-self:flex-end;align-items:flex-end}
.b{padding:9px 13px;border-radius:16px 16px 16px 4px;background:#fff;border:1px solid #e4e1da;white-space:pre-wrap;overflow-wrap:anywhere}
.customer .b{background:var(--a);color:var(--at);border-color:transparent;border-radius:16px 16px 4px 16px}
.staff .b{border-color:#c9b27c}.b a{color:inherit}
.m,.who{font-size:12px;color:#666;margin:3px 4px}
li[data-status=sending] .b{opacity:.7}li[data-status=failed] .m{color:#b3261e}
li.note{align-self:center;font-size:13px;color:#b3261e;background:#fdecea;border-radius:8px;padding:6px 10px}
.ty{font-size:13px;color:#666;padding:0 18px 6px;background:#f6f5f2}
form{display:flex;gap:8px;align-items:flex-end;padding:10px 10px 12px;border-top:1px solid #e4e1da}
textarea{flex:1;resize:none;font:inherit;color:inherit;border:1px solid #cfcac0;border-radius:12px;padding:9px 12px;max-height:120px;min-height:42px}
.s{width:42px;height:42px}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}
@media (max-width:480px){.w{right:12px;bottom:12px}.p{position:fixed;inset:0;width:auto;height:auto;max-height:none;border-radius:0}.w.open .l{display:none}}`;

let host, wrap, launcher, panel, list, input, statusEl, typingEl, badge;
let ws = null, welcomed = false, attempt = 0, retryTimer = 0, typingTimer = 0;
let started = false, isOpen = false, unread = 0, lastTyping = 0;
let shown = {}, pending = {}; // server id -> element (dedupe); client_id -> element not yet acked
let outbox = []; // [{client_id, text, ts}] not yet acked, oldest first; kept across pages
try { outbox = JSON.parse(get(OUTBOX) || '[]').filter(m => m && m.client_id && m.text); } catch (e) { /* none */ }
const saveOutbox = () => put(OUTBOX, JSON.stringify(outbox));
// A message the server answered for (ack or error): stop resending it; returns its bubble.
function settle(cid) {
  const li = pending[cid];
  delete pending[cid];
  outbox = outbox.filter(m => m.client_id !== cid);
  saveOutbox();
  return li;
}

function setState(s) {
  host.setAttribute('data-state', s);
  statusEl.textContent = s === 'open' ? 'Online' : s === 'connecting' ? 'Connecting\u2026' : 'Offline, reconnecting\u2026';
}

function build() {
  host = el('div', { id: 'concierge-chat' });
  launcher = el('button', { type: 'button', class: 'l', 'data-testid': 'concierge-launcher', 'aria-expanded': 'false', 'aria-controls': 'cc-panel' });
  badge = el('span', { class: 'badge', hidden: '' }); // the launcher's aria-label says the count
  const close = el('button', { type: 'button', class: 'x', 'aria-label': 'Close chat' });
  close.innerHTML = I_CLOSE; // static markup only
  statusEl = el('span');
  list = el('ul', { 'aria-live': 'polite', 'aria-label': 'Messages' });
  typingEl = el('div', { class: 'ty', text: 'typing\u2026', hidden: '' });
  input = el('textarea', { id: 'cc-input', rows: '1', 'data-testid': 'concierge-input', placeholder: 'Type your message\u2026', maxlength: '4000' });
  const send = el('button', { type: 'submit', class: 's', 'data-testid': 'concierge-send', 'aria-label': 'Send message' });
  send.innerHTML = I_SEND;
  const form = el('form', {}, [el('label', { for: 'cc-input', class: 'sr', text: 'Your message' }), input, send]);
  panel = el('div', { id: 'cc-panel', class: 'p', role: 'dialog', 'aria-labelledby': 'cc-title', hidden: '' }, [
    el('header', {}, [el('div', { class: 'hd' }, [el('h2', { id: 'cc-title', text: TITLE }),
      el('div', { class: 'st' }, [el('span', { class: 'dot' }), statusEl])]), close]),
    list, typingEl, form]);
  wrap = el('div', { class: 'w' }, [panel, launcher]);
  host.attachShadow({ mode: 'open' }).append(el('style', { text: STYLE }), wrap);
  setIcon();

  launcher.addEventListener('click', () => show(!isOpen));
  close.addEventListener('click', () => show(false));
  form.addEventListener('submit', ev => { ev.preventDefault(); submit(); });
  input.addEventListener('keydown', ev => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submit(); }
  });
  input.addEventListener('input', () => { grow(); typing(); });
  wrap.addEventListener('keydown', ev => { if (ev.key === 'Escape' && isOpen) { ev.stopPropagation(); show(false); } });
  host.setAttribute('data-open', false);
  setState('offline');
  renderAll([]);
}

function setIcon() {
  launcher.innerHTML = isOpen ? I_CLOSE : I_CHAT;
  launcher.appendChild(badge);
  badge.hidden = !unread;
  badge.textContent = unread;
  launcher.setAttribute('aria-label', isOpen ? 'Close chat' : unread ? `Open chat (${unread} new)` : 'Open chat');
}

// data-color: any CSS colour; text on it turns dark when the colour is light.
function applyColor() {
  if (!COLOR || !CSS.supports('color', COLOR)) return;
  wrap.style.setProperty('--a', COLOR);
  const [r, g, b] = (getComputedStyle(launcher).backgroundColor.match(/[\d.]+/g) || []).map(v => (v / 255) ** 2.2);
  if (0.2126 * r + 0.7152 * g + 0.0722 * b > 0.4) wrap.style.setProperty('--at', '#111');
}

function grow() { input.style.height = 'auto'; input.style.height = input.scrollHeight + 2 + 'px'; }
const nearBottom = () => list.scrollHeight - list.scrollTop - list.clientHeight < 80;
const scrollDown = () => { list.scrollTop = list.scrollHeight; };
const time = ts => new Date(ts || Date.now()).toLocaleTimeString([], { timeStyle: 'short' });

// Plain text nodes; in agent/staff text, http(s) URLs (only) become <a> elements.
function fill(node, text, links) {
  const re = /\bhttps?:\/\/[^\s<>"']*[^\s<>"'.,;:!?)\]}]/gi;
  let last = 0, m;
  while (links && (m = re.exec(text))) {
    node.append(text.slice(last, m.index), el('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer', text: m[0] }));
    last = re.lastIndex;
  }
  node.append(text.slice(last));
}

function bubble(author, text, ts, id) {
  const who = NAMES[author] ? author : 'brand_agent';
  const b = el('div', { class: 'b' });
  fill(b, String(text == null ? '' : text), who !== 'customer');
  return el('li', { class: who, 'data-testid': 'concierge-message', 'data-author': who, 'data-id': id }, [
    who === 'staff' ? el('div', { class: 'who', text: NAMES.staff }) : el('span', { class: 'sr', text: NAMES[who] + ': ' }),
    b, el('div', { class: 'm', text: time(ts) })]);
}

const LAST = 'data-last-agent-message';
function addMessage(m, old) {
  const id = String(m.id);
  if (m.id == null || shown[id]) return; // render once per id
  const stick = nearBottom(), li = shown[id] = bubble(m.author, m.text, m.ts, id);
  list.appendChild(li);
  if (m.author !== 'customer') {
    host.setAttribute(LAST, m.text);
    if (!old) typingEl.hidden = true;
    if (!old && !isOpen) { unread++; setIcon(); }
  }
  if (stick || m.author === 'customer') { // to the end, but keep a long reply's start in view
    scrollDown();
    list.scrollTop = Math.min(list.scrollTop, li.offsetTop - list.offsetTop - 8);
  }
}

function pendingBubble(item) {
  const li = bubble('customer', item.text, item.ts, '');
  li.setAttribute('data-client-id', item.client_id);
  li.setAttribute('data-status', 'sending');
  li.lastChild.textContent = 'sending\u2026';
  list.appendChild(pending[item.client_id] = li);
}

// History replaces what is shown; messages not yet acked stay below it, "sending...".
function renderAll(history) {
  list.textContent = '';
  shown = {};
  pending = {};
  if (GREETING) list.appendChild(el('li', { class: 'brand_agent' }, [el('div', { class: 'b', text: GREETING })]));
  host.removeAttribute(LAST);
  for (const m of history) if (m) addMessage(m, true);
  outbox.forEach(pendingBubble);
  scrollDown();
}

const raw = f => ws && ws.readyState === 1 && ws.send(JSON.stringify(f));
const sendItem = m => raw({ type: 'message', text: m.text, client_id: m.client_id });

function onFrame(ev) {
  let f;
  try { f = JSON.parse(ev.data); } catch (e) { return; }
  if (!f) return;
  if (f.type === 'welcome') {
    if (f.token) put(TOKEN, String(f.token));
    welcomed = true;
    attempt = 0;
    setState('open');
    renderAll(Array.isArray(f.history) ? f.history : []);
    outbox.forEach(sendItem); // queued while offline, or sent but never acked
  } else if (f.type === 'message') {
    addMessage(f);
  } else if (f.type === 'ack') {
    const id = f.id == null ? '' : String(f.id), li = settle(String(f.client_id));
    if (!li) return;
    if (id && shown[id]) return li.remove(); // already shown from history or an echo
    li.setAttribute('data-id', id);
    li.setAttribute('data-status', 'delivered');
    li.lastChild.textContent = time() + ' \u00b7 Delivered';
    if (id) shown[id] = li;
  } else if (f.type === 'typing') {
    typingEl.hidden = false;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => { typingEl.hidden = true; }, 5000);
  } else if (f.type === 'handoff') { // a person has the conversation; the message waits for them
    typingEl.hidden = true;
    list.appendChild(el('li', { class: 'note', 'data-testid': 'concierge-handoff', text: String(f.text || '') }));
    scrollDown();
  } else if (f.type === 'error') {
    const li = f.client_id != null && settle(String(f.client_id)); // optional: the refused message
    if (li) { li.setAttribute('data-status', 'failed'); li.lastChild.textContent = 'Not sent'; }
    list.appendChild(el('li', { class: 'note', text: String(f.message || 'Something went wrong.') }));
    scrollDown();
  }
}

function connect() {
  clearTimeout(retryTimer);
  if (ws) return;
  welcomed = false;
  setState('connecting');
  let sock;
  try { sock = ws = new WebSocket(WS_URL); } catch (e) { return retry(); }
  sock.onopen = () => sock.send(JSON.stringify({ type: 'hello', token: get(TOKEN) || undefined }));
  sock.onmessage = onFrame;
  sock.onclose = () => { if (ws === sock) { ws = null; welcomed = false; retry(); } };
}

// Exponential backoff with jitter: 1 s, 2 s, 4 s ... capped at 30 s.
function retry() {
  setState('offline');
  const base = Math.min(30000, 1000 * 2 ** attempt++);
  retryTimer = setTimeout(connect, base / 2 + Math.random() * base / 2);
}

const start = () => { if (!started) { started = true; connect(); } };

function typing() {
  const now = Date.now();
  if (welcomed && input.value.trim() && now - lastTyping >= 3000) { lastTyping = now; raw({ type: 'typing' }); }
}

function submit() {
  if (api.send(input.value)) { input.value = ''; grow(); }
  input.focus();
}

// Focus goes to the input on open, back to the launcher on close.
function show(open) {
  const was = isOpen;
  isOpen = open;
  if (open) { start(); unread = 0; }
  panel.hidden = !open;
  wrap.classList.toggle('open', open);
  launcher.setAttribute('aria-expanded', open);
  host.setAttribute('data-open', open);
  setIcon();
  if (open) { scrollDown(); setTimeout(() => input.focus(), 0); } else if (was) launcher.focus();
}

const api = {
  open: () => show(true),
  close: () => show(false),
  send(text) {
    text = String(text == null ? '' : text).trim();
    if (!text) return false;
    const item = { client_id: uuid(), text, ts: Date.now() };
    outbox.push(item);
    saveOutbox();
    pendingBubble(item);
    scrollDown();
    start();
    if (welcomed) sendItem(item);
    return true;
  }
};
window.ConciergeChat = api;

build(); // the API works before the host is attached
const attach = () => { document.body.appendChild(host); applyColor(); };
if (document.body) attach(); else document.addEventListener('DOMContentLoaded', attach);
addEventListener('online', () => { if (started && !ws) { attempt = 0; connect(); } });
// A returning shopper, or messages left unsent: connect now so replies arrive.
if (get(TOKEN) || outbox.length) start();
})();
