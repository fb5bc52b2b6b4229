// RAG: ask a question, show the answer and its citations; a click on a citation is logged.
"use strict";

(() => {
  const q = document.getElementById("q");
  const go = document.getElementById("go");
  const out = document.getElementById("out");
  const error = document.getElementById("error");
  const session = gensys.sessionId();

  function label(c, i) {
    if (c === null || typeof c !== "object") return String(c);
    return c.title || c.doc_title || c.source || c.id || c.doc_id || c.chunk_id || "source " + (i + 1);
  }

  function snippet(c) {
    if (c === null || typeof c !== "object") return "";
    const t = c.text || c.snippet || c.quote || "";
    return t.length > 300 ? t.slice(0, 300) + "…" : t;
  }

  async function ask() {
    const question = q.value.trim();
    if (!question) return;
    go.disabled = true;
    out.textContent = "";
    const typed = document.getElementById("groups").value.split(",").map((s) => s.trim()).filter((s) => s);
    const groups = typed.length ? typed : ["everyone"];
    try {
      const res = await gensys.post("/v1/rag/ask", {
        question: question, mode: document.getElementById("mode").value, groups: groups, session_id: session,
      });
      gensys.showError(error, null);
      const card = gensys.el("div", "card");
      card.append(gensys.el("div", "answer", res.answer || "(no answer found in the documents you may read)"));
      const list = gensys.el("ol", "citations");
      res.citations.forEach((c, i) => {
        const li = gensys.el("li");
        const a = gensys.el("a", "citation", label(c, i));
        const url = c && typeof c === "object" ? c.url || c.link : null;
        if (url && /^https?:\/\//.test(url)) { a.href = url; a.target = "_blank"; a.rel = "noopener"; }
        a.addEventListener("click", () => gensys.logEvent("rag", "click", {
          request_id: res.request_id, session: session, meta: { citation: i + 1 },
        }));
        li.append(a);
        const s = snippet(c);
        if (s) li.append(gensys.el("div", "muted", s));
        list.append(li);
      });
      card.append(gensys.el("div", "muted", res.citations.length + " citation(s)"), list);
      out.append(card);
    } catch (err) {
      gensys.showError(error, err);
    } finally {
      go.disabled = false;
    }
  }
  go.addEventListener("click", ask);
  q.addEventListener("keydown", (e) => { if (e.key === "Enter") ask(); });
})();
