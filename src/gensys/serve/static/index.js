// Home: which systems are served, and how to make the others.
"use strict";

(async () => {
  const list = document.getElementById("systems");
  try {
    const res = await fetch("/readyz");
    const body = await res.json();
    list.textContent = "";
    for (const [name, s] of Object.entries(body.systems)) {
      const li = gensys.el("li", "card");
      li.id = "system-" + name;
      const left = gensys.el("div");
      const title = s.mounted ? gensys.el("a", "", name) : gensys.el("b", "", name);
      if (s.mounted) title.href = "/" + name;
      left.append(title, gensys.el("div", "muted", s.mounted ? s.description : s.reason));
      li.append(left, gensys.el("span", s.mounted ? "badge" : "badge off", s.mounted ? "ready" : "not mounted"));
      list.append(li);
    }
  } catch (err) {
    list.textContent = "could not reach the server: " + err;
  }
})();
