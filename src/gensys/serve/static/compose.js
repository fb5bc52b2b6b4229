// Smart Compose: ghost text after the caret; Tab accepts, Esc dismisses. Accepts/rejects are logged.
"use strict";

(() => {
  const body = document.getElementById("body");
  const subject = document.getElementById("subject");
  const typed = document.getElementById("typed");
  const ghost = document.getElementById("ghost");
  const mirror = document.getElementById("mirror");
  const status = document.getElementById("status");
  const error = document.getElementById("error");
  const session = gensys.sessionId();
  let current = null; // {text, suggestion, request_id, shownAt}
  const draftId = session + "-" + Date.now().toString(36); // the server keeps this draft's cache warm
  let debounce = 200; // ms; the server says how long to wait after a keystroke
  let timer = null;
  let seq = 0;

  function render() {
    typed.textContent = body.value;
    ghost.textContent = current ? current.suggestion : "";
    mirror.scrollTop = body.scrollTop;
  }

  function dismiss(reason) {
    if (current) {
      gensys.logEvent("compose", "reject", {
        request_id: current.request_id, session: session,
        latency_ms: performance.now() - current.shownAt, meta: { reason: reason },
      });
    }
    current = null;
    render();
  }

  async function ask() {
    const caretAtEnd = body.selectionStart === body.value.length && body.selectionEnd === body.value.length;
    if (!caretAtEnd || !body.value.trim()) return;
    const mine = ++seq;
    const text = body.value;
    try {
      const res = await gensys.post("/v1/compose/suggest", {
        text: text, subject: subject.value, cursor: text.length, session_id: session, draft_id: draftId,
      });
      if (typeof res.debounce_ms === "number") debounce = res.debounce_ms;
      gensys.showError(error, null);
      if (mine !== seq || body.value !== text) return; // the user kept typing: stale
      status.textContent = res.triggered
        ? "suggestion (confidence " + res.confidence.toFixed(2) + ", " + res.latency_ms.toFixed(0) + " ms)"
        : "no suggestion (" + res.reason + ")";
      if (res.triggered && res.suggestion) {
        current = { text: text, suggestion: res.suggestion, request_id: res.request_id, shownAt: performance.now() };
        render();
      }
    } catch (err) {
      gensys.showError(error, err);
    }
  }

  body.addEventListener("keydown", (e) => {
    if (!current) return;
    if (e.key === "Tab") {
      e.preventDefault();
      const s = current.suggestion;
      gensys.logEvent("compose", "accept", {
        request_id: current.request_id, session: session,
        latency_ms: performance.now() - current.shownAt, meta: { chars: s.length, text: s },
      });
      current = null;
      body.value += s;
      body.selectionStart = body.selectionEnd = body.value.length;
      status.textContent = "accepted";
      render();
      clearTimeout(timer);
      timer = setTimeout(ask, 150);
    } else if (e.key === "Escape") {
      e.preventDefault();
      dismiss("escape");
    }
  });

  body.addEventListener("input", () => {
    // Typing the suggestion's next characters keeps the rest of it; anything else dismisses it.
    if (current) {
      const added = body.value.slice(current.text.length);
      if (body.value.startsWith(current.text) && added && current.suggestion.startsWith(added)) {
        current = Object.assign({}, current, { text: body.value, suggestion: current.suggestion.slice(added.length) });
        if (!current.suggestion) current = null;
      } else {
        dismiss("typed");
      }
    }
    render();
    clearTimeout(timer);
    timer = setTimeout(ask, debounce);
  });
  body.addEventListener("scroll", render);
  body.addEventListener("click", () => { if (current && body.selectionStart !== body.value.length) dismiss("moved"); });
  render();
})();
