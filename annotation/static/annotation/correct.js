// The correction page (RLHF-V): edit the wrong words; the server's diff of the two texts is
// shown live, with a category per changed span. The server recomputes the spans on submit.
"use strict";
(function () {
  const { data, api, submit, showError, message } = window.FactLoop;
  const original = data.candidates[0].text;
  const editor = document.getElementById("editor");
  const diff = document.getElementById("diff");
  const list = document.getElementById("spans");
  const count = document.getElementById("span-count");
  const options = document.getElementById("categories");
  let spans = [];
  let categories = [];
  let timer = null;
  let asked = 0;
  // Machine suggestions (the AI labeller's doubted claims): index -> "accepted" | "rejected".
  const suggestions = data.candidates[0].suggestions || [];
  const answered = {};

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // The corrected text with its changes marked: deletions struck through, new text marked.
  function render() {
    const text = editor.value;
    diff.replaceChildren();
    let at = 0;
    spans.forEach((span, index) => {
      diff.append(document.createTextNode(text.slice(at, span.corrected_start)));
      if (span.original_text) diff.append(el("del", span.original_text, `span-${index}`));
      if (span.corrected_text) diff.append(el("mark", span.corrected_text, `span-${index}`));
      at = span.corrected_end;
    });
    diff.append(document.createTextNode(text.slice(at)));
    count.textContent = `${spans.length} changed span${spans.length === 1 ? "" : "s"}`;

    list.replaceChildren();
    spans.forEach((span, index) => {
      const item = el("li");
      item.append(el("del", span.original_text || "∅"), document.createTextNode(" → "), el("mark", span.corrected_text || "∅"));
      const select = el("select");
      select.className = "category";
      select.dataset.index = String(index);
      select.append(el("option", "category…"));
      select.firstChild.value = "";
      select.append(options.content.cloneNode(true));
      select.value = categories[index] || "";
      select.addEventListener("change", () => { categories[index] = select.value || null; });
      item.append(document.createTextNode(" "), select);
      list.append(item);
    });
  }

  async function refreshDiff() {
    const ticket = ++asked;
    const result = await api("diff", { corrected: editor.value });
    if (ticket !== asked) return false; // a newer edit is on its way
    if (!result.ok) { showError(message(result.body)); return false; }
    if (result.body.spans.length !== spans.length) categories = categories.slice(0, result.body.spans.length);
    spans = result.body.spans;
    showError("");
    render();
    return true;
  }

  // The original text with the doubted words marked (text nodes only: model output is never HTML).
  function markOriginal() {
    const shown = document.querySelector("[data-testid=original]");
    if (!suggestions.length || !shown) return;
    shown.replaceChildren();
    let at = 0;
    [...suggestions].sort((a, b) => a.start - b.start).forEach((s) => {
      if (s.start < at) return;
      shown.append(document.createTextNode(original.slice(at, s.start)));
      const mark = el("mark", original.slice(s.start, s.end), `machine-span state-${answered[s.index] || "open"}`);
      mark.dataset.suggestion = String(s.index);
      shown.append(mark);
      at = s.end;
    });
    shown.append(document.createTextNode(original.slice(at)));
  }

  // Where `words` stand in `text` nearest to `near` (-1: nowhere).
  function nearest(text, words, near) {
    let best = -1;
    for (let at = text.indexOf(words); at >= 0; at = text.indexOf(words, at + 1)) {
      if (best < 0 || Math.abs(at - near) < Math.abs(best - near)) best = at;
    }
    return best;
  }

  // Accepting applies the suggestion's edit where its original words still stand in the
  // editor (the occurrence nearest their place in the response); if the annotator already
  // rewrote them, it says so and changes nothing.
  function accept(s) {
    const [start, end, replacement] = s.fix;
    const words = original.slice(start, end);
    const at = nearest(editor.value, words, start);
    if (at < 0) { showError("That part was already edited; make the change by hand."); return; }
    editor.value = editor.value.slice(0, at) + replacement + editor.value.slice(at + words.length);
    answered[s.index] = "accepted";
    drawSuggestions();
    refreshDiff();
  }

  function drawSuggestions() {
    const list = document.getElementById("suggestions");
    if (!list) return;
    list.replaceChildren();
    suggestions.forEach((s) => {
      const item = el("li", undefined, `suggestion state-${answered[s.index] || "open"}`);
      item.dataset.testid = `suggestion-${s.index}`;
      item.append(el("mark", original.slice(s.start, s.end), "machine-span"));
      item.append(el("span", ` — asked "${s.question}", the model answered "${s.answer}". `, "muted"));
      if (s.fix) {
        const change = original.slice(s.fix[0], s.fix[1]).trim();
        item.append(el("span", s.fix[2] ? `Change to "${s.fix[2]}". ` : `Delete "${change}". `));
      }
      if (answered[s.index]) {
        item.append(el("strong", answered[s.index]));
      } else {
        const yes = el("button", "Accept", "small");
        yes.type = "button";
        yes.dataset.testid = `accept-${s.index}`;
        yes.disabled = !s.fix;
        yes.addEventListener("click", () => accept(s));
        const no = el("button", "Reject", "small secondary");
        no.type = "button";
        no.dataset.testid = `reject-${s.index}`;
        no.addEventListener("click", () => { answered[s.index] = "rejected"; drawSuggestions(); });
        item.append(yes, document.createTextNode(" "), no);
      }
      list.append(item);
    });
    markOriginal();
  }

  function suggestionAnswers() {
    const pick = (state) => suggestions.map((s) => s.index).filter((i) => answered[i] === state);
    return suggestions.length ? { accepted: pick("accepted"), rejected: pick("rejected") } : {};
  }

  editor.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(refreshDiff, 150);
  });

  async function send() {
    clearTimeout(timer);
    // The categories must follow the spans of exactly the text being sent.
    if (!(await refreshDiff())) return;
    const chosen = spans.map((_, index) => categories[index] || null);
    submit("correction", {
      corrected: editor.value,
      span_categories: chosen.some((c) => c) ? chosen : [],
      suggestions: suggestionAnswers(),
    });
  }

  document.getElementById("submit").addEventListener("click", send);
  document.getElementById("no-hallucination").addEventListener(
    "click", () => submit("correction", { no_hallucination: true, suggestions: suggestionAnswers() }));
  document.getElementById("reset").addEventListener("click", () => {
    editor.value = original;
    categories = [];
    Object.keys(answered).forEach((key) => { delete answered[key]; });
    drawSuggestions();
    refreshDiff();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); send(); }
  });
  render();
  drawSuggestions();
})();
