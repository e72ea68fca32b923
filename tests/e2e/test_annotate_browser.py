"""Both annotator pages in a real browser: the keyboard flow of ranking, the live diff of a
correction, and untrusted model text that must stay text."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from annotation.models import Assignment, Correction, Judgement, Prompt, Task
from tests.e2e.test_login_browser import log_in
from tests.factories import make_round

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ORIGINAL = "A large red ball is at the top left. A small blue moon is in the center."
PAYLOADS = [
    '<script>window.__pwned = "script"</script>Nothing odd here.',
    "<img src=x onerror=\"window.__pwned = 'img'\"> A ball.",
]


def start(page: Any, base: str) -> None:
    log_in(page, base, "ann")
    page.wait_for_url(f"{base}/")
    page.get_by_test_id("start").click()
    page.wait_for_url(f"{base}/annotate/*/")


def assignment_on(page: Any) -> Assignment:
    return Assignment.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))


def test_ranking_with_the_keyboard(page: Any, live_server: Any, annotator: User) -> None:
    make_round(tasks=2, texts=["A red ball is at the top.", "A red ball and a kite are at the top."])
    base = live_server.url
    start(page, base)
    first = assignment_on(page)
    # The image is there and loaded, and zooms.
    assert page.evaluate("document.getElementById('scene').naturalWidth") == 8
    page.keyboard.press("+")
    assert page.get_attribute("#scene", "data-zoom") == "4"
    assert page.get_by_test_id("prompt").text_content() == "Describe the image (0)."
    assert page.get_by_test_id("response-B").text_content() == "A red ball and a kite are at the top."
    assert page.is_hidden("#q2") and page.is_disabled("#submit")

    # Q1: a tie; Q2 (only now asked): B is more helpful. B hallucinates a kite.
    page.keyboard.press("t")
    assert page.is_visible("#q2") and page.is_disabled("#submit")
    page.keyboard.press("2")
    assert page.is_enabled("#submit")
    page.get_by_test_id("flag-B").check()
    page.fill("#rationale", "both fine, B says more")
    page.locator("h3").first.click()  # leave the text box: Enter now submits
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: url.rstrip("/").split("/")[-1] not in ("", str(first.pk)) and "/annotate/" in url)

    judgement = Judgement.objects.get(assignment=first)
    a, b = (slot.candidate_id for slot in first.task.slots.all())
    assert (judgement.ranking, judgement.hallucination_tie, judgement.hallucinated) == ([b, a], True, [b])
    assert judgement.rejected_hallucinates is False and judgement.rationale == "both fine, B says more"
    assert judgement.time_spent_ms > 0

    # Second task: A at once; Enter submits; then there is no work left.
    second = assignment_on(page)
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/annotate/")
    assert page.get_by_test_id("no-work").is_visible()
    judgement = Judgement.objects.get(assignment=second)
    assert judgement.hallucination_tie is False
    assert judgement.preferred_id == second.task.slots.get(position=0).candidate_id


def test_ranking_three_responses_hallucination_first_with_a_tie(
    page: Any, live_server: Any, annotator: User, tmp_path: Any
) -> None:
    """Q1 groups the three by hallucination (A and B tie, C worst); Q2, asked only then,
    orders the tie by helpfulness (B first). The ranking is B, A, C, and its pairs export
    with the tie on (B, A) only."""
    from annotation.data.exporters import export

    make_round(tasks=1, per_task=3, texts=["A red ball.", "A red ball at the top.", "A red ball and a kite."])
    base = live_server.url
    start(page, base)
    first = assignment_on(page)
    a, b, c = (slot.candidate_id for slot in first.task.slots.order_by("position"))
    assert page.is_hidden("#q2") and page.is_disabled("#submit")
    page.get_by_test_id("tier-A").select_option("1")
    page.get_by_test_id("tier-B").select_option("1")
    assert page.is_disabled("#submit")  # C has no group yet
    page.get_by_test_id("tier-C").select_option("2")
    # A tie: Q2 appears for it alone, and the ranking waits for it.
    expect(page.get_by_test_id("tie-1")).to_contain_text("Tie A = B:")
    assert page.get_by_test_id("helpful-C").count() == 0
    assert page.is_visible("#q2") and page.is_disabled("#submit")
    page.get_by_test_id("helpful-B").select_option("1")
    page.get_by_test_id("helpful-A").select_option("1")  # the same place twice: not a ranking
    assert page.is_disabled("#submit")
    page.get_by_test_id("helpful-A").select_option("2")
    page.get_by_test_id("flag-C").check()
    page.click("#submit")
    page.wait_for_url(f"{base}/annotate/")

    judgement = Judgement.objects.get(assignment=first)
    assert judgement.ranking == [b, a, c] and judgement.hallucinated == [c]
    assert [sorted(tier) for tier in judgement.tiers] == [sorted([a, b]), [c]]
    assert judgement.hallucination_tie is True and judgement.rejected_hallucinates is True

    from datasets import load_from_disk  # type: ignore[import-untyped]

    export("trl", [1], tmp_path / "trl")
    pairs = load_from_disk(str(tmp_path / "trl"))
    texts = {a: "A red ball.", b: "A red ball at the top.", c: "A red ball and a kite."}
    got = [
        (p["chosen"][0]["content"][0]["text"], p["rejected"][0]["content"][0]["text"], p["hallucination_tie"])
        for p in pairs
    ]
    assert got == [(texts[b], texts[a], True), (texts[b], texts[c], False), (texts[a], texts[c], False)]


def test_skip_with_the_keyboard(page: Any, live_server: Any, annotator: User) -> None:
    make_round(tasks=2)
    start(page, live_server.url)
    first = assignment_on(page)
    page.keyboard.press("s")
    page.wait_for_url(lambda url: f"/annotate/{first.pk}/" not in url and url.rstrip("/").split("/")[-1].isdigit())
    first.refresh_from_db()
    assert first.status == Assignment.Status.SKIPPED
    assert assignment_on(page).task_id != first.task_id


def test_correction_with_a_live_diff_and_a_category(page: Any, live_server: Any, annotator: User) -> None:
    make_round(tasks=1, kind=Task.Kind.CORRECT, texts=[ORIGINAL])
    start(page, live_server.url)
    assignment = assignment_on(page)
    assert page.input_value("#editor") == ORIGINAL
    assert page.get_by_test_id("original").text_content() == ORIGINAL
    # The guideline asks for a rewrite into what is there, not a deletion.
    expect(page.get_by_test_id("guideline")).to_be_visible()
    guideline = " ".join((page.get_by_test_id("guideline").text_content() or "").split())
    assert "that the response does not name yet" in guideline and "Delete it only when" in guideline

    page.fill("#editor", ORIGINAL.replace("red ball", "red box").replace("small blue", "large blue"))
    # A locator wait, not wait_for_function: the page's Content-Security-Policy forbids eval.
    expect(page.locator("#diff mark")).to_have_count(2)
    assert page.locator("#diff mark").all_text_contents() == ["box", "large"]
    assert page.locator("#diff del").all_text_contents() == ["ball", "small"]
    assert page.get_by_test_id("span-count").text_content() == "2 changed spans"
    page.locator("select.category").nth(0).select_option("objects")
    page.locator("select.category").nth(1).select_option("attributes")
    page.click("#submit")
    page.wait_for_url(f"{live_server.url}/annotate/")

    correction = Correction.objects.get(assignment=assignment)
    assert [(s["original_text"], s["corrected_text"], s["category"]) for s in correction.spans] == [
        ("ball", "box", "objects"),
        ("small", "large", "attributes"),
    ]


def test_no_hallucination_and_an_empty_correction(page: Any, live_server: Any, annotator: User) -> None:
    make_round(tasks=2, kind=Task.Kind.CORRECT, texts=[ORIGINAL])
    start(page, live_server.url)
    first = assignment_on(page)
    page.fill("#editor", "   ")
    page.click("#submit")
    page.get_by_test_id("error").filter(has_text="empty").wait_for()
    assert not Correction.objects.exists()
    page.click("#no-hallucination")
    page.wait_for_url(lambda url: f"/annotate/{first.pk}/" not in url and url.rstrip("/").split("/")[-1].isdigit())
    correction = Correction.objects.get(assignment=first)
    assert correction.no_hallucination and correction.spans == [] and correction.corrected == ORIGINAL


@pytest.mark.parametrize("kind", [Task.Kind.RANK, Task.Kind.CORRECT])
def test_model_and_prompt_text_is_shown_as_text_never_run(
    page: Any, live_server: Any, annotator: User, kind: str
) -> None:
    round_ = make_round(tasks=1, kind=kind, texts=PAYLOADS)
    Prompt.objects.filter(tasks__round=round_).update(text='<script>window.__pwned = "prompt"</script>Describe.')
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    start(page, live_server.url)

    assert page.get_by_test_id("prompt").text_content() == '<script>window.__pwned = "prompt"</script>Describe.'
    if kind == Task.Kind.RANK:
        assert page.get_by_test_id("response-A").text_content() == PAYLOADS[0]
        assert page.get_by_test_id("response-B").text_content() == PAYLOADS[1]
    else:
        assert page.input_value("#editor") == PAYLOADS[0]
        # The live diff renders model text and the annotator's text: still as text.
        page.fill("#editor", PAYLOADS[1] + " <img src=y onerror=\"window.__pwned = 'diff'\">")
        page.locator("#diff mark").first.wait_for()
        assert page.locator("#diff img").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img").count() == 1  # the scene only
    assert page.locator("main script:not([src]):not([type='application/json'])").count() == 0
    assert dialogs == []


def _doubt(round_: Any, doubts: dict[str, list[tuple[str, str | None, str]]]) -> None:
    """Store AI feedback on the round's candidates: per text, (doubted words, fix, answer)."""
    from contract.feedback import ClaimVerdict, Feedback

    for candidate in round_.candidates.all():
        claims = []
        for words, fix, answer in doubts.get(candidate.text, []):
            start = candidate.text.index(words)
            end = start + len(words)
            claims.append(
                ClaimVerdict(
                    "colour",
                    "ball",
                    words,  # one claim per doubt (claims with one key are one claim)
                    start,
                    end,
                    "What color is the ball?",
                    answer=answer,
                    supported=False,
                    fix=None if fix is None else (start, end, fix),
                )
            )
        candidate.ai_feedback = Feedback(str(candidate.pk), "ai:round-1", tuple(claims)).as_dict()
        candidate.save()


def test_accepting_and_rejecting_machine_suggestions_in_a_correction(
    page: Any, live_server: Any, annotator: User
) -> None:
    """The correction page marks the AI labeller's doubts as machine suggestions; accepting
    one applies its edit to the editor, rejecting one leaves the text; both are recorded with
    the correction, which stays the annotator's."""
    round_ = make_round(tasks=1, kind=Task.Kind.CORRECT, texts=[ORIGINAL])
    _doubt(
        round_,
        {ORIGINAL: [("red", "green", "The ball is green."), ("small blue moon", "", '<b onclick="x">No</b>')]},
    )
    start(page, live_server.url)
    assignment = assignment_on(page)
    section = page.get_by_test_id("machine-suggestions")
    expect(section).to_contain_text("AI, not checked by a person")
    expect(section).to_contain_text("ai:round-1")
    # The doubted words are marked in the response; the model's answer stays text.
    assert page.locator("[data-testid=original] mark.machine-span").all_text_contents() == ["red", "small blue moon"]
    expect(page.get_by_test_id("suggestion-1")).to_contain_text('answered "<b onclick="x">No</b>"')
    assert page.locator("[data-testid=suggestion-1] b").count() == 0

    page.get_by_test_id("accept-0").click()
    assert page.input_value("#editor") == ORIGINAL.replace("red ball", "green ball")
    expect(page.locator("#diff mark")).to_have_count(1)
    assert page.locator("#diff mark").all_text_contents() == ["green"]
    expect(page.get_by_test_id("suggestion-0")).to_contain_text("accepted")
    page.get_by_test_id("reject-1").click()
    expect(page.get_by_test_id("suggestion-1")).to_contain_text("rejected")
    assert page.input_value("#editor") == ORIGINAL.replace("red ball", "green ball")  # rejecting changes nothing
    page.click("#submit")
    page.wait_for_url(f"{live_server.url}/annotate/")

    correction = Correction.objects.get(assignment=assignment)
    assert correction.corrected == ORIGINAL.replace("red ball", "green ball")
    assert [(s["original_text"], s["corrected_text"]) for s in correction.spans] == [("red", "green")]
    assert correction.suggestions == {"accepted": [0], "rejected": [1]}


def test_a_ranking_can_take_the_machines_proposed_order(page: Any, live_server: Any, annotator: User) -> None:
    texts = ["A red ball is at the top.", "A red ball and a kite are at the top."]
    round_ = make_round(tasks=1, texts=texts)
    _doubt(round_, {texts[1]: [("kite", "", "No, there is no kite.")]})
    start(page, live_server.url)
    assignment = assignment_on(page)
    expect(page.get_by_test_id("suggested-order")).to_have_text("A (0), then B (-1)")
    expect(page.get_by_test_id("machine-order")).to_contain_text("AI, not checked by a person")
    assert page.is_disabled("#submit")
    page.get_by_test_id("use-suggestion").click()
    assert page.is_checked("input[name=q1][value=A]") and page.is_enabled("#submit")
    page.click("#submit")
    page.wait_for_url(f"{live_server.url}/annotate/")
    judgement = Judgement.objects.get(assignment=assignment)
    assert judgement.preferred_id == assignment.task.slots.get(position=0).candidate_id
