// Translate: each line of the input is translated; Copy logs a `copy` event.
"use strict";

(() => {
  const src = document.getElementById("src");
  const go = document.getElementById("go");
  const out = document.getElementById("out");
  const error = document.getElementById("error");
  const session = gensys.sessionId();

  fetch("/v1/models").then((r) => r.json()).then((m) => {
    const t = (m.data || []).find((x) => x.id === "translate");
    if (t && t.src_lang) document.getElementById("pair").textContent = t.src_lang + " → " + t.tgt_lang + ", one sentence per line.";
  }).catch(() => {});

  async function run() {
    const texts = src.value.split("\n").map((s) => s.trim()).filter((s) => s);
    if (!texts.length) return;
    go.disabled = true;
    out.textContent = "";
    try {
      const res = await gensys.post("/v1/translate", {
        texts: texts, beam: Number(document.getElementById("beam").value), session_id: session,
      });
      gensys.showError(error, null);
      res.translations.forEach((t, i) => {
        const card = gensys.el("div", "card translation");
        card.append(gensys.el("div", "muted", texts[i]));
        const line = gensys.el("div");
        line.append(gensys.el("span", "text", t.translation), gensys.el("span", "score", "score " + t.score.toFixed(3)));
        const copy = gensys.el("button", "plain", "Copy");
        copy.addEventListener("click", () => {
          if (navigator.clipboard) navigator.clipboard.writeText(t.translation).catch(() => {});
          gensys.logEvent("translate", "copy", { request_id: res.request_id, session: session });
          copy.textContent = "Copied";
        });
        card.append(line, copy);
        out.append(card);
      });
    } catch (err) {
      gensys.showError(error, err);
    } finally {
      go.disabled = false;
    }
  }
  go.addEventListener("click", run);
})();
