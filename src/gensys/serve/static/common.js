// Shared helpers of the gensys pages: API calls (with an optional API key), errors, event logging.
"use strict";

const gensys = (() => {
  const keyName = "gensys.apiKey";

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = localStorage.getItem(keyName);
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  async function errorText(res) {
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON */ }
    return res.status + " " + res.statusText;
  }

  async function check(res) {
    if (res.status === 401) {
      const key = prompt("This server needs an API key:");
      if (key) localStorage.setItem(keyName, key.trim());
    }
    if (!res.ok) throw new Error(await errorText(res));
    return res;
  }

  // POST JSON, return parsed JSON; throws Error(message) on an HTTP error.
  async function post(path, body) {
    const res = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    await check(res);
    return res.json();
  }

  async function postForm(path, form) {
    const res = await fetch(path, { method: "POST", headers: headers(false), body: form });
    await check(res);
    return res.json();
  }

  // POST JSON and read an SSE stream; onData(obj) for each `data:` line (not [DONE]).
  async function stream(path, body, onData) {
    const res = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    await check(res);
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return;
          const obj = JSON.parse(data);
          if (obj.error) throw new Error(obj.error.message);
          onData(obj);
        }
      }
    }
  }

  // Online metrics: never let a failed log disturb the page.
  function logEvent(system, event, extra) {
    const body = Object.assign({ system: system, event: event }, extra || {});
    fetch("/v1/events", { method: "POST", headers: headers(true), body: JSON.stringify(body) }).catch(() => {});
  }

  function showError(el, err) {
    el.textContent = err ? String(err.message || err) : "";
    el.classList.toggle("hidden", !err);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function sessionId() {
    let s = sessionStorage.getItem("gensys.session");
    if (!s) {
      s = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).replace(/-/g, "");
      sessionStorage.setItem("gensys.session", s);
    }
    return s;
  }

  return { post, postForm, stream, logEvent, showError, el, sessionId };
})();
