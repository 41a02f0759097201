"""bnnkit checkpoints: self-describing, atomic, and loadable with torch.load(weights_only=True).

A checkpoint holds only tensors, dicts, lists, strings, numbers, booleans and None:
  format, version        'bnnkit-checkpoint', 1
  spec                   model.bnnkit_spec: model, method, dataset, family, num_classes and every
                         method setting (BiPer freq, stage, tau; SiMaN percent, sort)
  state_dict             the model's weights and buffers (no DDP `module.` prefix)
  epoch, batch           the epoch being run (0-based) and how many of its batches are done;
                         batch == None means the epoch is finished (validated and logged)
  optimizer, scheduler   optimiser state; the lr table and the scheduler position
  rng                    torch, cuda, numpy and python RNG states, as tensors
  best_prec1, best_epoch, best_loss, finished, config, meters (partial-epoch sums), flip_ref
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import tempfile
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .. import create_model
from ..errors import CheckpointError
from ..methods import get_method

FORMAT = "bnnkit-checkpoint"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a reader (or a
    crash) sees the old file or the new one, never half of one."""
    _atomic_write(path, lambda out: torch.save(obj, out))


def atomic_copy(src: str, path: str) -> None:
    with open(src, "rb") as inp:
        _atomic_write(path, lambda out: shutil.copyfileobj(inp, out))


def _atomic_write(path: str, write: Callable[[Any], object]) -> None:
    """Write through `write(file)` into a temporary file beside `path`, fsync it, rename it over
    `path` and fsync the folder: a reader (or a crash) sees the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        kill_point(f"written:{os.path.basename(path)}")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def disk_full(exc: BaseException) -> bool:
    """Whether a failed write ran out of space (ENOSPC, or EDQUOT: a quota). torch.save reports a
    failed write as a RuntimeError ("unexpected pos ...") whose context holds the OSError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def kill_point(point: str) -> None:
    """SIGKILL this process at a named point of the checkpoint writing (BNNKIT_TEST_KILL_AT, tests only):
    `written:NAME` (NAME's temporary file complete, not yet renamed), `best:E`, `last:E` (after epoch
    E's best.pt or last.pt, before what follows it)."""
    if os.environ.get("BNNKIT_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def read_checkpoint(path: str) -> dict[str, Any]:
    """Any checkpoint file as a dict (weights_only); CheckpointError with the fix if it cannot be read."""
    if os.path.isdir(path):
        for name in ("last.pt", "best.pt"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise CheckpointError(f"{path} is a folder without last.pt or best.pt: pass a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, not a torch file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        if "Unsupported global" in str(exc):
            names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
            raise CheckpointError(f"checkpoint {path} holds pickled code ({names[0] if names else 'a global'}), which bnnkit "
                                  f"never loads since loading it could run anything: use a file of tensors only "
                                  f"(a bnnkit checkpoint, or the model's state_dict saved alone)") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {first}): "
                              f"use an intact file (e.g. best.pt, or rerun the stage)") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a checkpoint dict: pass a checkpoint file")
    if obj.get("format") == FORMAT:
        missing = [k for k in ("spec", "state_dict", "epoch") if k not in obj]
        if missing:
            raise CheckpointError(f"checkpoint {path} is a bnnkit checkpoint without its {missing[0]!r}: the file is "
                                  f"damaged; use an intact one (e.g. best.pt, or rerun the stage)")
    return obj


def is_bnnkit(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("format") == FORMAT


def describe(spec: dict[str, Any]) -> str:
    return f"{get_method(spec['method'])(spec['family'], **spec['settings']).describe()} {spec['model']} ({spec['dataset']})"


def check_matches(ckpt: dict[str, Any], path: str, *, method: str | None = None, model: str | None = None,
                  dataset: str | None = None) -> None:
    spec = ckpt["spec"]
    for key, want in (("method", method), ("model", model), ("dataset", dataset)):
        if want is not None and spec[key] != want:
            raise CheckpointError(f"checkpoint {path} is a {describe(spec)} checkpoint, not {key} {want!r}: "
                                  f"pass the matching --{key} (or the right checkpoint, or a new --save)")


def model_from_checkpoint(ckpt: dict[str, Any], path: str = "checkpoint", **override: Any) -> nn.Module:
    """Rebuild the model a bnnkit checkpoint describes and load its weights strictly."""
    spec = ckpt["spec"]
    settings = {**spec["settings"], **override}
    model = create_model(spec["model"], method=spec["method"], dataset=spec["dataset"],
                         num_classes=spec["num_classes"], **settings)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit {describe(spec)} ({str(exc).splitlines()[0][:160]}): "
                              f"the file is damaged or from another bnnkit version") from None
    return model
