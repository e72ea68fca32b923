"""The survey's offline objectives beyond DDPO and DPO, as pure functions of tensors.

Each takes per-sequence (or per-token) log-probabilities that rlhf/train_dpo.py computes with
the model, and returns the loss to minimise plus its parts for the log. Sources, and what
each differs in from DPO, are in docs/methods.md 2d:

- SFT on the corrected responses: the negative log-likelihood of the chosen tokens (LLaVA-RLHF
  initialises its policy with SFT, arXiv:2309.14525 section 2.3; STIC runs SFT after its DPO
  stage, arXiv:2405.19716 section 3.2).
- mDPO (arXiv:2406.11839, eq. 3-5): DPO + a conditional term that prefers the chosen response
  given the image over the same response given a corrupted image (CoPO) + an anchor that keeps
  the chosen response's implicit reward above delta (AncPO).
- HSA-DPO (arXiv:2404.14233, section 3.3): DPO whose rejected side is weighted by the severity
  of the rejected response's hallucinations.
- HALVA (arXiv:2405.18654, section 3, eq. 2-4): a phrase-level contrast between the correct
  phrase and the substituted hallucinated one, -log pi(p+) / (pi(p+) + pi(p-)), plus alpha
  times a token-level KL to the reference on the correct response.

Notation as docs/methods.md: pi the policy, ref the frozen reference, beta the DPO temperature,
sigma the logistic function. Per-sequence log-probabilities are sums over response tokens.
"""

from __future__ import annotations

from typing import Any

Tensor = Any  # torch.Tensor; torch is imported only when a function runs


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> Tensor:
    """DPO per pair (Rafailov et al., 2023, eq. 7): -log sigma(beta [(pi_w - ref_w) - (pi_l - ref_l)])."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)))


def sft_loss(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Mean negative log-likelihood per response token (the masked ones)."""
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1)


def mdpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    policy_chosen_corrupted: Tensor,
    ref_chosen_corrupted: Tensor,
    *,
    beta: float,
    delta: float = 0.0,
    conditional_weight: float = 1.0,
    anchor_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """mDPO (arXiv:2406.11839): mean over pairs of L_DPO + L_CoPO + L_AncPO, where

    L_CoPO = -log sigma(beta log[pi(y_w|m)/ref(y_w|m)] - beta log[pi(y_w|m')/ref(y_w|m')]) (eq. 4),
    m' the corrupted image, and L_AncPO = -log sigma(beta log[pi(y_w|m)/ref(y_w|m)] - delta)
    (eq. 5, delta = 0 in the paper). The two extra terms' weights are 1 in the paper."""
    import torch.nn.functional as F

    chosen_reward = beta * (policy_chosen - ref_chosen)
    corrupted_reward = beta * (policy_chosen_corrupted - ref_chosen_corrupted)
    dpo = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    conditional = -F.logsigmoid(chosen_reward - corrupted_reward)
    anchor = -F.logsigmoid(chosen_reward - delta)
    loss = (dpo + conditional_weight * conditional + anchor_weight * anchor).mean()
    return loss, {"dpo": dpo.mean(), "conditional": conditional.mean(), "anchor": anchor.mean()}


def severity_weights(severity: Tensor, mean_severity: float) -> Tensor:
    """Each pair's severity over the mean severity of the training pairs: weights average 1, so
    beta keeps its meaning; a pair whose rejected response is twice as wrong weighs twice."""
    return severity / max(mean_severity, 1e-8)


def hsa_dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    weights: Tensor,
    *,
    beta: float,
) -> Tensor:
    """HSA-DPO (arXiv:2404.14233, section 3.3; docs/methods.md 2d: the rejected side weighted by a
    hallucination severity score): mean of -log sigma(beta (pi_w - ref_w) - h beta (pi_l - ref_l))
    with h the pair's severity weight. h = 1 everywhere is DPO."""
    import torch.nn.functional as F

    margin = beta * (policy_chosen - ref_chosen) - weights * beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(margin).mean()


def token_kl(policy_logits: Tensor, ref_logits: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked positions of KL(ref || pi) of the next-token distributions,
    sum_v ref(v) [log ref(v) - log pi(v)] (HALVA's divergence term, arXiv:2405.18654 eq. 3)."""
    import torch

    log_pi = torch.log_softmax(policy_logits.float(), dim=-1)
    log_ref = torch.log_softmax(ref_logits.float(), dim=-1)
    per_token = (log_ref.exp() * (log_ref - log_pi)).sum(dim=-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def parting_tokens(ids: Tensor, mask: Tensor) -> Tensor:
    """For rows [chosen; rejected] of n pairs: a mask of each row's first response token
    where its pair's two responses part (their response tokens, read in order, differ there;
    a response that ends first parts at its end token). Both sides' marked tokens follow
    the same context: the two continuations a contrast can compare. A pair whose responses
    are equal has none."""
    import torch

    n = ids.size(0) // 2
    out = torch.zeros_like(mask)
    for i in range(n):
        where = [mask[row].nonzero().flatten() for row in (i, n + i)]
        tokens = [ids[row, at] for row, at in zip((i, n + i), where, strict=True)]
        common = min(len(t) for t in tokens)
        differ = (tokens[0][:common] != tokens[1][:common]).nonzero().flatten()
        part = int(differ[0]) if len(differ) else common
        for row, at in zip((i, n + i), where, strict=True):
            if part < len(at):
                out[row, at[part]] = 1
    return out


def halva_loss(
    positive_phrase: Tensor, negative_phrase: Tensor, kl: Tensor, *, alpha: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """HALVA (arXiv:2405.18654, eq. 2-4): mean over pairs of -log pi(p+) / (pi(p+) + pi(p-)),
    which is -log sigma(log pi(p+) - log pi(p-)), plus alpha times the token KL to the reference.
    `positive_phrase` and `negative_phrase` are the log-probabilities of the correct and the
    hallucinated phrases (sums over their tokens, each in its own response's context)."""
    import torch.nn.functional as F

    contrast = -F.logsigmoid(positive_phrase - negative_phrase).mean()
    return contrast + alpha * kl, {"contrast": contrast, "kl": kl}
