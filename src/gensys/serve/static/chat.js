// Chat: streaming replies, several conversations (kept in this browser), thumbs up/down, refusal notice.
"use strict";

(() => {
  const msgs = document.getElementById("msgs");
  const input = document.getElementById("input");
  const send = document.getElementById("send");
  const list = document.getElementById("list");
  const error = document.getElementById("error");
  const store = "gensys.chats";
  let chats = JSON.parse(localStorage.getItem(store) || "[]");
  let active = null;

  function save() { localStorage.setItem(store, JSON.stringify(chats.slice(-20))); }

  function newChat() {
    const id = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now())).replace(/-/g, "");
    const chat = { id: id, title: "New chat", messages: [] };
    chats.push(chat);
    gensys.logEvent("chat", "session_start", { session: id });
    open(chat);
  }

  function open(chat) {
    active = chat;
    save();
    renderList();
    msgs.textContent = "";
    for (const m of chat.messages) addMessage(m);
    input.focus();
  }

  function renderList() {
    list.textContent = "";
    for (const c of chats.slice().reverse()) {
      const b = gensys.el("button", c === active ? "active" : "", c.title);
      b.addEventListener("click", () => open(c));
      list.append(b);
    }
  }

  function feedback(m, tools) {
    for (const [label, event] of [["Helpful", "thumbs_up"], ["Not helpful", "thumbs_down"]]) {
      const b = gensys.el("button", event, label);
      b.title = event.replace("_", " ");
      b.addEventListener("click", () => {
        gensys.logEvent("chat", event, { session: active.id, request_id: m.id || null });
        m.feedback = event;
        save();
        tools.textContent = "";
        tools.append(gensys.el("span", "muted", "thanks for the feedback"));
      });
      tools.append(b);
    }
  }

  function addMessage(m) {
    const div = gensys.el("div", "msg " + m.role);
    const text = gensys.el("div", "text", m.content);
    div.append(text);
    const notice = gensys.el("div", "notice hidden", "The assistant declined this request (content policy).");
    div.append(notice);
    const tools = gensys.el("div", "tools");
    div.append(tools);
    msgs.append(div);
    const view = {
      text: text,
      done(msg) {
        if (msg.finish_reason === "content_filter") {
          const why = msg.flagged && msg.flagged.length ? " Flagged: " + msg.flagged.join(", ") + "." : "";
          notice.textContent = "The assistant declined this request (content policy)." + why;
          notice.classList.remove("hidden");
        }
        if (msg.finish_reason === "length") tools.append(gensys.el("span", "muted", "(cut at max tokens) "));
        if (!msg.feedback) feedback(msg, tools);
      },
    };
    if (m.role === "assistant" && m.finish_reason) view.done(m);
    return view;
  }

  async function submit() {
    const content = input.value.trim();
    if (!content || send.disabled) return;
    if (!active) newChat();
    input.value = "";
    const user = { role: "user", content: content };
    active.messages.push(user);
    if (active.title === "New chat") active.title = content.slice(0, 40);
    renderList();
    addMessage(user);
    const reply = { role: "assistant", content: "" };
    const view = addMessage(reply);
    send.disabled = true;
    gensys.showError(error, null);
    const history = active.messages.map((m) => ({ role: m.role, content: m.content }));
    try {
      await gensys.stream("/v1/chat/completions", {
        model: "chat", messages: history, stream: true, session_id: active.id,
        temperature: Number(document.getElementById("temp").value) || 0,
        max_tokens: Number(document.getElementById("maxtok").value) || 128,
      }, (chunk) => {
        reply.id = chunk.id;
        const choice = chunk.choices[0];
        if (!choice) return;
        if (choice.delta && choice.delta.content) {
          reply.content += choice.delta.content;
          view.text.textContent = reply.content;
        }
        if (choice.finish_reason) reply.finish_reason = choice.finish_reason;
        if (chunk.safety) reply.flagged = chunk.safety.flagged;
      });
      active.messages.push(reply);
      view.done(reply);
      save();
    } catch (err) {
      gensys.showError(error, err);
    } finally {
      send.disabled = false;
    }
  }

  send.addEventListener("click", submit);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); submit(); }
  });
  document.getElementById("new").addEventListener("click", newChat);
  if (chats.length) open(chats[chats.length - 1]); else renderList();
})();
