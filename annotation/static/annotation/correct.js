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

  editor.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(refreshDiff, 150);
  });

  async function send() {
    clearTimeout(timer);
    // The categories must follow the spans of exactly the text being sent.
    if (!(await refreshDiff())) return;
    const chosen = spans.map((_, index) => categories[index] || null);
    submit("correction", { corrected: editor.value, span_categories: chosen.some((c) => c) ? chosen : [] });
  }

  document.getElementById("submit").addEventListener("click", send);
  document.getElementById("no-hallucination").addEventListener("click", () => submit("correction", { no_hallucination: true }));
  document.getElementById("reset").addEventListener("click", () => { editor.value = original; categories = []; refreshDiff(); });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); send(); }
  });
  render();
})();
