// The ranking page (LLaVA-RLHF): Q1 fewer hallucinations (A, B or tie); Q2 more helpful,
// asked only on a tie. Keys: 1 / 2 answer the open question, t = tie, Enter submits.
"use strict";
(function () {
  const { data, submit, typing } = window.FactLoop;
  const byLabel = Object.fromEntries(data.candidates.map((c) => [c.label, c.id]));
  const submitButton = document.getElementById("submit");
  const q2 = document.getElementById("q2");
  const pairwise = data.candidates.length === 2;

  const checked = (name) => {
    const input = document.querySelector(`input[name=${name}]:checked`);
    return input ? input.value : null;
  };
  const choose = (name, value) => {
    const input = document.querySelector(`input[name=${name}][value="${value}"]`);
    if (input) { input.checked = true; refresh(); }
  };

  // The ranking, best first, or null while incomplete.
  function ranking() {
    if (pairwise) {
      const first = checked("q1");
      const winner = first === "tie" ? checked("q2") : first;
      if (!winner) return null;
      const loser = data.candidates.find((c) => c.label !== winner).label;
      return [byLabel[winner], byLabel[loser]];
    }
    const ranks = [...document.querySelectorAll("select.rank")].map((s) => [Number(s.value), Number(s.dataset.candidate)]);
    if (ranks.some(([rank]) => !rank) || new Set(ranks.map(([rank]) => rank)).size !== ranks.length) return null;
    return ranks.sort((a, b) => a[0] - b[0]).map(([, id]) => id);
  }

  function refresh() {
    if (pairwise) {
      const tie = checked("q1") === "tie";
      q2.hidden = !tie;
      if (!tie) document.querySelectorAll("input[name=q2]").forEach((input) => { input.checked = false; });
    }
    submitButton.disabled = ranking() === null;
  }

  function send() {
    const order = ranking();
    if (order === null) return;
    submit("judgement", {
      ranking: order,
      hallucination_tie: pairwise && checked("q1") === "tie",
      hallucinated: [...document.querySelectorAll("input.hallucinates:checked")].map((input) => Number(input.value)),
      rationale: document.getElementById("rationale").value,
    });
  }

  document.querySelectorAll("input[name=q1], input[name=q2], select.rank").forEach((el) => el.addEventListener("change", refresh));
  submitButton.addEventListener("click", send);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || !typing(event))) { event.preventDefault(); send(); return; }
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey || !pairwise) return;
    const question = checked("q1") === "tie" ? "q2" : "q1";
    if (event.key === "1") choose(question, data.candidates[0].label);
    if (event.key === "2") choose(question, data.candidates[1].label);
    if (event.key === "t") choose("q1", "tie");
  });
  refresh();
})();
