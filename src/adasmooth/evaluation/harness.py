"""The evaluation harness: several attacks on one model, the per-example worst case, in independent chunks.

An example counts as robust only if the model classifies it correctly on the clean input *and* after
every attack; each attack's own accuracy is reported beside the worst case, with its settings.

Each chunk of ``chunk_size`` consecutive examples is evaluated on its own (every attack seeded as
configured), so its per-example results do not depend on which process ran it or on what ran before.
Rank r takes chunks r, r + W, r + 2W, ...; the results are gathered and merged in chunk order into one
:class:`RobustnessReport` whose per-example results equal a single-process run's. With ``cache_dir``
each finished chunk is written atomically, and a rerun skips the chunks already there (nothing lost when
a run is killed). :func:`evaluate_robustness` is the one-chunk, one-process case.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks.gradients import input_gradients_only
from ..distributed import rank_and_world
from ..state import ChunkStore, chunk_slices, run_chunks, settings_key
from .accuracy import correct_mask
from .attack_specs import Attack, AttackOutcome, AutoAttackSpec, GateAPGDAttack, PGDAttack, TransferAttack
from .checks import check_evaluation_inputs
from .report import RobustnessReport, assemble_report, environment

logger = logging.getLogger(__name__)

__all__ = ["Attack", "AttackOutcome", "AutoAttackSpec", "GateAPGDAttack", "PGDAttack", "RobustnessReport",
           "TransferAttack", "assemble_report", "environment", "evaluate_in_chunks", "evaluate_robustness"]


def run_attacks(model, x, y, attacks, clean: torch.Tensor, *, eps, norm, device, batch_size, progress=False,
                on_start: Callable[[object], None] | None = None) -> Iterator[tuple]:
    """Run each attack in turn; yields ``(attack, robust, outcome, seconds)`` where ``robust`` is the
    per-example mask of examples correct clean *and* after the attack (on the CPU)."""
    for attack in attacks:
        if on_start is not None:
            on_start(attack)
        t = time.perf_counter()
        with input_gradients_only(model):
            out = attack.robust_mask(model, x, y, eps=eps, norm=norm, device=device, batch_size=batch_size,
                                     progress=progress)
        yield attack, out.robust.cpu() & clean, out, time.perf_counter() - t


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list,
    *,
    eps: float,
    norm: str = "Linf",
    device: str | torch.device = "cpu",
    batch_size: int = 250,
    model_info: dict | None = None,
    dataset: str = "",
    split: str = "test",
    indices: torch.Tensor | None = None,
    sanity_checks: bool = True,
    progress: bool = True,
    on_outcome: Callable[[str, AttackOutcome], None] | None = None,
) -> RobustnessReport:
    """Apply every attack in ``attacks`` to ``model`` on ``(x, y)`` and report the per-example worst case:
    :func:`evaluate_in_chunks` with one chunk in this process.

    Sanity checks (reported in ``sanity``, never silently dropped): robust <= clean for each attack and for
    the worst case; PGD with eps = 0 reproduces clean accuracy; PGD with a very large eps drives accuracy
    to about 0. ``on_outcome(name, outcome)`` sees each attack's adversarial images (e.g. to keep them).
    """
    report, adversarials = evaluate_in_chunks(
        model, x, y, attacks, eps=eps, norm=norm, chunk_size=max(1, len(y)), device=device, batch_size=batch_size,
        model_info=model_info, dataset=dataset, split=split, indices=indices, keep_adversarials=on_outcome is not None,
        sanity_checks=sanity_checks, progress=progress, distributed=False)
    for row in report.attacks:
        logger.info("%s: %.2f%%", row["name"], 100 * row["accuracy"])
    if on_outcome is not None:
        for name, x_adv in adversarials.items():
            on_outcome(name, AttackOutcome(robust=torch.empty(0, dtype=torch.bool), x_adv=x_adv))
    return report


def _chunk_result(model, x, y, attacks, *, eps, norm, device, batch_size, keep_adversarials, bar=None, label="") -> dict:
    clean = correct_mask(model, x, y, device=device, batch_size=batch_size)
    rows = []
    for attack, robust, out, seconds in run_attacks(
            model, x, y, attacks, clean, eps=eps, norm=norm, device=device, batch_size=batch_size,
            on_start=(lambda a: bar.set_description(f"{label}{a.name}")) if bar is not None else None):
        if bar is not None:
            bar.update(len(y))
        rows.append({"name": attack.name, "robust": robust.tolist(), "seconds": seconds, "extra": out.extra,
                     "x_adv": out.x_adv.cpu() if keep_adversarials and out.x_adv is not None else None})
    return {"clean": clean.tolist(), "attacks": rows}


PATH_KEYS = ("checkpoint", "mixer")  # where a model came from: not what it computes


def chunk_keys(model, x, y, attacks, slices, *, eps, norm, chunk_size, model_info, indices):
    """Each chunk's cache key, by content: the attacks, ε, norm and chunk size, the model's weights and
    description (paths left out), and the chunk's own examples and indices. Raising ``n`` reuses every
    finished chunk; moving a checkpoint file recomputes nothing."""
    info = {k: v for k, v in (model_info or {}).items() if k not in PATH_KEYS}
    base = settings_key({"attacks": [a.settings() for a in attacks], "eps": eps, "norm": norm, "chunk": chunk_size,
                         "model": info}, model=model)

    def key(c: int) -> str:
        sl = slices[c]
        data = (x[sl], y[sl]) + ((indices[sl],) if indices is not None else ())
        return settings_key({"base": base}, data=data)
    return key


def evaluate_in_chunks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list,
    *,
    eps: float,
    norm: str = "Linf",
    chunk_size: int = 500,
    device: str | torch.device = "cpu",
    batch_size: int = 250,
    model_info: dict | None = None,
    dataset: str = "",
    split: str = "test",
    indices: torch.Tensor | None = None,
    cache_dir: str | Path | None = None,
    keep_adversarials: bool = False,
    sanity_checks: bool = True,
    progress: bool = True,
    label: str | None = None,
    distributed: bool = True,
) -> tuple[RobustnessReport, dict | None]:
    """Like :func:`evaluate_robustness`, chunk by chunk, shared by the ranks of an
    initialised process group (every rank must call it with the same arguments).

    The progress bar counts example-attacks (each example under each attack) and names ``label`` (the
    model), the running attack and the rank. Returns ``(report, adversarials)`` on every rank; ``adversarials`` maps attack name to the adversarial
    images of all examples when ``keep_adversarials`` (gathered to every rank), else None.
    ``distributed=False`` runs every chunk in this process even under ``torchrun``.
    """
    check_evaluation_inputs(model, x, y, device)
    slices = chunk_slices(len(y), chunk_size)
    rank, world = rank_and_world() if distributed else (0, 1)
    model.eval()
    t0 = time.perf_counter()
    store = None
    if cache_dir is not None:
        store = ChunkStore(cache_dir, chunk_keys(model, x, y, attacks, slices, eps=eps, norm=norm, chunk_size=chunk_size,
                                                 model_info=model_info, indices=indices))
    prefix = (f"{label}: " if label else "") + (f"rank {rank}: " if world > 1 else "")
    n_mine = sum(slices[c].stop - slices[c].start for c in range(rank, len(slices), world))
    bar = tqdm(total=n_mine * len(attacks), desc=prefix + "attacks", unit="ex", disable=not progress)

    def compute(c: int, sl: slice) -> dict:
        return _chunk_result(model, x[sl], y[sl], attacks, eps=eps, norm=norm, device=device, batch_size=batch_size,
                             keep_adversarials=keep_adversarials, bar=bar, label=prefix)

    chunks = run_chunks(slices, compute, store=store, read_cache=not keep_adversarials,
                        encode=lambda res: {**res, "attacks": [{k: v for k, v in a.items() if k != "x_adv"}
                                                               for a in res["attacks"]]},
                        on_cached=lambda c, sl: bar.update((sl.stop - sl.start) * len(attacks)),
                        what=f"chunks ({len(y)} examples in chunks of {chunk_size})", local=not distributed)
    bar.close()
    clean = torch.tensor([v for ch in chunks for v in ch["clean"]], dtype=torch.bool)
    worst = clean.clone()
    rows = []
    adversarials = {} if keep_adversarials else None
    for i, attack in enumerate(attacks):
        robust = torch.tensor([v for ch in chunks for v in ch["attacks"][i]["robust"]], dtype=torch.bool)
        worst &= robust
        row = {**attack.settings(), "accuracy": float(robust.float().mean()),
               "seconds": round(sum(ch["attacks"][i]["seconds"] for ch in chunks), 2)}
        row.update(_merge_extras([ch["attacks"][i]["extra"] for ch in chunks], [len(ch["clean"]) for ch in chunks]))
        rows.append(row)
        if keep_adversarials:
            adversarials[attack.name] = torch.cat([ch["attacks"][i]["x_adv"] for ch in chunks])
    report = assemble_report(model, x, y, rows, clean, worst, eps=eps, norm=norm, device=device, batch_size=batch_size,
                             model_info=model_info, dataset=dataset, split=split, indices=indices,
                             sanity_checks=sanity_checks, seconds=time.perf_counter() - t0,
                             environment_extra={"world_size": world, "chunk_size": chunk_size})
    return report, adversarials


def _merge_extras(extras: list[dict], sizes: list[int]) -> dict:
    """AutoAttack's per-chunk extras: accuracies after each sub-attack weighted by chunk size, warnings once."""
    out: dict = {}
    if not extras or not extras[0]:
        return out
    total = sum(sizes)
    after = [e.get("after_each_subattack") for e in extras]
    if all(a is not None for a in after) and after:
        names = list(after[0])
        out["after_each_subattack"] = {k: sum(a.get(k, 0.0) * s for a, s in zip(after, sizes)) / total for k in names}
    seen: list = []
    for e in extras:
        for w in e.get("warnings", []):
            if w not in seen:
                seen.append(w)
    out["warnings"] = seen
    for k, v in extras[0].items():
        if k not in ("after_each_subattack", "warnings"):
            out[k] = v
    return out
