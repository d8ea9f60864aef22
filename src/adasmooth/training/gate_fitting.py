"""Training the mixing network (adaptive smoothing): base models frozen, each clean batch paired with
adversarial copies made against the current composite, loss ``c_bce·BCE(γ, t) + c_ce·CE + c_prod·BCE·CE``
(t = 0 clean, 1 attacked). AdamW, linear warm-up then cosine decay, gradient clipping.

Every random draw of step ``s`` comes from a generator seeded by ``(seed, s)`` (and the piece of the batch,
when ``attack_chunk`` splits it) and the data order of an epoch from ``(seed, epoch)``, so a run resumed from
any checkpoint equals an uninterrupted one.

Under ``torchrun`` the ranks share the attack, which is nearly all of the cost: each rank attacks its pieces
of the global batch, the adversarial pieces are gathered, and every rank takes the same optimiser step on the
whole batch (so the gate's BatchNorm statistics are those of the global batch and the ranks stay identical
without a gradient all-reduce). Only rank 0 writes checkpoints and metrics.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..attacks.adaptive import randomized_attack
from ..attacks.apgd_training import (
    AttackedCopies,
    apgd_training_attack,
    fab_training_copies,
    square_training_copies,
)
from ..config import MixerConfig
from ..distributed import rank_and_world
from ..evaluation.separation import gate_separation
from ..io import CheckpointError, atomic_write_bytes, fault_point, state_fingerprint
from ..mixer import AdaptiveMixedClassifier
from ..seeding import epoch_seed, step_seed
from ..state import chunk_slices, load_training_state, run_chunks, save_training_state
from .gate_loss import mixer_loss, standard_alone_weights, useful_gate_target

logger = logging.getLogger(__name__)


def _lr(step: int, total: int, base: float, warmup_fraction: float) -> float:
    warm = max(1, int(warmup_fraction * total))
    if step < warm:
        return base * (step + 1) / warm
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


_NOT_WEIGHTS = ("tensorboard", "separation_every", "separation_n", "calibration_strategy", "calibration_autoattack",
                "calibration_square_queries", "calibration_robust_scales",
                "calibration_clean")  # settings that do not change the weights
_ADDED_LATER = {"accumulate": 1, "train_split": "train", "gate": "adasmooth", "attack_fab_copies": 0,
                "attack_fab_iters": 20, "gate_target": "attacked",
                "standard_alone_weight": 1.0}  # left out at these values, so that runs saved before the key existed resume


def _trainable(model: AdaptiveMixedClassifier) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def fit_mixer(
    model: AdaptiveMixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: MixerConfig,
    out_dir: str | Path,
    *,
    eps: float,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    max_steps: int | None = None,
    attack: Callable | None = None,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Train ``model``'s gate on ``(x, y)`` (training split). Writes ``out_dir/mixer-last`` every
    ``cfg.checkpoint_every`` steps and at the end, and appends metrics to ``out_dir/metrics.jsonl``.

    ``attack(model, x, y, generator)`` makes the attacked copies (a tensor with one copy per image, or
    :class:`~adasmooth.attacks.apgd_training.AttackedCopies`); default: :func:`default_training_attack`.
    ``max_steps`` stops early (the schedule still spans all epochs). ``held_out`` (validation images and
    labels): every ``cfg.separation_every`` steps the gate's AUROC between them and gate-aware APGD-CE final
    iterates is logged and written to the metrics. Returns a summary dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "mixer-last"
    params = _trainable(model)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x) / (cfg.batch_size * cfg.accumulate))
    total = steps_per_epoch * cfg.epochs
    settings = _resume_settings(model, cfg, eps, len(x))
    step, seconds_before, last = 0, 0.0, {}
    saved = load_training_state(stem, settings, resume=resume, what="mixer training")
    if saved is not None:  # the time and last metrics so far come back too: resuming a finished run keeps its record
        step, seconds_before, last = _restore(saved, model, opt, stem, device)
        logger.info("resuming mixer training at step %d", step)
    attack = attack or default_training_attack(cfg, eps)
    rank, world = rank_and_world()
    main = rank == 0
    chunk = _attack_chunk(cfg, world)
    metrics_path = out_dir / "metrics.jsonl"
    if main:
        _truncate_metrics(metrics_path, step)
    board = _tensorboard(out_dir / "tensorboard", step) if cfg.tensorboard and main else None
    end = total if max_steps is None else min(total, max_steps)
    bar = tqdm(total=end, initial=step, desc="fit mixer", disable=not (progress and main))
    t0 = time.perf_counter()
    try:
        while step < end:
            last = _optimiser_step_on(model, opt, params, cfg, x, y, attack, step=step, steps_per_epoch=steps_per_epoch,
                                      total=total, device=device, pieces=(chunk, rank, world), last=last, stem=stem)
            step += 1
            fault_point("train-step")
            if main:
                _record(last, metrics_path, board)
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", detect=f"{last['detect_acc']:.2f}")
            if main and held_out is not None and cfg.separation_every and step % cfg.separation_every == 0:
                _log_separation(model, held_out, eps=eps, step=step, seed=cfg.seed, path=metrics_path, board=board,
                                device=device)
            if (step % cfg.checkpoint_every == 0 or step == end) and main:
                _save(stem, model, opt, step, settings, seconds=seconds_before + time.perf_counter() - t0, last=last)
    finally:
        bar.close()
        if board is not None:
            board.close()
    model.eval()
    return {"steps": step, "total_steps": total, "seconds": round(seconds_before + time.perf_counter() - t0, 1),
            "last": last}


def _resume_settings(model, cfg: MixerConfig, eps: float, n_train: int) -> dict:
    """What must match for a resume to be valid: the recipe (not the knobs that change no weight), ε, the
    training set's size and both base models' weights."""
    mixer_settings = {k: v for k, v in json.loads(json.dumps(cfg.__dict__)).items()
                      if k not in _NOT_WEIGHTS and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}
    return {"mixer": mixer_settings, "eps": eps, "n_train": n_train,
            "standard": state_fingerprint(model.standard), "robust": state_fingerprint(model.robust)}


def default_training_attack(cfg: MixerConfig, eps: float) -> Callable:
    """``attack(model, x, y, generator)`` as ``cfg`` says: the paper's official-APGD copies (and
    ``attack_square_copies`` official-Square and ``attack_fab_copies`` official-FAB-T copies), or with ``attack_method: pgd`` the older sign-PGD."""
    if cfg.attack_method == "apgd":
        def attack(m, xb, yb, gen):
            copies = apgd_training_attack(
                m, xb, yb, eps=eps, generator=gen, copies=cfg.attack_copies, iters_df=cfg.attack_iters_df,
                max_iters=cfg.attack_max_iters, eps_range=(cfg.attack_eps_low, cfg.attack_eps_high),
                w_max=cfg.attack_w_max)
            parts = [copies]
            if cfg.attack_square_copies:
                parts.append(square_training_copies(m, xb, yb, eps=eps, generator=gen, copies=cfg.attack_square_copies,
                                                    queries=cfg.attack_square_queries))
            if cfg.attack_fab_copies:  # where FAB-T finds no crossing, the row takes the APGD-CE copy's image
                parts.append(fab_training_copies(m, xb, yb, eps=eps, generator=gen, copies=cfg.attack_fab_copies,
                                                 n_iter=cfg.attack_fab_iters, fallback=copies.x[:len(xb)]))
            return AttackedCopies.concatenate(parts) if len(parts) > 1 else copies
        return attack

    def attack(m, xb, yb, gen):
        return randomized_attack(
            m, xb, yb, eps=eps, generator=gen, eps_range=(cfg.attack_eps_low, cfg.attack_eps_high),
            iters_df=cfg.attack_iters_df, max_iters=cfg.attack_max_iters, w_max=cfg.attack_w_max,
            n_targets=cfg.attack_n_targets, untargeted_share=cfg.attack_untargeted_share)
    return attack


def _attack_chunk(cfg: MixerConfig, world: int) -> int:
    if world > 1 and cfg.attack_chunk == 0:
        logger.warning("mixer.attack_chunk is 0: each of the %d ranks attacks batch_size/%d examples as one piece, "
                       "so the result differs from a one-process run; set attack_chunk to make them equal",
                       world, world)
    return cfg.attack_chunk or -(-cfg.batch_size // world)


def _autocast(cfg: MixerConfig, device):
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.amp)


def _training_batch(xb, yb, x_adv, cfg: MixerConfig, device):
    """Clean and attacked inputs side by side, their labels, which are attacked, and the loss weights (with
    several copies per clean image, a clean example weighs ``clean_weight``, by default the number of copies)."""
    copies = x_adv if isinstance(x_adv, AttackedCopies) else None
    x_adv, y_adv = (copies.x, copies.y.to(device)) if copies is not None else (x_adv, yb)
    inputs = torch.cat([xb, x_adv.to(device, xb.dtype)])
    labels = torch.cat([yb, y_adv])
    is_adv = torch.cat([torch.zeros(len(yb)), torch.ones(len(y_adv))]).to(device)
    weights = None
    if copies is not None:
        clean_w = cfg.clean_weight if cfg.clean_weight is not None else len(y_adv) / len(yb)
        weights = torch.cat([torch.full((len(yb),), float(clean_w)), torch.ones(len(y_adv))]).to(device)
    return inputs, labels, is_adv, weights


def _optimiser_step_on(model, opt, params, cfg: MixerConfig, x, y, attack, *, step: int, steps_per_epoch: int,
                       total: int, device, pieces: tuple[int, int, int], last: dict, stem) -> dict:
    """Optimiser step ``step``: its ``cfg.accumulate`` mini-batches of the epoch's seeded order, each attacked
    (seeded by mini-batch; by the step itself without accumulation) and back-propagated; then the update."""
    chunk, rank, world = pieces
    epoch, i = divmod(step, steps_per_epoch)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch)))
    for group in opt.param_groups:
        group["lr"] = _lr(step, total, cfg.lr, cfg.warmup_fraction)
    opt.zero_grad(set_to_none=True)
    parts = []
    for micro, idx, share in _mini_batches(perm, i, cfg):
        xb, yb = x[idx].to(device), y[idx].to(device)
        model.eval()
        with _autocast(cfg, device):
            x_adv = _shared_attack(attack, model, xb, yb, seed=cfg.seed, step=step * cfg.accumulate + micro,
                                   chunk=chunk, rank=rank, world=world)
        parts.append(_gate_backward(model, cfg, xb, yb, x_adv, device=device, step=step + 1, last=last, stem=stem,
                                    share=share))
    return _optimiser_step(opt, params, cfg, parts, step=step + 1)


def _mini_batches(perm: torch.Tensor, i: int, cfg: MixerConfig):
    """``(index, example indices, share of the step's examples)`` of the mini-batches of optimiser step ``i`` of
    an epoch in order ``perm``: ``cfg.accumulate`` of ``cfg.batch_size`` examples (fewer at the epoch's end)."""
    start = i * cfg.batch_size * cfg.accumulate
    step_examples = perm[start : start + cfg.batch_size * cfg.accumulate]
    for micro in range(cfg.accumulate):
        idx = step_examples[micro * cfg.batch_size : (micro + 1) * cfg.batch_size]
        if len(idx):
            yield micro, idx, (1.0 if len(idx) == len(step_examples) else len(idx) / len(step_examples))


def _gate_backward(model, cfg: MixerConfig, xb, yb, x_adv, *, device, step: int, last: dict, stem,
                   share: float = 1.0) -> dict:
    """The loss of one mini-batch (its clean images and their attacked copies), back-propagated with weight
    ``share`` (its part of the optimiser step's examples); returns its metrics. A non-finite loss stops the run,
    naming the step, the last finite loss and the intact checkpoint."""
    model.train()
    inputs, labels, is_adv, weights = _training_batch(xb, yb, x_adv, cfg, device)
    with _autocast(cfg, device):
        g, h, gamma = model.components(inputs)
        log_p = model.mix(g.float(), h.float(), gamma.float())
        target = useful_gate_target(g, h, labels) if cfg.gate_target == "useful" else is_adv
        weights = standard_alone_weights(g, h, labels, is_adv, weights, cfg.standard_alone_weight)
        loss = mixer_loss(log_p, gamma.float(), labels, target, c_bce=cfg.c_bce, c_ce=cfg.c_ce, c_prod=cfg.c_prod,
                          weights=weights)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"mixer loss became {loss.item()} at step {step} (last finite loss {last.get('loss', float('nan')):.4g}); "
            f"training stopped. The last good checkpoint ({stem}, step {_saved_step(stem)}) is intact: lower the "
            f"learning rate or check the data, then continue with --resume")
    (loss * share if share != 1.0 else loss).backward()
    with torch.no_grad():
        detect = ((gamma > 0).float() == target).float().mean()
        alpha = model.alpha_from_gamma(gamma)
    n = len(yb)
    return {"share": share, "loss": loss.item(), "detect_acc": float(detect), "alpha_clean": float(alpha[:n].mean()),
            "alpha_attacked": float(alpha[n:].mean())}


def _optimiser_step(opt, params, cfg: MixerConfig, parts: list[dict], *, step: int) -> dict:
    """Clip the accumulated gradient, step, and return the step's metrics (mini-batch metrics weighted by share)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    if len(parts) == 1:
        merged = {k: v for k, v in parts[0].items() if k != "share"}
    else:
        total = sum(p["share"] for p in parts)
        merged = {k: sum(p["share"] * p[k] for p in parts) / total for k in parts[0] if k != "share"}
    return {"step": step, **{k: merged[k] for k in ("loss", "detect_acc")}, "grad_norm": float(grad_norm),
            **{k: merged[k] for k in ("alpha_clean", "alpha_attacked")}, "lr": opt.param_groups[0]["lr"]}


def _record(last: dict, metrics_path: Path, board) -> None:
    with open(metrics_path, "a") as fh:
        fh.write(json.dumps(last) + "\n")
    if board is not None:
        for key, value in last.items():
            if key != "step":
                board.add_scalar(f"mixer/{key}", value, last["step"])


def _log_separation(model, held_out, *, eps: float, step: int, seed: int, path: Path, board, device) -> None:
    """The gate's held-out AUROC (clean vs gate-aware APGD-CE final iterates) to the log and the metrics."""
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):  # the check must not move the training's random state
        sep = gate_separation(model, held_out[0], held_out[1], eps=eps, seed=seed, device=device)
    model.train(was_training)
    logger.info("step %d: held-out gate AUROC on %d points %s", step, len(held_out[1]),
                ", ".join(f"w={w:g}: {v:.3f}" for w, v in sep.auroc.items()))
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": step, "held_out_auroc": {f"{w:g}": v for w, v in sep.auroc.items()}}) + "\n")
    if board is not None:
        for w, v in sep.auroc.items():
            board.add_scalar(f"mixer/held_out_auroc_w{w:g}", v, step)


def _shared_attack(attack, model, xb, yb, *, seed: int, step: int, chunk: int, rank: int, world: int) -> torch.Tensor:
    """Adversarial copies of the batch, made in pieces of ``chunk`` examples, each with its own generator;
    rank r makes pieces r, r + W, ... and every rank gets all of them back, in order."""
    n_pieces = -(-len(yb) // chunk)
    if n_pieces == 1 and world == 1:
        return attack(model, xb, yb, torch.Generator().manual_seed(step_seed(seed, step)))

    def piece(c: int, sl: slice):
        out = attack(model, xb[sl], yb[sl], torch.Generator().manual_seed(step_seed(seed, step, c)))
        return out.to("cpu") if isinstance(out, AttackedCopies) else out.detach().cpu()

    parts = run_chunks(chunk_slices(len(yb), chunk), piece, strict=False)
    if isinstance(parts[0], AttackedCopies):
        return AttackedCopies.concatenate(parts)
    return torch.cat(parts).to(xb.device)


def _tensorboard(log_dir: Path, step: int):
    """A TensorBoard writer when the ``tensorboard`` package is installed, else None (JSON lines only)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.debug("tensorboard is not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=step or None)


def _saved_step(stem: Path):
    try:
        return json.loads(Path(str(stem) + ".json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return "none yet"


def _save(stem, model, opt, step, settings, *, seconds: float = 0.0, last: dict | None = None) -> None:
    parts = {"model": {k: v for k, v in model.state_dict().items() if not k.startswith(("standard.", "robust."))},
             "optim": {}}
    for i, p in enumerate(_trainable(model)):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                parts["optim"][f"{i}.{key}"] = st[key]
        if "step" in st:
            parts["optim"][f"{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    save_training_state(stem, parts, {"kind": "mixer-state", "step": step, "settings": settings, "seconds": seconds,
                                      "last": last or {}})


def _restore(saved, model, opt, stem, device) -> tuple[int, float, dict]:
    parts, meta = saved
    missing = model.load_state_dict(parts.get("model", {}), strict=False)
    if missing.unexpected_keys:
        raise CheckpointError(f"{stem} does not fit this mixer: unexpected {missing.unexpected_keys[:3]}")
    optim = parts.get("optim", {})
    for i, p in enumerate(_trainable(model)):
        if f"{i}.exp_avg" in optim:
            opt.state[p] = {"exp_avg": optim[f"{i}.exp_avg"].to(device), "exp_avg_sq": optim[f"{i}.exp_avg_sq"].to(device),
                            "step": optim[f"{i}.step"].reshape(()).clone()}
    return int(meta["step"]), float(meta.get("seconds", 0.0)), dict(meta.get("last") or {})


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (left by a run killed after its last checkpoint), and a torn last
    line (a kill while it was written); the file is rewritten atomically."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            logger.warning("dropping a torn line of %s: %.60s", path, ln)
            continue
        if isinstance(rec, dict) and rec.get("step", step + 1) <= step:
            keep.append(ln)
    atomic_write_bytes(path, "".join(ln + "\n" for ln in keep).encode())
