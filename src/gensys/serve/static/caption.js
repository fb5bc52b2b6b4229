// Caption: upload one image, show the n-best captions with scores.
"use strict";

(() => {
  const file = document.getElementById("file");
  const go = document.getElementById("go");
  const preview = document.getElementById("preview");
  const out = document.getElementById("out");
  const error = document.getElementById("error");

  file.addEventListener("change", () => {
    const f = file.files[0];
    go.disabled = !f;
    out.textContent = "";
    if (f) {
      preview.src = URL.createObjectURL(f);
      preview.classList.remove("hidden");
    }
  });

  go.addEventListener("click", async () => {
    const f = file.files[0];
    if (!f) return;
    const form = new FormData();
    form.append("images", f, f.name);
    form.append("beam", "3");
    form.append("n_best", "3");
    go.disabled = true;
    out.textContent = "";
    try {
      const res = await gensys.postForm("/v1/caption", form);
      gensys.showError(error, null);
      for (const r of res.results) {
        const card = gensys.el("div", "card");
        card.append(gensys.el("div", "muted", r.filename + " (" + r.width + "×" + r.height + ")"));
        const table = gensys.el("table", "captions");
        r.captions.forEach((c, i) => {
          const tr = gensys.el("tr");
          tr.append(gensys.el("td", "", String(i + 1)), gensys.el("td", "caption", c.caption), gensys.el("td", "score", c.score.toFixed(3)));
          table.append(tr);
        });
        card.append(table);
        out.append(card);
      }
    } catch (err) {
      gensys.showError(error, err);
    } finally {
      go.disabled = false;
    }
  });
})();
