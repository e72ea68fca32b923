// Shared by the annotator pages: the API, the timer, zoom, the lease clock and skipping.
// Model output is untrusted: this code writes text with textContent only, never as HTML.
"use strict";
(function () {
  const root = document.querySelector("[data-assignment]");
  const data = JSON.parse(document.getElementById("assignment-data").textContent);
  const started = performance.now();
  const errorBox = document.getElementById("error");
  let busy = false;

  function csrfToken() {
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  async function api(action, body, query) {
    const response = await fetch(`/api/assignments/${data.id}/${action}/${query || ""}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body || {}),
    });
    let payload = null;
    try { payload = await response.json(); } catch (_) { payload = null; }
    return { status: response.status, ok: response.ok, body: payload };
  }

  function message(body) {
    if (!body) return "The server did not answer; try again.";
    if (typeof body.detail === "string") return body.detail;
    return Object.entries(body).map(([field, problems]) => `${field}: ${[].concat(problems).join(" ")}`).join("; ");
  }

  function showError(text) { errorBox.textContent = text; }

  // The next task is leased by a POST to /annotate/ (a GET never takes work).
  function nextTask() {
    const form = document.createElement("form");
    form.method = "post";
    form.action = "/annotate/";
    const token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrfmiddlewaretoken";
    token.value = csrfToken();
    form.appendChild(token);
    document.body.appendChild(form);
    form.submit();
  }

  // The submission's answer carries the next assignment (?next=1: leased in the same
  // request), so the page goes straight to it: one round trip per label, not two. Its image
  // is fetched first (up to a second), so the next page shows it from the cache at once.
  function preload(url) {
    return new Promise((resolve) => {
      const picture = new Image();
      const done = () => resolve();
      picture.onload = done;
      picture.onerror = done;
      setTimeout(done, 1000);
      picture.src = url;
    });
  }

  async function goTo(result) {
    if (!result.body || !("next" in result.body)) { nextTask(); return; }
    const upcoming = result.body.next;
    if (upcoming === null) { nextTask(); return; }  // no work left: the server's page says why
    await preload(upcoming.image.url);
    window.location.assign(`/annotate/${upcoming.id}/`);
  }

  // Send once; on success go to the next task. A retry after a lost answer is safe: the
  // server returns the stored result for a repeated submission.
  async function submit(action, body) {
    if (busy) return;
    busy = true;
    showError("");
    body.time_spent_ms = Math.round(performance.now() - started);
    try {
      const result = await api(action, body, "?next=1");
      if (result.ok) { await goTo(result); return; }
      showError(message(result.body));
    } catch (_) {
      showError("Could not reach the server; your answer was not lost, press submit again.");
    }
    busy = false;
  }

  async function skip() {
    if (busy) return;
    busy = true;
    const result = await api("skip", null, "?next=1");
    if (result.ok) { await goTo(result); return; }
    if (result.status === 409) { nextTask(); return; }
    showError(message(result.body));
    busy = false;
  }

  // Zoom: the slider, + and - keys, or a click on the image.
  const image = document.getElementById("scene");
  const zoom = document.getElementById("zoom");
  function setZoom(level) {
    const clamped = Math.max(1, Math.min(8, level));
    zoom.value = String(clamped);
    image.style.width = `${data.image.width * clamped}px`;
    image.style.height = `${data.image.height * clamped}px`;
    image.dataset.zoom = String(clamped);
  }
  zoom.addEventListener("input", () => setZoom(Number(zoom.value)));
  image.addEventListener("click", () => setZoom(Number(zoom.value) >= 6 ? 3 : 6));
  setZoom(3);

  // The lease clock.
  const left = document.getElementById("lease-left");
  let seconds = Number(left.dataset.seconds);
  const clock = setInterval(() => {
    seconds -= 1;
    if (seconds <= 0) {
      clearInterval(clock);
      left.textContent = "expired";
      showError("Your lease on this task has expired; it went back to the pool. Load the next task.");
      return;
    }
    left.textContent = seconds >= 120 ? `${Math.floor(seconds / 60)} min` : `${seconds} s`;
  }, 1000);

  document.getElementById("skip").addEventListener("click", skip);

  function typing(event) {
    const tag = event.target.tagName;
    return tag === "TEXTAREA" || tag === "INPUT" && event.target.type === "text" || tag === "SELECT";
  }
  document.addEventListener("keydown", (event) => {
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "s") { event.preventDefault(); skip(); }
    if (event.key === "+" || event.key === "=") setZoom(Number(zoom.value) + 1);
    if (event.key === "-") setZoom(Number(zoom.value) - 1);
  });

  window.FactLoop = { root, data, api, submit, showError, message, typing };
})();
