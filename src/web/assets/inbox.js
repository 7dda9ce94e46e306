// Concierge staff inbox: live updates over server-sent events and a few keyboard shortcuts.
// Everything shown is HTML rendered (and escaped) by the server; this script only places it.
(function () {
  'use strict';
  const page = document.body.dataset.page;
  const live = document.getElementById('live');

  async function fetchHtml(url) {
    const r = await fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } });
    if (!r.ok) throw new Error(url + ': ' + r.status);
    return r.text();
  }

  // --- conversation page: append new messages ---
  const conv = document.querySelector('.conversation');
  let busy = Promise.resolve();
  function catchUp() {
    busy = busy.then(async () => {
      const after = conv.dataset.lastSeq || '0';
      const html = await fetchHtml('/inbox/c/' + encodeURIComponent(conv.dataset.conversationId) + '/messages?after=' + after);
      if (!html.trim()) return;
      const tpl = document.createElement('template');
      tpl.innerHTML = html;
      const list = document.getElementById('timeline');
      for (const li of tpl.content.querySelectorAll('li[data-seq]')) {
        if (document.getElementById(li.id)) continue;
        list.appendChild(li);
        conv.dataset.lastSeq = li.dataset.seq;
      }
    }).catch(() => {});
  }

  // A long conversation opens at its latest message (unless a hand-off or a notice waits at
  // the top).
  if (conv && !location.hash && !document.querySelector('[data-testid=escalation], [data-testid=flash]')) {
    const last = document.getElementById('timeline').lastElementChild;
    if (last) last.scrollIntoView({ block: 'nearest' });
  }

  // Someone else changed this conversation (escalated, resolved, assigned): offer a reload.
  function changedElsewhere(status) {
    if (document.getElementById('changed')) return;
    const note = document.createElement('div');
    note.id = 'changed';
    note.className = 'flash';
    note.setAttribute('role', 'status');
    note.append('This conversation changed (' + String(status).replace(/_/g, ' ') + '). ');
    const a = document.createElement('a');
    a.href = location.pathname;
    a.textContent = 'Reload to see it';
    note.append(a);
    document.getElementById('main').prepend(note);
  }

  // --- queue page: move a changed conversation to the top ---
  const rows = document.getElementById('queue-rows');
  async function refreshRow(id) {
    try {
      const html = await fetchHtml('/inbox/rows/' + encodeURIComponent(id));
      const tpl = document.createElement('template');
      tpl.innerHTML = html.trim();
      const row = tpl.content.querySelector('tr');
      if (!row) return;
      const old = rows.querySelector('tr[data-conversation-id="' + CSS.escape(id) + '"]');
      if (old) old.remove();
      row.classList.add('fresh');
      rows.prepend(row);
    } catch (e) { /* the next event or a reload shows it */ }
  }

  // --- escalations page: re-read the list ---
  const escRows = document.getElementById('escalation-rows');
  async function refreshEscalations() {
    try { escRows.innerHTML = await fetchHtml('/inbox/escalations/rows'); } catch (e) { /* keep what is shown */ }
  }

  if (window.EventSource && page !== 'login') {
    const es = new EventSource('/inbox/events');
    es.onopen = () => { if (live) { live.classList.add('on'); live.title = 'Live updates on'; } };
    es.onerror = () => { if (live) { live.classList.remove('on'); live.title = 'Live updates reconnecting'; } };
    const onEvent = (kind) => (ev) => {
      let data = {};
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      if (conv && data.conversation_id === conv.dataset.conversationId) {
        if (kind === 'message') catchUp(); else changedElsewhere(data.status);
      }
      if (rows && data.conversation_id && document.querySelector('[data-live-queue="all"]')) refreshRow(data.conversation_id);
      if (escRows && kind === 'status') refreshEscalations();
    };
    es.addEventListener('message', onEvent('message'));
    es.addEventListener('status', onEvent('status'));
    es.addEventListener('resync', () => { if (conv) catchUp(); if (escRows) refreshEscalations(); });
  }

  // --- keyboard: j/k move through rows, Enter opens, r reply, n note, / search ---
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey || (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName)))) return;
    const focusId = (id) => { const el = document.getElementById(id); if (el) { e.preventDefault(); el.focus(); } };
    if (e.key === '/') focusId('search');
    else if (e.key === 'r') focusId('reply');
    else if (e.key === 'n') focusId('note');
    else if (e.key === 'j' || e.key === 'k') {
      const links = [...document.querySelectorAll('a.row-link')];
      if (!links.length) return;
      e.preventDefault();
      const i = links.indexOf(document.activeElement);
      const next = e.key === 'j' ? Math.min(i + 1, links.length - 1) : Math.max(i - 1, 0);
      links[next].focus();
    }
  });
})();
