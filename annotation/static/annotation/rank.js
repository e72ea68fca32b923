// The ranking page (LLaVA-RLHF, docs/methods.md 1a). Two responses: Q1 fewer hallucinations (A, B
// or tie); Q2 more helpful, asked only on a tie. Keys: 1 / 2 answer the open question,
// t = tie, Enter submits. Three or more: Q1 groups the responses by hallucination (1 =
// fewest; the same number is a tie); Q2 then orders each tie by helpfulness. The ranking is
// the groups in order, each tie in its Q2 order; `tiers` sends Q1's groups.
"use strict";
(function () {
  const { data, submit, typing } = window.FactLoop;
  const byLabel = Object.fromEntries(data.candidates.map((c) => [c.label, c.id]));
  const labelOf = Object.fromEntries(data.candidates.map((c) => [c.id, c.label]));
  const submitButton = document.getElementById("submit");
  const q2 = document.getElementById("q2");
  const ties = document.getElementById("ties");
  const pairwise = data.candidates.length === 2;

  const checked = (name) => {
    const input = document.querySelector(`input[name=${name}]:checked`);
    return input ? input.value : null;
  };
  const choose = (name, value) => {
    const input = document.querySelector(`input[name=${name}][value="${value}"]`);
    if (input) { input.checked = true; refresh(); }
  };

  // Q1 for k responses: candidate ids grouped by hallucination, fewest first; null while a
  // response has no group.
  function tiers() {
    const chosen = [...document.querySelectorAll("select.tier")].map((s) => [Number(s.value), Number(s.dataset.candidate)]);
    if (chosen.some(([tier]) => !tier)) return null;
    const numbers = [...new Set(chosen.map(([tier]) => tier))].sort((a, b) => a - b);
    return numbers.map((n) => chosen.filter(([tier]) => tier === n).map(([, id]) => id));
  }

  // Q2's order of one tie (ids, most helpful first), or null while incomplete.
  function tieOrder(group) {
    const picks = group.map((id) => {
      const select = ties.querySelector(`select[data-candidate="${id}"]`);
      return [select ? Number(select.value) : 0, id];
    });
    if (picks.some(([rank]) => !rank) || new Set(picks.map(([rank]) => rank)).size !== picks.length) return null;
    return picks.sort((a, b) => a[0] - b[0]).map(([, id]) => id);
  }

  // The ranking, best first, or null while incomplete.
  function ranking() {
    if (pairwise) {
      const first = checked("q1");
      const winner = first === "tie" ? checked("q2") : first;
      if (!winner) return null;
      const loser = data.candidates.find((c) => c.label !== winner).label;
      return [byLabel[winner], byLabel[loser]];
    }
    const groups = tiers();
    if (groups === null) return null;
    const ordered = groups.map((group) => (group.length === 1 ? group : tieOrder(group)));
    return ordered.some((group) => group === null) ? null : ordered.flat();
  }

  // One row of helpfulness selects per tie, rebuilt when Q1's groups change (a choice already
  // made for a response stays while it remains in a tie of the same size).
  function drawTies() {
    const groups = (tiers() || []).filter((group) => group.length > 1);
    const key = JSON.stringify(groups);
    if (ties.dataset.key === key) return;
    const kept = Object.fromEntries([...ties.querySelectorAll("select")].map((s) => [s.dataset.candidate, s.value]));
    ties.dataset.key = key;
    ties.replaceChildren();
    groups.forEach((group, index) => {
      const row = document.createElement("p");
      row.className = "tie";
      row.dataset.testid = `tie-${index + 1}`;
      row.append(document.createTextNode(`Tie ${group.map((id) => labelOf[id]).join(" = ")}: `));
      group.forEach((id) => {
        const label = document.createElement("label");
        label.className = "inline";
        label.append(document.createTextNode(`${labelOf[id]} `));
        const select = document.createElement("select");
        select.className = "helpful";
        select.dataset.candidate = String(id);
        select.dataset.testid = `helpful-${labelOf[id]}`;
        ["", ...group.map((_, i) => String(i + 1))].forEach((value) => {
          const option = document.createElement("option");
          option.value = value;
          option.textContent = value || "–";
          select.append(option);
        });
        if (kept[id] && Number(kept[id]) <= group.length) select.value = kept[id];
        select.addEventListener("change", refresh);
        label.append(select);
        row.append(label);
      });
      ties.append(row);
    });
  }

  function refresh() {
    if (pairwise) {
      const tie = checked("q1") === "tie";
      q2.hidden = !tie;
      if (!tie) document.querySelectorAll("input[name=q2]").forEach((input) => { input.checked = false; });
    } else {
      drawTies();
      q2.hidden = ties.childElementCount === 0;
    }
    submitButton.disabled = ranking() === null;
  }

  function send() {
    const order = ranking();
    if (order === null) return;
    const answer = {
      ranking: order,
      hallucinated: [...document.querySelectorAll("input.hallucinates:checked")].map((input) => Number(input.value)),
      rationale: document.getElementById("rationale").value,
    };
    if (pairwise) answer.hallucination_tie = checked("q1") === "tie";
    else answer.tiers = tiers();
    submit("judgement", answer);
  }

  // The AI labeller's proposed order (fewest doubted claims first); the annotator may take it
  // as Q1's answer and change it. Its texts are model output, shown as text only.
  function showSuggestion() {
    if (!data.suggested_order) return;
    const score = Object.fromEntries(data.candidates.map((c) => [c.id, c.ai_score]));
    const groups = [];
    data.suggested_order.forEach((id) => {
      const last = groups[groups.length - 1];
      if (last && score[last[0]] === score[id]) last.push(id); else groups.push([id]);
    });
    document.getElementById("suggested-order").textContent = groups
      .map((group) => group.map((id) => `${labelOf[id]} (${score[id]})`).join(" = ")).join(", then ");
    const doubts = document.getElementById("doubts");
    data.candidates.forEach((c) => c.suggestions.forEach((s) => {
      const item = document.createElement("li");
      item.textContent = `${c.label}: "${c.text.slice(s.start, s.end)}" (asked "${s.question}", answered "${s.answer}")`;
      doubts.append(item);
    }));
    document.getElementById("use-suggestion").addEventListener("click", () => {
      if (pairwise) {
        choose("q1", groups.length === 1 ? "tie" : labelOf[groups[0][0]]);
        return;
      }
      groups.forEach((group, index) => group.forEach((id) => {
        const select = document.querySelector(`select.tier[data-candidate="${id}"]`);
        if (select) select.value = String(index + 1);
      }));
      refresh();
    });
  }

  showSuggestion();
  document.querySelectorAll("input[name=q1], input[name=q2], select.tier").forEach((el) => el.addEventListener("change", refresh));
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
