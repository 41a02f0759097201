"""main: one training stage (the authors' epoch loop, REFERENCE.md §3.1), and multi-stage runs (BiPer's two stages)."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import configure, create_model
from ..models import model_entry
from ..compat import load_reference
from ..errors import BnnkitError, CheckpointError
from ..figures import update_run_figures
from ..methods import get_method, method_of
from . import _checkpoint as ck
from ._config import ConfigError, plain, resolve, run_dir_of, stage_names, stages_of
from ._data import load_data
from ._distributed import Dist, any_flag, max_all, setup, teardown
from ._engine import NonFiniteLossError, evaluate, train_one_epoch
from ._metrics import Meters, flip_ratio, quantization_error, sign_bits
from ._optim import build_optimizer, lr_per_epoch
from ._runlog import RunLock, RunLog, holds_remnants, holds_run
from ._syncbn import convert_sync_bn
from ._teacher import build_teacher, describe_teacher


class RunExistsError(ConfigError):
    """The results folder already holds another run."""


class RunBusyError(ConfigError):
    """Another training is writing into the results folder right now."""


class StoppedError(BnnkitError):
    """SIGTERM or SIGINT: the run wrote a checkpoint at a batch boundary and stops; exit 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def method_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """create_model's method settings from a resolved config (the method's options)."""
    return get_method(cfg["method"]).model_settings(cfg)


def schedule_hparams(cfg: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of the method's schedule from a resolved config (BiPer's tau_min/tau_max)."""
    return get_method(cfg["method"]).schedule_hparams(cfg)


def _resume_checkpoint(cfg: dict[str, Any], run_dir: str) -> tuple[str, dict[str, Any] | None]:
    """(path, checkpoint) of --resume PATH, or of the newer of the run's last.pt and best.pt (None: no
    such file), each file read once: best.pt is written first, so a kill in the writing window can
    leave it an epoch ahead of last.pt (or the only file)."""
    if isinstance(cfg["resume"], str) and cfg["resume"] not in ("", "True", "true"):
        path = cfg["resume"]
        return path, ck.read_checkpoint(path) if os.path.exists(path) else None
    last, best = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
    found = {p: ck.read_checkpoint(p) for p in (last, best) if os.path.exists(p)}
    if not found:
        return last, None
    path = max(found, key=lambda p: _position(found[p]))  # last.pt on a tie (max keeps the first)
    return path, found[path]


# Settings whose change makes a resumed run another run than the one in its folder.
RUN_SETTINGS = ("data_path", "dataset", "epochs", "lr", "batch_size", "batch_size_test", "lr_type", "lr_decay_step",
                "warm_up", "weight_decay", "momentum", "optimizer", "seed", "subset", "val_subset", "augment", "amp",
                "authors_torch", "loss", "teacher", "teacher_weights")


def _changed_settings(had: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """'KEY OLD -> NEW' for each run-altering setting that differs from the checkpoint's config."""
    out = []
    for key in RUN_SETTINGS:
        if key not in had:
            continue
        old, new = had[key], plain({key: cfg.get(key)})[key]
        if isinstance(old, float) or isinstance(new, float):
            same = old is not None and new is not None and float(old) == float(new)
        else:
            same = old == new or str(old) == str(new)
        if not same:
            out.append(f"{key} {old} -> {new}")
    return out


def _position(c: dict[str, Any]) -> tuple[float, float]:
    return (c.get("epoch", -1), math.inf if c.get("batch") is None else c["batch"])


def build_model(cfg: dict[str, Any], run_dir: str, log: RunLog) -> tuple[nn.Module, dict[str, Any] | None]:
    """The model to train and, when resuming, the checkpoint it continues."""
    cls = get_method(cfg["method"])
    if cfg["resume"]:
        path, ckpt = _resume_checkpoint(cfg, run_dir)
        if ckpt is None:
            raise CheckpointError(f"--resume: there is no checkpoint {path} to continue: "
                                  f"drop --resume to start a new run, or pass the run's --results_dir/--save")
        if not ck.is_bnnkit(ckpt):
            raise CheckpointError(f"--resume {path}: not a bnnkit training checkpoint (an authors' file?): "
                                  f"evaluate it with `bnnkit eval`, or start a stage from it with --start_from")
        ck.check_matches(ckpt, path, method=cfg["method"], model=cfg["model"], dataset=cfg["dataset"])
        fixed = [o for o in cls.options if not (o.hparam or o.scheduled or o.inherited)]
        for o in fixed:
            had, want = ckpt["spec"]["settings"].get(o.name), method_settings(cfg).get(o.name)
            if want is not None and had is not None and had != want:
                raise CheckpointError(f"--resume {path} is a checkpoint with {o.name} {had}, this run has {o.name} "
                                      f"{want}: pass the matching --{o.name}")
        changed = _changed_settings(ckpt.get("config") or {}, cfg)
        if changed and not cfg["allow_changed"]:
            raise ConfigError(f"--resume {path}: this command changes {'; '.join(changed)}: give the run's own settings, "
                              f"or pass --allow_changed to continue with the new ones (recorded in log.txt)")
        if changed:
            log.info(f"--allow_changed: resuming with changed settings: {'; '.join(changed)}")
            if any(c.startswith("optimizer ") for c in changed):
                ckpt = {**ckpt, "optimizer": None}  # another optimizer's state does not fit: start it afresh
        log.info(f"resuming {ck.describe(ckpt['spec'])} from {path} (epoch {ckpt['epoch']}, batch {ckpt['batch']})")
        return ck.model_from_checkpoint(ckpt, path), {**ckpt, "resumed_from": path}
    settings = method_settings(cfg)
    if not cfg["start_from"]:
        if cls(family_of_cfg(cfg), **settings).starts_from_checkpoint():
            hint = "".join(f" (the authors' --{a})" for a, k in cls.aliases.items() if k == "start_from")
            raise ConfigError(f"{cls(family_of_cfg(cfg), **settings).describe()} starts from an earlier stage's "
                              f"checkpoint: pass --start_from PATH{hint} (or run the multi-stage recipe, which does it for you)")
        return create_model(cfg["model"], method=cfg["method"], dataset=cfg["dataset"], **settings), None
    path = cfg["start_from"]
    src = ck.read_checkpoint(path)
    inherited = [o for o in cls.options if o.inherited]
    if ck.is_bnnkit(src):
        ck.check_matches(src, path, method=cfg["method"], model=cfg["model"], dataset=cfg["dataset"])
        for o in inherited:
            had = src["spec"]["settings"].get(o.name)
            if o.name in cfg["explicit"] and had is not None and o.setting(cfg[o.name]) != had:
                raise ConfigError(f"--{o.name} {cfg[o.name]} contradicts the checkpoint's {o.label or o.name} {had}: "
                                  f"drop --{o.name} (a stage that starts from a checkpoint takes it from there)")
        overrides = {k: v for k, v in settings.items()
                     if k in cfg["explicit"] and k not in {o.name for o in inherited}}
        model = ck.model_from_checkpoint(src, path, **overrides)
    else:  # an authors' checkpoint records none of its settings
        missing = [o.name for o in inherited if o.name not in cfg["explicit"]]
        if missing:
            raise ConfigError(f"{path} is an authors' checkpoint, which does not record its {missing[0]}: pass --{missing[0]}")
        model = load_reference(src, cfg["method"], cfg["model"], dataset=cfg["dataset"], **settings)
    for o in inherited:
        cfg[o.name] = model.bnnkit_spec["settings"][o.name]
    _stage_start(model, src["spec"]["settings"] if ck.is_bnnkit(src) else None, cfg)
    log.info(f"{method_of(model).describe()} starts from {path}"
             + "".join(f" with {o.name} {cfg[o.name]}" for o in inherited))
    return model, None


def _stage_start(model: nn.Module, source_settings: dict[str, Any] | None, cfg: dict[str, Any]) -> None:
    """The method's hand-over hook, given what it accepts of the start checkpoint's settings and
    this stage's schedule hyper-parameters (ReActNet's carry_weights)."""
    method_of(model).on_stage_start(model, source_settings=source_settings, **schedule_hparams(cfg))


def family_of_cfg(cfg: dict[str, Any]) -> str:
    return model_entry(cfg["model"], cfg["dataset"]).family


def train_stage(cfg: dict[str, Any], run_dir: str | None = None) -> dict[str, Any]:
    """Train one stage as configured; returns the summary (best epoch, top-1, paths)."""
    run_dir = run_dir or run_dir_of(cfg)
    if not cfg["data_path"]:
        raise ConfigError("no dataset given: pass --data_path DIR (or CIFAR's .tar.gz)")
    d = setup(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True)
        if d.device.type == "cuda":
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    if cfg["amp"] == "fp16" and d.device.type != "cuda":
        raise ConfigError("--amp fp16 needs a GPU: use --amp bf16 on CPU")
    lock = RunLock(run_dir) if d.main else None
    if any_flag(lock is not None and not lock.acquire(), d.device):
        raise RunBusyError(f"results folder {run_dir} is in use by another training right now: "
                           f"wait for it to end, or pass a new --save NAME (or --results_dir)")
    try:
        return _locked_stage(cfg, run_dir, d, any_flag(lock is not None and lock.found_earlier, d.device))
    finally:
        if lock is not None:
            lock.release()


def _locked_stage(cfg: dict[str, Any], run_dir: str, d: Dist, earlier_lock: bool = False) -> dict[str, Any]:
    notes = []
    # every process looks before any writes (the all-reduce in any_flag is also a barrier)
    if any_flag(holds_run(run_dir) and not cfg["resume"], d.device):
        raise RunExistsError(f"results folder {run_dir} already holds a run: pass --resume to continue it, "
                             f"or a new --save NAME (or --results_dir) for a new run")
    remnants = (holds_remnants(run_dir) or earlier_lock) and not holds_run(run_dir)
    if remnants and cfg["resume"] in (True, "True", "true", ""):
        cfg["resume"] = False  # a rerun and --resume agree: nothing to continue, so start again
    if remnants and not cfg["resume"]:
        notes.append(f"{run_dir} holds no checkpoint (the run stopped before its first one): starting it again")
        if d.main:
            for name in ("metrics.csv", "config.yaml"):
                if os.path.exists(os.path.join(run_dir, name)):
                    os.unlink(os.path.join(run_dir, name))
    if d.main and os.path.isdir(run_dir):  # a killed write's leftovers (we hold the folder's lock)
        for e in os.scandir(run_dir):
            if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file():
                os.unlink(e.path)
    seed_everything(cfg["seed"])
    train_loader, val_loader = load_data(cfg, d)  # data and checkpoint errors come before any file is written
    early = RunLog(None, quiet=not d.main)
    for n in notes:
        early.info(n)
    try:
        model, ckpt = build_model(cfg, run_dir, early)
    finally:
        early.close()
    log = RunLog(run_dir if d.main else None, tensorboard=cfg["tensorboard"], quiet=not d.main)
    log.replay(early)
    try:
        return _train(cfg, run_dir, d, train_loader, val_loader, log, model, ckpt)
    except BnnkitError as exc:
        log.to_file(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        raise
    finally:
        log.close()


def _train(cfg: dict[str, Any], run_dir: str, d: Dist, train_loader: Any, val_loader: Any, log: RunLog,
           model: nn.Module, ckpt: dict[str, Any] | None) -> dict[str, Any]:
    bare = model.to(d.device)
    method = method_of(bare)
    if not ckpt and d.main:
        log.write_config(plain({**cfg, "run_dir": run_dir}))
    log.debug(str(bare))
    log.info(f"{ck.describe(bare.bnnkit_spec)}: {sum(p.numel() for p in bare.parameters())} parameters, "
             f"{d.world_size} process(es) on {d.device.type}, {train_loader.num_samples} training images per process")
    if cfg["sync_bn"]:  # one process: the same float64 statistics, so results match N processes closely
        bare = convert_sync_bn(bare, d.device, d.enabled)
    net: nn.Module = bare
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(bare, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    optimizer = build_optimizer(bare, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg["amp"] == "fp16" else None
    criterion = nn.CrossEntropyLoss()
    teacher = build_teacher(cfg, bare.bnnkit_spec["num_classes"], d.device)
    if teacher is not None:
        log.info(f"loss {cfg['loss']}: distilling from {describe_teacher(cfg)}, in eval mode without gradients")
    elif cfg.get("teacher"):  # a recipe's teacher with --loss ce: say that it is not used
        log.info(f"--teacher {cfg['teacher']} is not used: --loss ce trains on the labels alone "
                    f"(pass --loss kd or ce+kd to distil from it)")
    epochs = cfg["epochs"]
    start_epoch = method.lr_start_epoch()  # BiPer's stage 2 starts at epoch 1 (quirk Q14)
    lrs = lr_per_epoch(cfg["lr"], epochs, warm_up=cfg["warm_up"], start_epoch=start_epoch, lr_type=cfg["lr_type"],
                       lr_decay_step=cfg["lr_decay_step"], authors_torch=cfg["authors_torch"],
                       scheduler_last_epoch=method.scheduler_last_epoch(cfg["warm_up"]),
                       steps_first=method.lr_steps_first)
    hp = schedule_hparams(cfg)
    best = {"top1": 0.0, "epoch": None, "loss": None}
    first, start_batch, meters, flip_ref = start_epoch + 1, 0, None, None
    last, best_path = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
    if ckpt:
        if d.main and ckpt.get("resumed_from") == best_path:
            # best.pt is ahead of last.pt (a kill between the two writes): make last.pt the run's newest
            # state again before the row is written back, or metrics.csv would hold an epoch that
            # last.pt has not finished until the next checkpoint (and a stage starting from last.pt
            # would take the older file)
            ck.atomic_copy(best_path, last)
        if ckpt["optimizer"] is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        best = {"top1": ckpt["best_prec1"], "epoch": ckpt["best_epoch"], "loss": ckpt["best_loss"]}
        if ckpt["batch"] is None:
            first = ckpt["epoch"] + 1
        else:
            first, start_batch = ckpt["epoch"], ckpt["batch"]
            meters = Meters(ckpt["meters"]) if d.main else Meters(kd=teacher is not None)
            flip_ref = ckpt.get("flip_ref") or None
        ck.set_rng_state(ckpt["rng"])
        if d.main and ckpt["batch"] is None and ckpt.get("row"):
            log.repair_row(ckpt["row"])
        if first >= epochs:
            log.info(f"{run_dir}: all {epochs} epochs are done; nothing to resume")
            return _summary(cfg, run_dir, best)
    kill_at = os.environ.get("BNNKIT_DEBUG_KILL_AT")  # "epoch:batch": SIGKILL self there (crash-safety tests)
    started = time.time()
    slow = float(os.environ.get("BNNKIT_TEST_BATCH_SLEEP") or 0)  # tests: room to signal a run mid-epoch
    stop: list[int] = []  # the signal that asked to stop; acted on at the next batch boundary
    every_s = cfg["checkpoint_minutes"] * 60
    saved_at = [time.time()]  # when this process last wrote (or, for ranks > 0, took part in) a checkpoint

    def stopped(epoch: int, batch: int | None) -> StoppedError:
        name = signal.Signals(stop[0]).name
        where = f"epoch {epoch}" + ("" if batch is None else f", batch {batch}")
        return StoppedError(f"stopped by {name} after {where}, checkpoint {last} written; continue with the same "
                            f"command and --resume", stop[0])

    def on_signal(signum: int, _frame: Any) -> None:
        stop.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)

    def state(epoch: int, batch: int | None, sums: dict[str, float] | None, ref: Any,
              row: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"format": ck.FORMAT, "version": 1, "spec": dict(bare_spec()), "state_dict": _bare_state(bare),
                "epoch": epoch, "batch": batch, "optimizer": optimizer.state_dict(),
                "scheduler": {"type": cfg["lr_type"], "lrs": lrs, "start_epoch": start_epoch},
                "scaler": scaler.state_dict() if scaler is not None else {},
                "rng": ck.rng_state(), "best_prec1": best["top1"], "best_epoch": best["epoch"],
                "best_loss": best["loss"], "finished": batch is None and epoch == epochs - 1,
                "config": plain(cfg), "meters": sums or {}, "flip_ref": ref or {}, "row": row or {}}

    def bare_spec() -> dict[str, Any]:
        spec = getattr(bare, "bnnkit_spec", None) or getattr(model, "bnnkit_spec")
        return {**spec, "settings": dict(spec["settings"])}

    try:
        for epoch in range(first, epochs):
            t0 = time.time()
            lr = lrs[epoch]
            for g in optimizer.param_groups:
                g["lr"] = lr
            sched = method.schedule(epoch, epochs, **hp)
            if sched:
                configure(bare, **sched)
                model.bnnkit_spec["settings"].update(sched)
            train_loader.set_epoch(epoch)
            if cfg["log_samples"]:
                _log_samples(run_dir, d, epoch, train_loader)
            if flip_ref is None or start_batch == 0:
                flip_ref = sign_bits(bare)
            log.info(f"epoch {epoch}: lr {lr:.6g}" + "".join(f", {k} {v:.6g}" for k, v in sched.items()))

            def on_batch_end(i: int, m: Meters, epoch: int = epoch, ref: Any = flip_ref) -> None:
                # Whether to stop and whether a timed checkpoint is due must be one decision for all
                # processes: each rank's clock says something slightly different, and a rank that
                # checkpoints alone waits in its reductions and barrier for peers that never come
                # (a deadlock). The maximum over ranks of the signal flag and the elapsed time is the
                # same number everywhere, in the one all-reduce the signal check already cost.
                signalled, elapsed = max_all([1.0 if stop else 0.0, time.time() - saved_at[0]], d.device)
                inside = i < len(train_loader)  # the last batch's checkpoint is the epoch's own
                halt = signalled > 0 and inside
                timed = every_s > 0 and elapsed >= every_s
                counted = cfg["checkpoint_every"] and i % cfg["checkpoint_every"] == 0
                if inside and (halt or timed or counted):
                    sums = m.reduce(d.device).sums
                    _check_finite(bare, None, f"epoch {epoch}, batch {i}", last)
                    if d.main:
                        _save(state(epoch, i, sums, ref), last)
                    d.barrier()
                    saved_at[0] = time.time()
                if halt:
                    raise stopped(epoch, i)
                if slow:
                    time.sleep(slow)
                if kill_at == f"{epoch}:{i}":
                    os.kill(os.getpid(), signal.SIGKILL)

            try:
                meters = train_one_epoch(net, criterion, optimizer, train_loader, method=method, bare=bare, epoch=epoch,
                                         device=d.device, start_batch=start_batch, meters=meters, amp=cfg["amp"],
                                         scaler=scaler, log=log if d.main else None, print_freq=cfg["print_freq"],
                                         on_batch_end=on_batch_end, teacher=teacher, loss_mode=cfg["loss"])
            except NonFiniteLossError as exc:
                raise NonFiniteLossError(f"{exc}; stopped, {_kept(last)}: lower --lr or check the data") from None
            train = meters.reduce(d.device).averages()
            start_batch, meters = 0, None
            val = evaluate(bare, criterion, val_loader, method=method, device=d.device, amp=cfg["amp"],
                           log=log if d.main else None, print_freq=cfg["print_freq"])
            if d.enabled:  # SiMaN's eval forward rewrites weights (Q1) from each process's own shard: keep rank 0's
                for t in list(bare.parameters()) + list(bare.buffers()):
                    torch.distributed.broadcast(t.data, 0)
            new_bits = sign_bits(bare)
            row = {"epoch": epoch, "lr": lr, "train_loss": train["loss"], "train_top1": train["top1"],
                   "train_top5": train["top5"], **({"train_kd": train["kd"]} if "kd" in train else {}),
                   "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                   **{k: v for k, v in sched.items() if isinstance(v, (int, float))}}
            qe = quantization_error(bare)
            if qe is not None:  # the method's own quantisation error (BiPer's QE and b)
                row.update(qe=qe["qe"], b=qe["b"])
            row["flip_ratio"] = flip_ratio(flip_ref, new_bits)
            is_best = val["top1"] > best["top1"]
            if is_best:
                best = {"top1": val["top1"], "epoch": epoch, "loss": val["loss"]}
            row["best_top1"] = best["top1"]
            row["epoch_time_s"] = round(time.time() - t0, 3)
            _check_finite(bare, val["loss"], f"epoch {epoch}", last)
            if d.main:
                # best first, then last, then the row (which last.pt carries): a kill between any two
                # leaves last.pt an epoch behind best.pt at most, and resuming redoes that epoch bit
                # for bit and rewrites both; a row lost after last.pt is written back from it
                snapshot = state(epoch, None, None, None, row)
                if is_best:
                    _save(snapshot, best_path)
                    ck.kill_point(f"best:{epoch}")
                _save(snapshot, last)
                ck.kill_point(f"last:{epoch}")
                log.epoch_row(row)
                if cfg["figures"]:
                    update_run_figures(run_dir, _whole_run(cfg, run_dir), log.logger.warning)
            d.barrier()
            saved_at[0] = time.time()
            if any_flag(bool(stop), d.device):
                raise stopped(epoch, None)
            flip_ref = new_bits
            eta = (time.time() - started) / (epoch - first + 1) * (epochs - 1 - epoch)
            log.info(f"epoch {epoch}: train loss {train['loss']:.4f}"
                     + (f" (kd {train['kd']:.4f})" if "kd" in train else "")
                     + f" top1 {train['top1']:.2f} | val loss {val['loss']:.4f} "
                     f"top1 {val['top1']:.2f} top5 {val['top5']:.2f}"
                     + (f" | QE {row['qe']:.4f}" if row.get("qe") is not None else "")
                     + (f" | flips {row['flip_ratio']:.4f}" if row.get("flip_ratio") is not None else "")
                     + f" | {row['epoch_time_s']:.1f}s, eta {eta:.0f}s")
        return _summary(cfg, run_dir, best, log)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _save(obj: dict[str, Any], path: str) -> None:
    """ck.atomic_save, with a full disk as one line: the temporary file is gone and the previous
    checkpoint is untouched (the rename never happened), so the run can go on from it."""
    try:
        ck.atomic_save(obj, path)
    except Exception as exc:
        if ck.disk_full(exc):
            raise CheckpointError(f"no space left on device writing {path}; free space or pass another "
                                  f"--results_dir") from None
        raise


def _kept(last: str) -> str:
    return (f"the last finite checkpoint is {last}" if os.path.exists(last)
            else "no checkpoint was written (none was finite yet)")


def _check_finite(model: nn.Module, val_loss: float | None, where: str, last: str) -> None:
    """A model with a NaN or infinite weight or buffer, or a non-finite validation loss, is never
    written: the optimizer step after the last finite loss can still poison the weights, and huge
    finite weights can still give NaN outputs (REFERENCE.md's runs never diverge; a user's may)."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteLossError(f"the model became non-finite at {where} ({len(bad)} tensors, e.g. {bad[0]}); "
                                 f"stopped, {_kept(last)}: lower --lr or check the data")
    if val_loss is not None and not math.isfinite(val_loss):
        raise NonFiniteLossError(f"the validation loss became {val_loss} at {where}; stopped, {_kept(last)}: "
                                 f"lower --lr or check the data")


def _whole_run(cfg: dict[str, Any], run_dir: str) -> str | None:
    """The multi-stage run this stage's folder belongs to (its parent, the configured run folder), or None."""
    top = run_dir_of(cfg)
    return top if os.path.abspath(os.path.dirname(run_dir)) == os.path.abspath(top) else None


def _bare_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _log_samples(run_dir: str, d: Dist, epoch: int, loader: Any) -> None:
    path = os.path.join(run_dir, f"samples_rank{d.rank}.json")
    data = {}
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
    data[str(epoch)] = loader.indices_for_epoch(epoch)
    os.makedirs(run_dir, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(data, fh)


def _summary(cfg: dict[str, Any], run_dir: str, best: dict[str, Any], log: RunLog | None = None) -> dict[str, Any]:
    out = {"run_dir": run_dir, "best_epoch": None if best["epoch"] is None else best["epoch"] + 1,
           "best_prec1": best["top1"], "best_loss": best["loss"],
           "last": os.path.join(run_dir, "last.pt"), "best": os.path.join(run_dir, "best.pt")}
    if log is not None:
        log.info(f"Best_Epoch {out['best_epoch']}, Best_Prec1 {out['best_prec1']:.2f}, Best_Loss {out['best_loss']}")
    return out


def main(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the configured training: one stage, or BiPer's stage 1 then stage 2 (a recipe with
    `stage1:` and `stage2:` sections). Stage 2 starts from stage 1's best checkpoint, which carries
    the frequency and every other setting. Returns each stage's summary."""
    clean = False
    try:
        out = _run_stages(raw)
        clean = True
        return out
    finally:
        teardown(clean)


def _run_stages(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stage in its own folder under the run's (one stage: the run's folder itself); a later
    stage starts from the previous stage's best.pt (or last.pt, or a path: its `start_from`). A
    finished stage is not rerun when the run is resumed."""
    stages = stages_of(raw)
    if len(stages) == 1:
        return [train_stage(resolve(stages[0]))]
    cfgs = [resolve(s) for s in stages]
    names = stage_names(raw)
    own = [dict(s) for s in raw["stages"]]
    if any("start_from" in c["explicit"] and not any(k in o for k in ("start_from", *get_method(c["method"]).aliases))
           for c, o in zip(cfgs, own)):
        raise ConfigError("a multi-stage run starts each later stage from its previous stage: drop --start_from / "
                          "--load_ckpt_stage1 (or run one stage's recipe alone with it, or set a stage's start_from)")
    top = run_dir_of(cfgs[0])
    if holds_run(top) and not cfgs[0]["resume"]:
        raise RunExistsError(f"results folder {top} already holds a run: pass --resume to continue it, "
                             f"or a new --save NAME (or --results_dir) for a new run")
    out = []
    for i, (cfg, name) in enumerate(zip(cfgs, names)):
        run_dir = os.path.join(top, name)
        if i > 0:
            start = cfg["start_from"] or "best"
            if start in ("best", "last"):
                start = os.path.join(top, names[i - 1], f"{start}.pt")
            cfg["start_from"] = start
        last = os.path.join(run_dir, "last.pt")
        # resume a stage only if it has a checkpoint: best.pt alone counts (a kill after a stage's first
        # best.pt, before its last.pt), or the stage would be refused as a folder that holds a run
        cfg["resume"] = bool(cfg["resume"]) and holds_run(run_dir)
        if cfg["resume"] and os.path.exists(last) and ck.read_checkpoint(last).get("finished") and i < len(cfgs) - 1:
            continue
        out.append(train_stage(cfg, run_dir))
    return out
