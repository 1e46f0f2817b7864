// The chat page: the conversation lives here (one per browser tab); every question sends the whole of it to
// /v1/chat/completions with stream: true, and the server reuses the state it kept from the previous turn.
"use strict";

const $ = (id) => document.getElementById(id);
const chat = { messages: [], image: null, model: null, controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(text) { $("status").textContent = text; }

function bubble(kind, text) {
  const div = document.createElement("div");
  div.className = "msg " + kind;
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text || "";
  div.appendChild(span);
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

async function loadModel() {
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    chat.model = body.data[0].id;
    $("model-name").textContent = chat.model;
    status("ready");
  } catch (err) {
    status("cannot list models: " + err.message);
  }
}

function setImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { status(file.name + " is not an image"); return; }
  const reader = new FileReader();
  reader.onload = () => {
    reset();
    chat.image = reader.result;  // a data: URL, sent as an image_url part
    $("preview").src = chat.image;
    $("preview").hidden = false;
    $("drop-hint").hidden = true;
    status("new conversation about " + file.name);
  };
  reader.readAsDataURL(file);
}

function reset() {
  if (chat.controller) chat.controller.abort();
  chat.messages = [];
  chat.image = null;
  $("log").replaceChildren();
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("drop-hint").hidden = false;
  $("image-input").value = "";
  status("conversation reset");
}

function settings() {
  const number = (id) => { const v = $(id).value; return v === "" ? null : Number(v); };
  const body = {
    temperature: number("temperature"), top_p: number("top-p"), max_tokens: number("max-tokens"),
    presence_penalty: number("presence-penalty"), frequency_penalty: number("frequency-penalty"), seed: number("seed"),
  };
  for (const k of Object.keys(body)) if (body[k] === null) delete body[k];
  return body;
}

async function ask(question) {
  const first = chat.messages.length === 0;
  const content = first && chat.image
    ? [{ type: "image_url", image_url: { url: chat.image } }, { type: "text", text: question }]
    : question;
  const userDiv = bubble("user", question);
  if (first && chat.image) {
    const img = document.createElement("img");
    img.src = chat.image;
    userDiv.prepend(img);
  }
  const messages = chat.messages.concat([{ role: "user", content }]);
  const answer = bubble("assistant streaming", "");
  const text = answer.querySelector(".text");
  chat.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  status("answering…");
  let full = "", finish = null, usage = null;
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: chat.controller.signal,
      body: JSON.stringify({ model: chat.model, messages, stream: true, stream_options: { include_usage: true },
                             ...settings() }),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : res.status + " " + res.statusText);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            full += choice.delta.content;
            text.textContent = full;
            $("log").scrollTop = $("log").scrollHeight;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    // the turn is part of the conversation only once it has been answered
    chat.messages = messages.concat([{ role: "assistant", content: full }]);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = finish === "length" ? "(cut at max tokens)" : "";
    if (usage) {
      meta.textContent += ` ${usage.completion_tokens} tokens; ${usage.prompt_tokens_details.cached_tokens} of ` +
        `${usage.prompt_tokens} prompt tokens reused`;
    }
    answer.appendChild(meta);
    status("ready");
  } catch (err) {
    if (err.name === "AbortError") {
      status("stopped");
    } else {
      answer.remove();
      bubble("error", err.message);
      status("error");
    }
  } finally {
    answer.classList.remove("streaming");
    chat.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("question").value.trim();
  if (!q || chat.controller) return;
  $("question").value = "";
  ask(q);
});
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (chat.controller) chat.controller.abort(); });
$("reset").addEventListener("click", reset);
$("image-input").addEventListener("change", (e) => setImage(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setImage(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("image-input").click(); });
$("api-key").addEventListener("change", loadModel);
loadModel();
