// The annotator page: asks /api/next for a question, answers it, polls /api/status once a second.
// Plain JS, no build step. Images come with the Authorization header and are shown as blob URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const WORDS = { same: "same person", different: "different person" };
const state = {
  token: null, question: null, busy: false, offline: false, runId: null,
  phase: "starting", blobs: new Map(), curveKey: null,
};

class Offline extends Error {}
class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

// ------------------------------------------------------------------ settings: annotator name, token
function initSettings() {
  const box = $("annotator");
  let name = localStorage.getItem("reidloop-annotator");
  if (!name) {
    name = "annotator-" + Math.random().toString(36).slice(2, 6).padEnd(4, "0");
    localStorage.setItem("reidloop-annotator", name);
  }
  box.value = name;
  box.addEventListener("change", () => {
    const v = box.value.trim();
    if (v) localStorage.setItem("reidloop-annotator", v);
    showQuestion(null);
    act(next);
  });
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {  // kept for this tab only, and out of the address bar
    sessionStorage.setItem("reidloop-token", fromUrl);
    url.searchParams.delete("token");
    history.replaceState(null, "", url);
  }
  state.token = sessionStorage.getItem("reidloop-token");
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("reidloop-token", state.token);
    $("token-form").hidden = true;
    state.blobs.clear();
    tick(false);
  });
}

const annotator = () => $("annotator").value.trim();

// ------------------------------------------------------------------ HTTP
async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, cache: "no-store",
                               body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new Offline(String(e));
  }
  if (resp.status >= 500) throw new Offline(`HTTP ${resp.status}`);
  if (!resp.ok) {
    let detail = `HTTP ${resp.status}`;
    try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
    if (resp.status === 401) needToken(detail);
    throw new ApiError(resp.status, detail);
  }
  return resp;
}

const getJson = async (path) => (await api("GET", path)).json();
const postJson = async (path, body) => (await api("POST", path, body)).json();

function imageUrl(path) {
  if (!state.blobs.has(path)) {
    const url = api("GET", path).then((r) => r.blob()).then((b) => URL.createObjectURL(b));
    url.catch(() => state.blobs.delete(path));
    state.blobs.set(path, url);
  }
  return state.blobs.get(path);
}

async function setImage(img, path) {
  img.dataset.src = path;
  try {
    const url = await imageUrl(path);
    if (img.dataset.src === path) img.src = url;  // not replaced meanwhile
  } catch (e) {
    img.alt = `image not loaded (${e.message})`;
  }
}

// ------------------------------------------------------------------ banner, buttons, last action
function setOnline(online) {
  state.offline = !online;
  const banner = $("status-banner");
  banner.hidden = online;
  if (!online) {
    banner.className = "";
    banner.textContent = "Connection to the service lost: reconnecting every second…";
  }
  setButtons();
}

function needToken(detail) {
  const banner = $("status-banner");
  banner.hidden = false;
  banner.className = "error";
  banner.textContent = `A token is needed (${detail}): open the link with ?token=… or enter it above.`;
  $("token-form").hidden = false;
}

function setButtons() {
  const idle = !state.busy && !state.offline;
  for (const id of ["btn-same", "btn-different", "btn-skip"]) $(id).disabled = !(idle && state.question);
  $("btn-undo").disabled = !idle;
}

const lastAction = (text) => { $("last-action").textContent = text; };

// ------------------------------------------------------------------ the question
function showQuestion(q) {
  state.question = q;
  const box = $("question");
  box.dataset.questionId = q ? q.id : "";
  box.dataset.query = q ? q.query : "";
  box.dataset.candidate = q ? q.candidate : "";
  $("pair").hidden = !q;
  $("waiting").hidden = !!q;
  setButtons();
  if (!q) {
    $("ranked").replaceChildren();
    return;
  }
  $("query-label").textContent = `#${q.query}`;
  $("candidate-label").textContent = `#${q.candidate} (question ${q.id}, round ${q.round})`;
  setImage($("query-img"), `/api/image/${q.query}`);
  setImage($("candidate-img"), `/api/image/${q.candidate}`);
  $("ranked").replaceChildren(...q.ranked.map((r) => {
    const mark = r.asking ? "asking" : r.answer === 1 ? "same" : r.answer === -1 ? "different" : "unanswered";
    const li = document.createElement("li");
    li.className = mark;
    li.dataset.index = r.index;
    li.dataset.mark = mark;
    const img = document.createElement("img");
    img.alt = `candidate ${r.index}`;
    setImage(img, `/api/image/${r.index}`);
    const label = document.createElement("span");
    label.textContent = `${r.rank}. ${mark === "asking" ? "asking now" : mark}`;
    li.append(img, label);
    return li;
  }));
}

async function next() {
  const r = await postJson("/api/next", { annotator: annotator() });
  const q = r.question;
  if (!state.question || !q || q.id !== state.question.id) showQuestion(q);
}

// One user action at a time: the buttons stay disabled while it is in flight.
async function act(fn) {
  if (state.busy) return;
  state.busy = true;
  setButtons();
  try {
    await fn();
  } catch (e) {
    if (e instanceof Offline) setOnline(false);
    else if (e.status === 403) lastAction(`refused: ${e.message}`);
    else if (e instanceof ApiError && e.status !== 401) lastAction(`error: ${e.message}`);
    else if (!(e instanceof ApiError)) lastAction(`error: ${e}`);
  } finally {
    state.busy = false;
    setButtons();
  }
}

function answer(word) {
  act(async () => {
    const q = state.question;
    if (!q) return;
    try {
      const r = await postJson("/api/answer", { annotator: annotator(), id: q.id, answer: word });
      if (word === "skip") lastAction(r.counted ? `skipped question ${q.id}` : `question ${q.id} was skipped already`);
      else lastAction(r.counted ? `answered ${WORDS[word]} for question ${q.id}`
                                : `question ${q.id} was already answered (not counted again)`);
    } catch (e) {
      if (!(e instanceof ApiError) || (e.status !== 404 && e.status !== 409)) throw e;
      lastAction(`question ${q.id}: ${e.message}`);  // gone (service restarted) or not ours: ask again
    }
    showQuestion(null);
    await next();
  }).then(refreshStatus);  // the progress refresh does not hold the buttons: the next key counts at once
}

function undo() {
  act(async () => {
    const r = await postJson("/api/undo", { annotator: annotator() });
    const u = r.undone;
    lastAction(u ? `undid question ${u.id} (it was ${u.answer === 1 ? "same" : "different"} person)` : "nothing to undo");
    if (u) showQuestion(null);
    await next();
  }).then(refreshStatus);
}

// ------------------------------------------------------------------ status
function cell(v) {
  const td = document.createElement("td");
  td.textContent = v === undefined || v === null ? "–" : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : v;
  return td;
}

function showStatus(st) {
  state.phase = st.phase;
  $("answers").textContent = st.answers;
  $("budget").textContent = st.budget ?? "∞";
  $("remaining").textContent = st.remaining ?? "∞";
  $("queries").textContent = `${st.queries_done} / ${st.queries_total}`;
  $("round").textContent = st.round;
  $("phase").textContent = st.error ? `${st.phase}: ${st.error}` : st.phase;
  const d = st.desk;
  $("desk").textContent = `${d.pending} waiting, ${d.leased} being answered, ${d.skipped} skipped, ${d.answered} answered`;
  $("waiting").textContent = `Waiting for the agent (phase: ${st.phase})…`;
  $("metrics").tBodies[0].replaceChildren(...st.rounds.map((r) => {
    const tr = document.createElement("tr");
    tr.append(cell(r.round), cell(r.answers), cell(r.mAP), cell(r.rank1), cell(r.rank5));
    return tr;
  }));
  const curve = $("curve");
  curve.hidden = !st.curve;
  const key = `${st.run_id}:${st.rounds.length}`;
  if (st.curve && key !== state.curveKey) {
    state.curveKey = key;
    state.blobs.delete("/api/curve.png");  // redrawn after each round
    setImage(curve, "/api/curve.png");
  }
}

async function refreshStatus() {
  try {
    showStatus(await getJson("/api/status"));
  } catch (e) {
    if (e instanceof Offline) setOnline(false);  // (the next tick retries)
  }
}

// Once a second: status; a question when there is none; after a reconnect or a restart, ask again.
async function tick(again = true) {
  try {
    const st = await getJson("/api/status");
    const restarted = state.runId !== null && st.run_id !== state.runId;
    const back = state.offline;
    state.runId = st.run_id;
    if (restarted) {
      state.blobs.clear();
      showQuestion(null);  // the old desk's ids mean nothing to the new one
      lastAction("the service restarted: asking for a question again");
    }
    setOnline(true);
    $("token-form").hidden = true;
    showStatus(st);
    if (!state.busy && (!state.question || back)) await act(next);
  } catch (e) {
    if (e instanceof Offline) setOnline(false);
  } finally {
    if (again) setTimeout(tick, 1000);
  }
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.target.tagName === "INPUT") return;
  const k = ev.key.toLowerCase();
  if (k === "y" && !$("btn-same").disabled) answer("same");
  else if (k === "n" && !$("btn-different").disabled) answer("different");
  else if (k === "s" && !$("btn-skip").disabled) answer("skip");
  else if (k === "u" && !$("btn-undo").disabled) undo();
});
$("btn-same").addEventListener("click", () => answer("same"));
$("btn-different").addEventListener("click", () => answer("different"));
$("btn-skip").addEventListener("click", () => answer("skip"));
$("btn-undo").addEventListener("click", undo);

initSettings();
setButtons();
tick();
