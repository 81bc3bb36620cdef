// exo_celery dashboard: live refresh of a run's page and the actions (retry, cancel, trigger).
// No library, no build step. Every request that changes something carries the CSRF header
// (double-submit: the value of the exo_csrf cookie, also in <meta name="exo-csrf">).
"use strict";

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)exo_csrf=([^;]+)/);
  if (match) return decodeURIComponent(match[1]);
  const meta = document.querySelector('meta[name="exo-csrf"]');
  return meta ? meta.content : "";
}

async function send(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-exo-csrf": csrfToken() },
    body: JSON.stringify(body || {}),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    let detail = data && data.detail !== undefined ? data.detail : response.statusText;
    if (detail && detail.validation_errors) detail = detail.validation_errors.join("; ");
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

function say(text, isError) {
  const box = document.getElementById("action-result");
  if (!box) return;
  box.textContent = text;
  box.className = "result " + (isError ? "err" : "ok");
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.act");
  if (!button) return;
  event.preventDefault();
  const action = button.dataset.action;
  if (action === "cancel" && !window.confirm("Cancel this run?")) return;
  button.disabled = true;
  try {
    const result = await send(button.dataset.url, action === "retry" ? {} : {});
    if (action === "retry") {
      say("retry created: state " + result.id + " (" + result.status + ")", false);
      const ns = location.pathname.split("/")[2];
      window.location.href = "/ui/" + ns + "/state/" + result.id;
    } else {
      say("run " + result.status, false);
      window.location.reload();
    }
  } catch (error) {
    say(String(error.message || error), true);
    button.disabled = false;
  }
});

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (form.id !== "trigger-form") return;
  event.preventDefault();
  const inputs = {}, store = {};
  form.querySelectorAll('input[name="input"]').forEach((i) => { inputs[i.dataset.key] = i.value; });
  form.querySelectorAll('input[name="store"]').forEach((i) => { store[i.dataset.key] = i.value; });
  try {
    const result = await send(form.dataset.url, { inputs: inputs, store: store });
    say("run " + result.run_id + " created", false);
    window.location.href = "/ui/" + encodeURIComponent(form.dataset.ns) + "/run/" + result.run_id;
  } catch (error) {
    say(String(error.message || error), true);
  }
});

// A run's page: while the run is active, swap in the server-rendered live part every 0.3 s
// (at most about 0.3 s plus one render behind the ledger; tests/server/test_browser.py measures it).
(function live() {
  const box = document.getElementById("live");
  if (!box) return;
  let busy = false;
  const timer = window.setInterval(async () => {
    const state = document.getElementById("live-state");
    if (state && state.dataset.active === "0") { window.clearInterval(timer); return; }
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(box.dataset.src, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) box.innerHTML = await response.text();
    } catch (_) { /* the next tick tries again */ }
    busy = false;
  }, 300);
})();
