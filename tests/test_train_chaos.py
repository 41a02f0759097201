"""Chaos: a real training killed with SIGKILL at 20 seeded random moments, resumed after each, ends bit
for bit where an uninterrupted run ends; between kills every checkpoint present loads and is finite and
metrics.csv agrees with last.pt. Then the same with two gloo processes, killing one of them.

The moments: named points inside the checkpoint writes (BNNKIT_TEST_KILL_AT: a temporary file complete
but not yet renamed; after best.pt, after last.pt), random instants after a checkpoint appeared (batches
lengthened by BNNKIT_TEST_BATCH_SLEEP, so an instant lands in a batch, its sleep or the next write), and
random instants during start-up and resume.

Speed: a fresh `python -m bnnkit` spends seconds importing torch before its first batch, 40 times over.
The runs are forked instead from one server process that imported bnnkit once and has run nothing yet
(one thread, so fork is safe); each child runs the real command line, bnnkit.cli.main. The two-process
runs are forked the same way with the environment torchrun gives its workers (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and gloo; test_train_distributed.py launches torchrun itself.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests._train_fixtures import CIFAR, PYTHON, ROOT, env

SERVER = r"""
import json, os, sys, time
import torch, torch._inductor  # what --deterministic imports on first use
import matplotlib.backends.backend_agg, matplotlib.figure
import bnnkit.cli, bnnkit.data, bnnkit.figures, bnnkit.train
assert len(os.listdir("/proc/self/task")) == 1  # fork copies one thread only
print("ready", flush=True)
children = set()
for line in sys.stdin:
    job = json.loads(line)
    if "wait" in job:  # reap a child, SIGKILLing it if it outlives the timeout
        pid, end, status = job["wait"], time.time() + job["timeout"], None
        children.discard(pid)
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.time() > end:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                status = "hung"
            else:
                time.sleep(0.01)
        print(json.dumps(status), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        os.environ.update(job["env"])
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 1
        try:
            code = bnnkit.cli.main(job["argv"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    children.add(pid)
    print(pid, flush=True)
for pid in children:  # a failed test's children that were never waited for
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"""


class Server:
    """The fork server: run(argv, env) starts a child and returns its pid; wait(pid) its exit status."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.n = logs, 0
        self.proc = subprocess.Popen([PYTHON, "-c", SERVER], cwd=ROOT, env=env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def _ask(self, job: dict) -> object:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def run(self, argv: list, **extra: str) -> tuple[int, Path]:
        self.n += 1
        log = self.logs / f"run{self.n}.txt"
        return self._ask({"argv": [str(a) for a in argv], "env": extra, "log": str(log)}), log

    def wait(self, pid: int, timeout: float = 120) -> object:
        return self._ask({"wait": pid, "timeout": timeout})

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("chaos_logs"))
    try:
        yield s
    finally:
        s.close()


SLEEP = 0.1  # BNNKIT_TEST_BATCH_SLEEP: each batch lasts at least this long
# 128 images in batches of 16: 8 batches an epoch, 3 epochs; with --checkpoint_minutes 0.0001 every batch checkpoints
RUN = ["train", "--method", "siman", "--model", "resnet20_1w1a", "--data_path", CIFAR, "--subset", "128",
       "--val_subset", "64", "-b", "16", "-bt", "64", "--epochs", "3", "--warm_up", "--seed", "11", "--workers", "1",
       "--threads", "1", "--deterministic", "--set", "tensorboard=false", "--set", "figures=false"]
BATCHES, EPOCHS = 8, 3


def position(run_dir: Path) -> tuple[int, int]:
    """(epoch, batches done) of the newest checkpoint; an epoch's end counts as BATCHES; (0, 0) if none."""
    best = (0, 0)
    for name in ("last.pt", "best.pt"):
        if (run_dir / name).exists():
            c = torch.load(run_dir / name, map_location="cpu", weights_only=True)
            best = max(best, (c["epoch"], BATCHES if c["batch"] is None else c["batch"]))
    return best


def rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in csv.DictReader(fh)]


def check_consistent(run_dir: Path, ref_rows: list[dict[str, str]], where: str) -> None:
    """Each checkpoint present loads weights_only and is finite; metrics.csv holds the epochs last.pt
    finished (its last row may be missing: last.pt carries it, and --resume writes it back), each row
    as the uninterrupted run wrote it."""
    ckpts = {}
    for name in ("last.pt", "best.pt"):
        if (run_dir / name).exists():
            c = ckpts[name] = torch.load(run_dir / name, map_location="cpu", weights_only=True)
            bad = [k for k, v in c["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
            assert not bad, f"{where}: {name} holds non-finite {bad[:3]}"
            assert math.isfinite(c["best_prec1"]), where
    got = rows(run_dir)
    assert [r["epoch"] for r in got] == [str(e) for e in range(len(got))], f"{where}: epochs {got}"
    assert got == ref_rows[:len(got)], f"{where}: metrics.csv differs from the uninterrupted run's"
    if "last.pt" in ckpts:
        last = ckpts["last.pt"]
        finished = last["epoch"] + 1 if last["batch"] is None else last["epoch"]
        assert len(got) in (finished, finished - 1), f"{where}: {len(got)} rows, last.pt finished {finished} epochs"
        if last["batch"] is None and len(got) == finished:
            kept = last["row"]
            assert {k: "" if kept.get(k) is None else str(kept[k]) for k in got[-1]} == got[-1], where
    if "best.pt" in ckpts and "last.pt" in ckpts:  # best.pt is written first: at most an epoch ahead
        b, l = (ckpts[n]["epoch"] for n in ("best.pt", "last.pt"))
        assert b <= l + 1, where


def wait_for_new(path: Path, before: object, pids: list[int], timeout: float = 90) -> None:
    """Until `path` is replaced (another inode or mtime than `before`) or a child has exited."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            st = path.stat()
            if (st.st_ino, st.st_mtime_ns) != before:
                return
        except FileNotFoundError:
            pass
        if any(not Path(f"/proc/{p}").exists() or _zombie(p) for p in pids):
            return
        time.sleep(0.005)
    raise AssertionError(f"{path} was not written within {timeout}s")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def stamp(path: Path) -> object:
    try:
        st = path.stat()
        return (st.st_ino, st.st_mtime_ns)
    except FileNotFoundError:
        return None


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        x, y = (torch.load(d / name, map_location="cpu", weights_only=True) for d in (a, b))
        assert (x["epoch"], x["batch"], x["best_epoch"]) == (y["epoch"], y["batch"], y["best_epoch"]), name
        assert x["state_dict"].keys() == y["state_dict"].keys()
        for k in x["state_dict"]:
            assert torch.equal(x["state_dict"][k], y["state_dict"][k]), f"{name}: {k}"
        for i, s in x["optimizer"]["state"].items():
            assert all(torch.equal(v, y["optimizer"]["state"][i][n]) for n, v in s.items()), f"{name}: optimizer {i}"
    assert rows(a) == rows(b)
    assert not list(b.glob(".*.tmp"))


def test_twenty_sigkills_resume_bit_exact(tmp_path, server):
    pid, log = server.run([*RUN, "--results_dir", tmp_path, "--save", "straight"])
    assert server.wait(pid) == 0, log.read_text()[-3000:]
    ref = tmp_path / "straight"
    ref_rows = rows(ref)
    improves = [float(r["val_top1"]) > max([0.0] + [float(p["val_top1"]) for p in ref_rows[:i]])
                for i, r in enumerate(ref_rows)]

    run_dir = tmp_path / "chaos"
    rng = random.Random(26)
    kinds = []
    for k in range(20):
        left = 20 - k  # kills still to come, this one included: never let the run end before them
        epoch, done = position(run_dir)
        if done == BATCHES:
            epoch, done = epoch + 1, 0
        batches_left = (EPOCHS - epoch) * BATCHES - done
        kind = rng.choices(["timed", "early", "written", "end"], weights=[8, 4, 4, 4])[0]
        if kind == "end" and (EPOCHS - 1 - epoch) * BATCHES < left - 1:  # it runs to the epoch's end
            kind = "timed"
        if kind == "timed" and batches_left < 3:  # it runs a batch or two (and must not see the run's end)
            kind = "written"
        extra = {"BNNKIT_TEST_BATCH_SLEEP": str(SLEEP)}
        if kind == "written":  # the next last.pt, mid-epoch or the epoch's
            extra["BNNKIT_TEST_KILL_AT"] = "written:last.pt"
        elif kind == "end":  # epoch's end: best.pt's temporary file, after best.pt, or after last.pt
            points = ["last:", "written:best.pt", "best:"] if improves[epoch] else ["last:"]
            point = rng.choice(points)
            extra["BNNKIT_TEST_KILL_AT"] = point if point.endswith(".pt") else f"{point}{epoch}"
        argv = [*RUN, "--checkpoint_minutes", "0.0001", "--results_dir", tmp_path, "--save", "chaos"]
        before = stamp(run_dir / "last.pt")
        pid, log = server.run(argv + (["--resume"] if k else []), **extra)
        if kind == "early":
            time.sleep(rng.uniform(0.05, 1.5))
        elif kind == "timed":
            wait_for_new(run_dir / "last.pt", before, [pid])
            time.sleep(rng.uniform(0, SLEEP))
        if kind in ("early", "timed"):
            os.kill(pid, signal.SIGKILL)  # our own child, by its id
        status = server.wait(pid)
        assert status == -signal.SIGKILL, f"kill {k} ({kind}, {extra}): exit {status}\n{log.read_text()[-3000:]}"
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
        kinds.append(extra.get("BNNKIT_TEST_KILL_AT", kind))
        check_consistent(run_dir, ref_rows, f"after kill {k} ({kinds[-1]})")
    pid, log = server.run([*RUN, "--results_dir", tmp_path, "--save", "chaos", "--resume"])
    assert server.wait(pid) == 0, log.read_text()[-3000:]
    print("kills:", kinds)
    assert sum(k.startswith(("written", "best", "last")) for k in kinds) >= 5, kinds  # the writing window too
    assert_same_run(ref, run_dir)


def _free_port() -> int:
    with socket.socket() as s:  # a port that is free now, not a random guess
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# 2 processes, 128 images in global batches of 32: 4 batches an epoch per process, 2 epochs
DDP = ["train", "--method", "siman", "--model", "resnet20_1w1a", "--data_path", CIFAR, "--subset", "128",
       "--val_subset", "64", "-b", "32", "-bt", "64", "--epochs", "2", "--seed", "5", "--workers", "1",
       "--threads", "1", "--device", "cpu", "--deterministic", "--set", "tensorboard=false", "--set", "figures=false"]


def ddp_run(server: Server, argv: list, **extra: str) -> tuple[list[int], list[Path]]:
    port = str(_free_port())
    started = [server.run(argv, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra) for r in (0, 1)]
    return [p for p, _ in started], [l for _, l in started]


def test_sigkill_one_of_two_gloo_processes_resume_bit_exact(tmp_path, server):
    pids, logs = ddp_run(server, [*DDP, "--results_dir", tmp_path, "--save", "straight"])
    assert [server.wait(p) for p in pids] == [0, 0], logs[0].read_text()[-3000:]
    ref, run_dir = tmp_path / "straight", tmp_path / "chaos"
    ref_rows = rows(ref)
    rng = random.Random(262)
    argv = [*DDP, "--checkpoint_minutes", "0.0001", "--results_dir", tmp_path, "--save", "chaos"]
    for k in range(3):
        before = stamp(run_dir / "last.pt")
        pids, logs = ddp_run(server, argv + (["--resume"] if k else []), BNNKIT_TEST_BATCH_SLEEP=str(SLEEP))
        wait_for_new(run_dir / "last.pt", before, pids)
        time.sleep(rng.uniform(0, SLEEP))
        victim = rng.choice([0, 1])
        os.kill(pids[victim], signal.SIGKILL)
        # the survivor's next collective fails on the closed connection: it must end, not hang
        status = [server.wait(p, timeout=60) for p in pids]
        assert status[victim] == -signal.SIGKILL and status[1 - victim] not in (0, "hung"), (status, k)
        check_consistent(run_dir, ref_rows, f"after kill {k} (rank {victim})")
    pids, logs = ddp_run(server, [*DDP, "--results_dir", tmp_path, "--save", "chaos", "--resume"])
    assert [server.wait(p) for p in pids] == [0, 0], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    assert_same_run(ref, run_dir)


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (torchrun's agent: its workers)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def _torchrun(argv: list, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "bnnkit", *[str(a) for a in argv]], cwd=ROOT, env={**env(), **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_torchrun_with_one_worker_sigkilled_then_resumed_is_bit_exact(tmp_path):
    """The launcher itself: torchrun's agent sees a worker SIGKILLed mid-run, stops the other and
    fails; `torchrun ... --resume` then ends where an uninterrupted torchrun run ends."""
    ref = _torchrun([*DDP, "--results_dir", tmp_path, "--save", "straight"])
    out, _ = ref.communicate(timeout=400)
    assert ref.returncode == 0, out[-3000:]
    ref_rows, run_dir = rows(tmp_path / "straight"), tmp_path / "chaos"
    argv = [*DDP, "--checkpoint_minutes", "0.0001", "--results_dir", tmp_path, "--save", "chaos"]
    agent = _torchrun(argv, BNNKIT_TEST_BATCH_SLEEP=str(SLEEP))
    try:
        end = time.time() + 300
        while not (run_dir / "last.pt").exists() and agent.poll() is None and time.time() < end:
            time.sleep(0.01)
        workers = _children(agent.pid)
        assert agent.poll() is None and len(workers) == 2, (workers, agent.poll())
        os.kill(random.Random(5).choice(workers), signal.SIGKILL)
        out, _ = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode != 0, out[-3000:]
    check_consistent(run_dir, ref_rows, "after a torchrun worker's SIGKILL")
    resumed = _torchrun([*argv, "--resume"])
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out[-3000:]
    assert_same_run(tmp_path / "straight", run_dir)
