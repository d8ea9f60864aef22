"""Training of base models: standard (clean) training, PGD adversarial training (Madry et al. 2018),
TRADES (Zhang et al. 2019) and Gaussian data augmentation for randomized smoothing (Cohen et al. 2019),
each optionally with an exponential moving average of the weights.

Stateless schedules (learning rate from the global step, data order and augmentation from a generator
seeded by ``seed`` and the epoch) make a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import data as data_mod
from ..attacks import pgd
from ..config import Config, ModelConfig, TrainConfig
from ..evaluation.accuracy import accuracy, attack_batched
from ..io import fault_point, save_model
from ..models import build
from ..seeding import epoch_seed
from ..speed import Autocast
from ..state import load_training_state, save_training_state
from .averaging import WeightAverage
from .trades import trades_adversarial, trades_loss

logger = logging.getLogger(__name__)

KINDS = ("standard", "adversarial", "noise", "trades")
WARMUP_FRACTION = 0.05


def train_config_for(cfg: Config, kind: str) -> TrainConfig:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {"standard": cfg.train_standard, "adversarial": cfg.train_adversarial, "noise": cfg.train_noise,
            "trades": cfg.train_trades}[kind]


def base_side(kind: str) -> str:
    """Which side of the config's ``bases`` a kind trains: the standard model, or the robust one."""
    return "standard" if kind == "standard" else "robust"


def model_config_for(cfg: Config, kind: str) -> tuple[ModelConfig, bool]:
    """The architecture ``kind`` trains: the ``bases`` side's where it names one (the paper's architectures),
    else ``model``; and whether it came from ``bases``."""
    spec = getattr(cfg.bases, base_side(kind))
    if spec.architecture is not None:
        return ModelConfig(architecture=spec.architecture, args=dict(spec.args)), True
    return cfg.model, False


def arch_args_for(cfg: Config, kind: str, in_channels: int, num_classes: int) -> dict:
    """The architecture's keyword arguments for ``kind``: the config's, with ``width`` scaled by the
    kind's ``width_multiplier`` and ``blocks`` replaced by the kind's own where it names them. An architecture
    from ``bases`` takes its own arguments as written (``num_classes`` added where they lack it)."""
    model_cfg, from_bases = model_config_for(cfg, kind)
    if from_bases:
        return {"num_classes": num_classes, **model_cfg.args}
    tcfg = train_config_for(cfg, kind)
    mult = tcfg.width_multiplier
    if not mult > 0:
        raise ValueError(f"width_multiplier must be > 0, got {mult}")
    args = {"in_channels": in_channels, "num_classes": num_classes, **cfg.model.args}
    if mult != 1.0:
        if "width" not in args:
            raise ValueError(f"width_multiplier {mult} needs a 'width' in model.args ({cfg.model.architecture})")
        args["width"] = max(1, round(args["width"] * mult))
    if tcfg.blocks:
        if "blocks" not in args:
            raise ValueError(f"{kind} training names blocks {list(tcfg.blocks)}, but {cfg.model.architecture} "
                             "takes no 'blocks' argument")
        args["blocks"] = list(tcfg.blocks)
    return args


def checkpoint_name(kind: str, sigma: float | None = None) -> str:
    """File stem of a trained base model: the kind, and for noise training its σ (``noise-sigma0.25``)."""
    return f"noise-sigma{sigma:g}" if kind == "noise" else kind


def _check_sigma(kind: str, sigma: float | None) -> None:
    if kind == "noise" and (sigma is None or not sigma > 0):
        raise ValueError(f"noise training needs sigma > 0 (the Gaussian noise level on the [0, 1] scale), got {sigma}")
    if kind != "noise" and sigma is not None:
        raise ValueError(f"sigma applies to noise training only, not to kind {kind!r}")


def lr_at(step: int, total: int, base_lr: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warm = max(1, int(WARMUP_FRACTION * total))
    if step < warm:
        return base_lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def augment(x: torch.Tensor, generator: torch.Generator, *, shift: int = 2) -> torch.Tensor:
    """Random translations by up to ``shift`` pixels (zero padding) and random horizontal flips."""
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    oy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    out = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out.contiguous()


def random_erase(x: torch.Tensor, generator: torch.Generator, *, p: float, area=(0.02, 0.33),
                 aspect=(0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): with probability ``p`` per image, one rectangle of a random
    share ``area`` of the image and aspect ratio ``aspect`` is filled with uniform noise in [0, 1]."""
    n, _, h, w = x.shape
    hit = torch.rand(n, generator=generator) < p
    share = torch.empty(n).uniform_(*area, generator=generator)
    ratio = torch.exp(torch.empty(n).uniform_(math.log(aspect[0]), math.log(aspect[1]), generator=generator))
    eh = (share * h * w * ratio).sqrt().round().clamp(1, h).long()
    ew = (share * h * w / ratio).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    noise = torch.rand(x.shape, generator=generator)
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
           & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]) & hit[:, None, None])
    return torch.where(box[:, None], noise, x)


def train_base(
    cfg: Config,
    kind: str,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    config_source: str | None = None,
    max_epochs: int | None = None,
    sigma: float | None = None,
) -> tuple[nn.Module, dict]:
    """Train a base model of ``kind`` ("standard", "adversarial", "trades" or "noise") as ``cfg`` says.

    Noise training adds N(0, σ²) to every training image (no clipping), the base network of a
    randomized-smoothing classifier; it needs ``sigma``. Writes ``out_dir/<name>-last`` after every epoch
    (weights, optimiser state, epoch) and ``out_dir/<name>`` at the end, both atomically, where name is
    the kind (``noise-sigma<σ>`` for noise training). With ``resume=True`` training continues from
    ``<kind>-last``; its recorded settings must equal this run's. ``max_epochs`` stops early after that
    many epochs in total (to split a long run; the schedule still spans the configured epochs).
    With the kind's ``ema_decay`` set, an exponential moving average of the weights is kept, resumed
    and saved as the final model (the sidecar says ``"weights": "ema"``).
    Returns the trained model (eval mode) and its checkpoint metadata.
    """
    tcfg = train_config_for(cfg, kind)
    _check_sigma(kind, sigma)
    name = checkpoint_name(kind, sigma)
    model_cfg = model_config_for(cfg, kind)[0]
    out_dir = Path(out_dir)
    settings = _settings(cfg, kind) | ({"sigma": float(sigma)} if kind == "noise" else {})
    x_train, y_train = data_mod.load(cfg.data.name, "train", root=cfg.data.root)
    arch_args = arch_args_for(cfg, kind, x_train.shape[1], data_mod.num_classes(cfg.data.name))
    run = _Run.start(cfg, kind, model_cfg.architecture, arch_args, out_dir / f"{name}-last", device=device, sigma=sigma)
    start_epoch, elapsed = 0, 0.0
    saved = load_training_state(run.state_stem, settings, resume=resume, what=f"{kind} training")
    if saved is not None:
        start_epoch, elapsed = _restore(saved, run.model, run.optimizer, device, run.average)
        logger.info("resuming %s training at epoch %d from %s", kind, start_epoch, run.state_stem)
    last_epoch = tcfg.epochs if max_epochs is None else min(tcfg.epochs, max_epochs)
    for epoch in range(start_epoch, last_epoch):
        t0 = time.perf_counter()
        loss = _train_epoch(run, x_train, y_train, epoch, desc=f"{name} epoch {epoch + 1}/{tcfg.epochs}",
                            progress=progress)
        elapsed += time.perf_counter() - t0
        run.model.eval()
        _save_state(run.state_stem, run.model, run.optimizer, epoch + 1, elapsed, settings, arch_args,
                    model_cfg.architecture, run.average)
        logger.info("%s epoch %d done, loss %.4f, %.0f s so far", kind, epoch + 1, loss, elapsed)
    model = run.model.eval() if run.average is None else run.average.model
    if last_epoch < tcfg.epochs:
        return model, {"epochs_done": last_epoch}
    meta = _final_metadata(model, cfg, kind, settings, elapsed, device, progress, config_source, sigma)
    if run.average is not None:
        meta["weights"] = "ema"
    save_model(out_dir / name, model, architecture=model_cfg.architecture, arch_args=arch_args, **meta)
    return model, meta


@dataclass
class _Run:
    """What one training run's steps share."""

    cfg: Config
    tcfg: TrainConfig
    kind: str
    sigma: float | None
    model: nn.Module
    attack_model: nn.Module  # the model the training attack sees (bf16 autocast when amp)
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None
    device: str | torch.device
    state_stem: Path
    last_loss: float = float("nan")

    @classmethod
    def start(cls, cfg: Config, kind: str, architecture: str, arch_args: dict, state_stem: Path, *, device,
              sigma) -> _Run:
        tcfg = train_config_for(cfg, kind)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(tcfg.seed)
            model = build(architecture, **arch_args).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=tcfg.momentum,
                                    weight_decay=tcfg.weight_decay, nesterov=True)
        average = WeightAverage(model, decay=tcfg.ema_decay) if tcfg.ema_decay is not None else None
        # bf16 autocast: the attack sees float32 logits of the autocast network; the update's loss is float32
        attack_model = Autocast(model, torch.device(device).type) if tcfg.amp else model
        return cls(cfg, tcfg, kind, sigma, model, attack_model, optimizer, average, device, state_stem)

    def autocast(self):
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.tcfg.amp)


def _train_epoch(run: _Run, x_train, y_train, epoch: int, *, desc: str, progress: bool) -> float:
    """One epoch in the order drawn from the epoch's generator; returns the running loss."""
    tcfg = run.tcfg
    gen = torch.Generator().manual_seed(epoch_seed(tcfg.seed, epoch))
    perm = torch.randperm(len(x_train), generator=gen)
    steps_per_epoch = math.ceil(len(x_train) / tcfg.batch_size)
    bar = tqdm(range(steps_per_epoch), desc=desc, disable=not progress)
    run_loss = run_acc = 0.0
    for i in bar:
        idx = perm[i * tcfg.batch_size : (i + 1) * tcfg.batch_size]
        yb = y_train[idx].to(run.device)
        xb, x_adv = _training_inputs(run, x_train[idx], yb, gen)
        for group in run.optimizer.param_groups:
            group["lr"] = lr_at(epoch * steps_per_epoch + i, steps_per_epoch * tcfg.epochs, tcfg.lr)
        loss, acc = _update(run, xb, x_adv, yb, where=f"epoch {epoch + 1} step {i + 1}")
        run_loss = 0.95 * run_loss + 0.05 * loss if i else loss
        run_acc = 0.95 * run_acc + 0.05 * acc if i else acc
        if i % 20 == 0:
            bar.set_postfix(loss=f"{run_loss:.3f}", acc=f"{run_acc:.3f}")
    return run_loss


def _training_inputs(run: _Run, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch as the kind trains on it (augmented; PGD-attacked or noised) and, for TRADES, its attacked
    copy; every random draw from the epoch's generator, in this order."""
    tcfg, threat = run.tcfg, run.cfg.threat
    if tcfg.augment:
        xb = augment(xb, gen)
    if tcfg.random_erasing:
        xb = random_erase(xb, gen, p=tcfg.random_erasing)
    xb = xb.to(run.device)
    x_adv = None
    if run.kind == "adversarial":
        run.model.eval()
        xb = pgd(run.attack_model, xb, yb, eps=threat.eps, norm=threat.norm, steps=tcfg.attack_steps,
                 step_size=tcfg.attack_step_size, generator=gen)
    elif run.kind == "noise":
        xb = xb + run.sigma * torch.randn(xb.shape, generator=gen).to(run.device)
    elif run.kind == "trades":
        run.model.eval()
        x_adv = trades_adversarial(run.attack_model, xb, eps=threat.eps, steps=tcfg.attack_steps,
                                   step_size=tcfg.attack_step_size, generator=gen)
    return xb, x_adv


def _update(run: _Run, xb, x_adv, yb, *, where: str) -> tuple[float, float]:
    """One optimiser step (and the weight average's); returns the loss and the batch accuracy. A non-finite
    loss stops the run, naming the step and the last finite loss."""
    model = run.model
    model.train()
    with run.autocast():
        logits = model(xb).float()
        adv_logits = model(x_adv).float() if x_adv is not None else None
    if run.kind == "trades":
        loss = trades_loss(logits, adv_logits, yb, beta=run.tcfg.trades_beta)
    else:
        loss = F.cross_entropy(logits, yb, label_smoothing=run.tcfg.label_smoothing)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"loss became {loss.item()} at {where} (last finite loss {run.last_loss:.4g}); the last good state, "
            f"{run.state_stem}, is intact: lower the learning rate, then --resume")
    run.last_loss = loss.item()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.average is not None:
        run.average.update(model)
    fault_point("train-step")
    return run.last_loss, (logits.argmax(1) == yb).float().mean().item()


def _settings(cfg: Config, kind: str) -> dict:
    """What must match for a resume to be valid."""
    train = dataclasses.asdict(train_config_for(cfg, kind))
    for key, off in (("amp", False), ("blocks", ()), ("label_smoothing", 0.0), ("random_erasing", 0.0)):
        if train[key] == off:  # recorded only when set, so states written before the option existed still resume
            del train[key]
    if "blocks" in train:
        train["blocks"] = list(train["blocks"])  # as its JSON record reads back
    return {
        "kind": kind,
        "data": dataclasses.asdict(cfg.data) | {"root": None},
        "model": dataclasses.asdict(model_config_for(cfg, kind)[0]),
        "threat": dataclasses.asdict(cfg.threat),
        "train": train,
    }


def _save_state(stem, model, optimizer, epoch, elapsed, settings, arch_args, architecture, average=None) -> None:
    parts = {"model": model.state_dict()}
    if average is not None:
        parts["ema"] = average.state_dict()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    parts["optim"] = {f"momentum.{i}": optimizer.state[p]["momentum_buffer"] for i, p in enumerate(params)
                      if optimizer.state.get(p, {}).get("momentum_buffer") is not None}
    save_training_state(stem, parts, {
        "architecture": architecture, "arch_args": arch_args,
        "epoch": epoch, "seconds": elapsed, "settings": settings,
        "ema_updates": average.updates if average is not None else None,
    })


def _restore(saved, model, optimizer, device, average=None) -> tuple[int, float]:
    parts, meta = saved
    model.load_state_dict(parts["model"])
    if average is not None:
        average.load_state_dict({k: v.to(device) for k, v in parts["ema"].items()}, updates=int(meta["ema_updates"]))
    momentum = parts.get("optim", {})
    for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"]):
        if f"momentum.{i}" in momentum:
            optimizer.state[p]["momentum_buffer"] = momentum[f"momentum.{i}"].to(device)
    return int(meta["epoch"]), float(meta.get("seconds", 0.0))


def _final_metadata(model, cfg, kind, settings, elapsed, device, progress, config_source, sigma=None) -> dict:
    x_val, y_val = data_mod.load(cfg.data.name, "val", root=cfg.data.root)
    x_test, y_test = data_mod.load(cfg.data.name, "test", root=cfg.data.root)
    ev = cfg.evaluate
    acc = {
        "val_clean": accuracy(model, x_val, y_val, device=device, batch_size=ev.batch_size),
        "test_clean": accuracy(model, x_test, y_test, device=device, batch_size=ev.batch_size),
    }
    n = min(ev.n, len(y_test))
    common = {"dataset": cfg.data.name, "kind": kind, "settings": settings, "train_seconds": round(elapsed, 1),
              "device": str(device), "config": config_source}
    if kind == "noise":  # its robustness is certified (adasmooth certify), not attacked with l-inf PGD
        gen = torch.Generator().manual_seed(ev.seed)
        noisy = x_test + sigma * torch.randn(x_test.shape, generator=gen)
        acc["test_under_noise_one_draw"] = accuracy(model, noisy, y_test, device=device, batch_size=ev.batch_size)
        return {**common, "sigma": float(sigma), "accuracies": acc}
    x_adv = attack_batched(
        pgd, model, x_test[:n], y_test[:n], device=device, batch_size=ev.batch_size, progress=progress,
        desc="PGD-20 check", eps=cfg.threat.eps, norm=cfg.threat.norm, steps=ev.pgd_steps,
        step_size=ev.pgd_step_size, generator=torch.Generator().manual_seed(ev.seed),
    )
    acc[f"test_pgd{ev.pgd_steps}_first{n}"] = accuracy(model, x_adv, y_test[:n], device=device)
    return {
        "dataset": cfg.data.name,
        "kind": kind,
        "settings": settings,
        "accuracies": acc,
        "attack": {"name": "pgd", "norm": cfg.threat.norm, "eps": cfg.threat.eps, "steps": ev.pgd_steps,
                   "step_size": ev.pgd_step_size, "random_start": True, "n": n, "seed": ev.seed},
        "train_seconds": round(elapsed, 1),
        "device": str(device),
        "config": config_source,
    }
