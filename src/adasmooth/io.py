"""Checkpoints as safetensors weights plus a JSON sidecar of metadata; every write is atomic.

A checkpoint ``name`` is the pair ``name.safetensors`` + ``name.json``. Loading never unpickles.

The pair is committed as a unit: the new sidecar (with the new weights' sha256) is written aside as
``.name.json.pending``, then the weights are renamed in, then the pending sidecar. A crash leaves either
the old pair, or the new weights beside a pending sidecar that names them; the next load or save finishes
that commit (or drops a pending sidecar whose weights never arrived). Every load compares the weights'
sha256 with the sidecar's and refuses a mismatch, unless the caller passes ``verify=False``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

try:
    from safetensors import SafetensorError
except ImportError:  # older safetensors
    from safetensors.safetensors_rust import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file
from torch import nn

from ._version import __version__
from .models import build

FORMAT_VERSION = 1
FAULT_ENV = "ADASMOOTH_FAULT_AT"  # fault-injection tests: "<point>:<n>" kills the process at the n-th pass


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match what the caller expects."""


def _publish(tmp: str | os.PathLike, path: Path) -> None:
    """Give a finished temporary file ordinary permissions (mkstemp makes it 0600) and rename it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as JSON; tensors become lists, dataclasses dicts, anything else its str."""
    atomic_write_json(path, json.loads(json.dumps(obj, default=_json_default)))


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


def _paths(stem: str | os.PathLike) -> tuple[Path, Path]:
    stem = Path(stem)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    # append, never replace: a stem may hold a dot of its own (noise-sigma0.5)
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die here (SIGKILL-like, no clean-up) when ``$ADASMOOTH_FAULT_AT`` says ``name:n`` and this is the
    n-th pass: how the fault-injection tests interrupt a save or a training step at a chosen moment."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or spec.rpartition(":")[0] != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(spec.rpartition(":")[2]):
        os._exit(137)


def _pending_path(meta_path: Path) -> Path:
    return meta_path.with_name(f".{meta_path.name}.pending")


def finish_pending_commit(stem: str | os.PathLike) -> None:
    """Complete or drop a save that was interrupted (see the module docstring)."""
    weights_path, meta_path = _paths(stem)
    pending = _pending_path(meta_path)
    if not pending.is_file():
        return
    try:
        digest = json.loads(pending.read_text()).get("sha256")
    except (OSError, json.JSONDecodeError):
        digest = None
    if digest is not None and weights_path.is_file() and file_sha256(weights_path) == digest:
        os.replace(pending, meta_path)  # the weights arrived: finish the commit
    else:
        pending.unlink(missing_ok=True)  # they never did: the old pair stands


def save_tensors(stem: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write ``tensors`` and ``metadata`` as one unit (see the module docstring)."""
    weights_path, meta_path = _paths(stem)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    finish_pending_commit(stem)
    fd, tmp = tempfile.mkstemp(dir=weights_path.parent, prefix=f".{weights_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        meta = {"format_version": FORMAT_VERSION, "adasmooth_version": __version__, **metadata,
                "sha256": file_sha256(tmp)}
        atomic_write_json(_pending_path(meta_path), meta)
        fault_point("save-before-weights")
        _publish(tmp, weights_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fault_point("save-before-sidecar")
    os.replace(_pending_path(meta_path), meta_path)


_verify_by_default = True


@contextlib.contextmanager
def unverified_loading():
    """Within this block, loads skip the sha256 check (the CLI's ``--no-verify``)."""
    global _verify_by_default
    before, _verify_by_default = _verify_by_default, False
    try:
        yield
    finally:
        _verify_by_default = before


def load_tensors(stem: str | os.PathLike, *, verify: bool | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of a checkpoint. With ``verify`` (the default, unless inside
    :func:`unverified_loading`) the weights' sha256 must equal the one the sidecar recorded;
    ``verify=False`` is for a file the user changed on purpose."""
    verify = _verify_by_default if verify is None else verify
    weights_path, meta_path = _paths(stem)
    finish_pending_commit(stem)
    for p in (weights_path, meta_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} not found (a checkpoint is a .safetensors + .json pair)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {meta_path} is not a JSON object")
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint weights {weights_path} are unreadable: {exc}") from None
    recorded = meta.get("sha256")
    if verify and recorded is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != recorded:
            raise CheckpointError(
                f"checkpoint weights {weights_path} do not match their sidecar {meta_path}: sha256 {actual}, "
                f"recorded {recorded}. The file was changed or damaged after it was saved; restore it, or load "
                "it unverified (--no-verify, verify=False) if you changed it on purpose")
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint weights {weights_path} are unreadable: {exc}") from None
    return tensors, meta


def resume_state_exists(stem: str | os.PathLike) -> bool:
    """Whether ``stem`` has any file of a training state: False means a ``--resume`` run starts afresh
    (the same command starts and restarts a long run); half a pair still fails loudly when loaded."""
    return any(p.exists() for p in _paths(stem))


def load_resume_state(stem: str | os.PathLike, settings: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a training state for ``--resume``; refuse one written with other ``settings`` (names the keys)."""
    try:
        tensors, meta = load_tensors(stem)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume: {exc}") from None
    if meta.get("settings") != settings:
        diff = sorted(k for k in settings if meta.get("settings", {}).get(k) != settings[k])
        raise CheckpointError(
            f"cannot resume from {stem}: it was written with other settings (differing: {', '.join(diff)}). "
            f"Use the config and base models it was started with, or start afresh without --resume"
        )
    return tensors, meta


def save_model(stem: str | os.PathLike, model: nn.Module, *, architecture: str, arch_args: dict, **metadata) -> None:
    """Save a registered architecture's weights with what is needed to rebuild it."""
    save_tensors(stem, model.state_dict(), {"architecture": architecture, "arch_args": arch_args, **metadata})


def load_model(
    stem: str | os.PathLike,
    *,
    expect_architecture: str | None = None,
    expect_num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
    verify: bool | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild a model from its checkpoint; returns ``(model in eval mode, metadata)``.

    Raises :class:`CheckpointError` when the weights' sha256 is not the sidecar's (``verify``: see
    :func:`load_tensors`), when the sidecar names another architecture or class count than expected, or
    when the weights do not fit the architecture the sidecar names.
    """
    tensors, meta = load_tensors(stem, verify=verify)
    _, meta_path = _paths(stem)
    arch = meta.get("architecture")
    args = meta.get("arch_args", {})
    if arch is None:
        raise CheckpointError(f"{meta_path} names no 'architecture'")
    if expect_architecture is not None and arch != expect_architecture:
        raise CheckpointError(f"{meta_path} holds a {arch!r} model, expected {expect_architecture!r}")
    n_classes = args.get("num_classes")
    if expect_num_classes is not None and n_classes != expect_num_classes:
        raise CheckpointError(f"{meta_path} holds a model with {n_classes} classes, expected {expect_num_classes}")
    try:
        model = build(arch, **args)
    except ValueError as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from None
    missing, unexpected = _key_mismatch(model.state_dict(), tensors)
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit {arch!r} as described in {meta_path}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit {arch!r} as described in {meta_path}: "
                              f"{state_dict_problem(exc)}") from None
    return model.to(map_location).eval(), meta


def state_dict_problem(exc: Exception) -> str:
    """The telling line of a ``load_state_dict`` error (the first size mismatch), not its header."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return next((ln for ln in lines if "size mismatch" in ln or "Missing key" in ln), lines[0] if lines else repr(exc))


def _key_mismatch(expected: dict, got: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's state (names, shapes, bytes): ties a mixer to the base models it was fit on."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
