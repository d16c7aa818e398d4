// The chat page of `deepstack serve` (docs/serve.md, "Web page"): an OpenAI Chat Completions client in plain
// JavaScript. The conversation lives here and is sent whole each turn (the server keeps no state; it caches
// the encoded images, so later turns about the same image do not run the vision tower again).
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), form = $("composer"), prompt = $("prompt"), send = $("send"), errorBox = $("error");
const keyInput = $("api-key"), maxTokens = $("max-tokens"), temperature = $("temperature");

let messages = [];     // the conversation so far, as OpenAI messages (images and videos as data: URLs)
let attached = null;   // what goes with the next question: {kind: "image" or "video", url: its data: URL}
let running = null; // the AbortController of the answer being streamed

keyInput.value = localStorage.getItem("deepstack-api-key") || "";
keyInput.addEventListener("input", () => localStorage.setItem("deepstack-api-key", keyInput.value.trim()));
fetch("health").then((response) => response.json()).then((health) => { $("model").textContent = health.model; },
                                                           () => {});

// ---- the image or video: file picker or drag-and-drop ---------------------------------------------------
// A video goes as a video_url part; the model sees it as one image, the mosaic of its frames (docs/video.md).
function attach(file) {
  if (!file) return;
  const kind = file.type.split("/")[0];
  if (kind !== "image" && kind !== "video") return showError(`${file.name} is not an image or a video`);
  const reader = new FileReader();
  reader.onload = () => setAttached({kind, url: reader.result});
  reader.onerror = () => showError(`could not read ${file.name}`);
  reader.readAsDataURL(file);
}

function setAttached(attachment) {
  attached = attachment;
  for (const kind of ["image", "video"]) {
    const preview = $(`preview-${kind}`), shown = attachment?.kind === kind;
    preview.hidden = !shown;
    if (shown) preview.src = attachment.url; else preview.removeAttribute("src");
  }
  $("attachment").hidden = !attachment;
}

$("file").addEventListener("change", (event) => { attach(event.target.files[0]); event.target.value = ""; });
$("remove-image").addEventListener("click", () => setAttached(null));
document.addEventListener("dragover", (event) => { event.preventDefault(); document.body.classList.add("dropping"); });
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) document.body.classList.remove("dropping");  // left the window
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dropping");
  attach(event.dataTransfer.files[0]);
});

// ---- asking and streaming the answer --------------------------------------------------------------------
form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (running) running.abort(); else ask();
});
prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); form.requestSubmit(); }
});
$("reset").addEventListener("click", () => {
  running?.abort();
  setBusy(null);
  messages = [];
  log.replaceChildren();
  setAttached(null);
  prompt.value = "";
  showError(null);
});

async function ask() {
  const text = prompt.value.trim(), sent = attached;
  if (!text && !sent) return;
  const part = sent && {type: `${sent.kind}_url`, [`${sent.kind}_url`]: {url: sent.url}};
  const question = {role: "user", content: sent ? [part, {type: "text", text}] : text};
  const asked = addMessage("user", text, sent), answered = addMessage("assistant", "");
  const answer = answered.querySelector(".text");
  const controller = new AbortController();
  prompt.value = "";
  setAttached(null);
  showError(null);
  setBusy(controller);
  const keep = (finish) => {  // the turn joins the conversation
    messages.push(question, {role: "assistant", content: answer.textContent});
    answered.dataset.finish = finish;
  };
  try {
    const finish = await streamAnswer([...messages, question], answer, controller.signal);
    if (running === controller) keep(finish);
  } catch (error) {
    if (running !== controller) return;  // reset meanwhile
    if (error.name === "AbortError") return keep("stopped");  // Stop: what was said stays, as in `deepstack chat`
    asked.remove();  // the turn failed: give the question back to edit or resend
    answered.remove();
    prompt.value = text;
    setAttached(sent);
    showError(error.message);
  } finally {
    if (running === controller) setBusy(null);
  }
}

async function streamAnswer(conversation, answer, signal) {
  const headers = {"Content-Type": "application/json"};
  if (keyInput.value.trim()) headers.Authorization = `Bearer ${keyInput.value.trim()}`;
  const body = {messages: conversation, stream: true, temperature: Number(temperature.value),
                max_tokens: maxTokens.value ? Number(maxTokens.value) : undefined};
  const response = await fetch("v1/chat/completions", {method: "POST", headers, body: JSON.stringify(body), signal});
  if (!response.ok) throw new Error(await errorMessage(response));
  let finish = null;
  for await (const event of serverSentEvents(response.body)) {
    if (event.error) throw new Error(event.error.message);  // the model failed mid-answer
    const choice = event.choices[0];
    if (choice?.delta?.content) {
      answer.append(choice.delta.content);
      log.scrollTop = log.scrollHeight;
    }
    finish = choice?.finish_reason || finish;
  }
  return finish;
}

// The `data:` payloads of a server-sent event stream, parsed as they arrive, up to `data: [DONE]`.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trim()).join("\n");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") return reader.cancel();
      if (data) yield JSON.parse(data);
    }
  }
}

async function errorMessage(response) {  // OpenAI's {"error": {"message": ...}} body, else the status
  const text = await response.text();
  try {
    return `${response.status}: ${JSON.parse(text).error.message}`;
  } catch {
    return `${response.status} ${response.statusText}: ${text.slice(0, 300)}`;
  }
}

// ---- the page -------------------------------------------------------------------------------------------
function addMessage(role, text, attachment) {
  const message = document.createElement("div");
  message.className = `message ${role}`;
  if (attachment) {
    const thumbnail = document.createElement(attachment.kind === "video" ? "video" : "img");
    thumbnail.className = "thumbnail";
    thumbnail.src = attachment.url;
    if (attachment.kind === "video") thumbnail.controls = thumbnail.muted = true;
    else thumbnail.alt = "the image sent";
    message.append(thumbnail);
  }
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  message.append(body);
  log.append(message);
  log.scrollTop = log.scrollHeight;
  return message;
}

function setBusy(controller) {
  running = controller;
  send.textContent = controller ? "Stop" : "Send";
  document.body.classList.toggle("busy", Boolean(controller));
}

function showError(message) {
  errorBox.textContent = message || "";
  errorBox.hidden = !message;
}
