"""What a run writes next to its checkpoints: config.yaml, log.txt, metrics.csv and a TensorBoard log.

Only the main process writes. Progress is a tqdm bar with ETA on a terminal, plain lines otherwise.
"""
from __future__ import annotations

import csv
import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator

import yaml

# metrics.csv's first columns; the method's scheduled settings (SiMaN's percent, BiPer's tau), its QE
# and the rest follow in the order the trainer's row gives them, fixed by the file's header.
COLUMNS = ["epoch", "lr", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5"]
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "log.txt", "metrics.csv")


CHECKPOINTS = ("last.pt", "best.pt")
LOCK = ".lock"


def holds_run(folder: str) -> bool:
    """A checkpoint in the folder or in one of its stage folders: a run to resume, never to overwrite.
    A folder a run left before its first checkpoint holds nothing to keep and is started again."""
    if not os.path.isdir(folder):
        return False
    if any(os.path.exists(os.path.join(folder, f)) for f in CHECKPOINTS):
        return True
    return any(e.is_dir() and any(os.path.exists(os.path.join(e.path, f)) for f in CHECKPOINTS)
               for e in os.scandir(folder))


def holds_remnants(folder: str) -> bool:
    """What a run that stopped before its first checkpoint leaves (its config and log)."""
    return os.path.isdir(folder) and any(os.path.exists(os.path.join(folder, f)) for f in RUN_FILES)


class RunLock:
    """An exclusive flock on <folder>/.lock for the whole training: a second training into the same
    folder stops at once. The OS drops the lock when the process dies, SIGKILL included, so a killed
    run never leaves the folder stuck. A folder this lock created and nothing else used is removed."""

    def __init__(self, folder: str) -> None:
        self.folder, self.fd = folder, None
        self.created = not os.path.isdir(folder)
        # an earlier training's lock file: a run started here (one SIGKILLed before its config was
        # written leaves nothing else), so the folder is a run's remnant, not a user's empty folder
        self.found_earlier = os.path.exists(os.path.join(folder, LOCK))

    def acquire(self) -> bool:
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(os.path.join(self.folder, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd  # nothing written into it: a refused or resumed run leaves the folder as it was
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        if self.created and os.listdir(self.folder) == [LOCK]:
            os.unlink(os.path.join(self.folder, LOCK))
            os.rmdir(self.folder)
        os.close(self.fd)
        self.fd = None


class _LogFile(logging.FileHandler):
    """log.txt, best effort: a write that fails (a full disk) drops the line instead of printing
    logging's "--- Logging error ---" traceback; the console has the message anyway."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class RunLog:
    def __init__(self, folder: str | None, *, tensorboard: bool = True, quiet: bool = False) -> None:
        self.folder = folder
        self.history: list[str] = []
        name = f"bnnkit.run.{id(self)}"
        self.logger = logging.getLogger(name)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING if quiet else logging.INFO)
        console.setFormatter(logging.Formatter("%(message)s"))
        self.logger.addHandler(console)
        self.tb = None
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            fh = _LogFile(os.path.join(folder, "log.txt"))
            fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.logger.addHandler(fh)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self.tb = SummaryWriter(os.path.join(folder, "tensorboard"))
                except Exception as exc:  # tensorboard missing or broken: the CSV still has everything
                    self.logger.warning("no TensorBoard log (%s)", exc)

    def info(self, msg: str, *args: Any) -> None:
        self.history.append(msg % args if args else msg)
        self.logger.info(msg, *args)

    def replay(self, earlier: "RunLog") -> None:
        """Write what an earlier console-only log said into this run's log file (not again to the console)."""
        for h in self.logger.handlers:
            if isinstance(h, logging.FileHandler):
                for msg in earlier.history:
                    h.handle(self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, msg, None, None))

    def to_file(self, msg: str) -> None:
        """Into log.txt only: the fatal error, which the command line prints to the console itself."""
        for h in self.logger.handlers:
            if isinstance(h, logging.FileHandler):
                h.handle(self.logger.makeRecord(self.logger.name, logging.ERROR, __file__, 0, msg, None, None))

    def debug(self, msg: str, *args: Any) -> None:
        self.logger.debug(msg, *args)

    def write_config(self, cfg: dict[str, Any]) -> None:
        if self.folder is None:
            return
        with open(os.path.join(self.folder, "config.yaml"), "w") as fh:
            fh.write(f"# resolved bnnkit train configuration, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            yaml.safe_dump(cfg, fh, sort_keys=False)

    def epoch_row(self, row: dict[str, Any]) -> None:
        if self.folder is None:
            return
        path = os.path.join(self.folder, "metrics.csv")
        new = not os.path.exists(path)
        if new:
            columns = list(row)
        else:
            with open(path, newline="") as fh:
                columns = next(csv.reader(fh), None) or list(row)
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
        if self.tb is not None:
            for k in columns[1:]:
                if isinstance(row.get(k), (int, float)):
                    self.tb.add_scalar(k, row[k], row["epoch"])
            self.tb.flush()

    def repair_row(self, row: dict[str, Any]) -> None:
        """Write back the row of the epoch a checkpoint finished if a kill lost it from metrics.csv."""
        if self.folder is None:
            return
        path = os.path.join(self.folder, "metrics.csv")
        if os.path.exists(path):
            with open(path, newline="") as fh:
                if any(r.get("epoch") == str(row["epoch"]) for r in csv.DictReader(fh)):
                    return
        self.epoch_row(row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        for h in list(self.logger.handlers):
            h.close()
            self.logger.removeHandler(h)


def progress(batches: Iterable, total: int, desc: str, log: RunLog, print_freq: int, enabled: bool) -> Iterator:
    """Yield from `batches` with a tqdm bar (terminal) or a plain line every print_freq batches."""
    if not enabled:
        yield from batches
        return
    if sys.stderr.isatty():
        from tqdm import tqdm
        with tqdm(batches, total=total, desc=desc, leave=False, dynamic_ncols=True) as bar:
            yield from bar
        return
    start = time.time()
    for i, item in enumerate(batches, 1):
        yield item
        if i % max(print_freq, 1) == 0 or i == total:
            spent = time.time() - start
            log.debug(f"{desc} [{i}/{total}] {spent:.1f}s, eta {spent / i * (total - i):.1f}s")
