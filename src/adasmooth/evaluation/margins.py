"""The robust model's probability margin (top-1 minus top-2 softmax probability), grouped by outcome.

Adaptive smoothing rests on "benign confidence": the robust model is confident where it is right and
unconfident where it is wrong, on clean and attacked inputs alike. For α >= 1/2 the mixture follows the
robust model wherever its margin is at least (1-α)/α (the margin lemma).
"""

from __future__ import annotations

import torch

GROUPS = ("clean_correct", "clean_wrong", "attacked_correct", "attacked_wrong")


def probability_margin(logits: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale * logits) top-1 minus top-2, per example."""
    top2 = torch.softmax(scale * logits.float(), dim=-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def alpha_threshold(alpha: float) -> float:
    """The margin (1-α)/α above which the α-mixture must agree with the robust model (α >= 1/2)."""
    if not 0.5 <= alpha <= 1.0:
        raise ValueError(f"the margin lemma needs alpha in [1/2, 1], got {alpha}")
    return (1 - alpha) / alpha


def margin_groups(clean_logits, attacked_logits, y, *, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Margins of the robust model split into clean/attacked x correct/wrong."""
    out = {}
    for kind, logits in (("clean", clean_logits), ("attacked", attacked_logits)):
        m = probability_margin(logits, scale=scale)
        ok = logits.argmax(-1) == y
        out[f"{kind}_correct"] = m[ok]
        out[f"{kind}_wrong"] = m[~ok]
    return out


def margin_summary(groups: dict[str, torch.Tensor], *, alpha: float | None = None) -> dict:
    """Count, mean and quantiles per group; with ``alpha``, the share of each group above (1-α)/α."""
    summary = {}
    thr = alpha_threshold(alpha) if alpha is not None and alpha >= 0.5 else None
    for name, m in groups.items():
        m = m.float()
        entry = {"count": int(m.numel())}
        if m.numel():
            q = torch.quantile(m, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]))
            entry.update(mean=float(m.mean()), q10=float(q[0]), q25=float(q[1]), median=float(q[2]),
                         q75=float(q[3]), q90=float(q[4]))
            if thr is not None:
                entry["share_above_threshold"] = float((m >= thr).float().mean())
        summary[name] = entry
    if thr is not None:
        summary["threshold"] = {"alpha": alpha, "margin": thr}
    benign = benign_confidence(groups)
    if benign is not None:
        summary["benign_confidence"] = benign
    return summary


def benign_confidence(groups: dict[str, torch.Tensor], *, quantile: float = 0.05) -> dict | None:
    """How well a confidence threshold separates: ``q``, the ``quantile`` of the attacked-correct margins,
    and the share of clean-wrong margins below it (what a mixture trusting the robust model above ``q``
    hands to the standard model while keeping ``1 - quantile`` of the robust model's attacked-correct
    answers). None when either group is empty."""
    attacked, wrong = groups.get("attacked_correct"), groups.get("clean_wrong")
    if attacked is None or wrong is None or not attacked.numel() or not wrong.numel():
        return None
    q = float(torch.quantile(attacked.float(), quantile))
    return {"quantile": quantile, "q": q, "share_clean_wrong_below_q": float((wrong.float() < q).float().mean()),
            "n_attacked_correct": int(attacked.numel()), "n_clean_wrong": int(wrong.numel())}
