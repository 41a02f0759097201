"""DistributedDataParallel on 2 CPU processes (gloo) launched by torchrun, the same command as one process.

Binary networks amplify rounding: at initialisation a 1e-6 change of the weights moves a BiPer ResNet-20's loss
by ~0.15 (activations near zero flip sign). So "2 processes with SyncBatchNorm equal 1 process with the same
global batch" is checked where it is well defined: over whole runs with lr 0 (sharding, synchronised batch
statistics, running statistics, reduced metrics) and, for the gradients, on one optimiser step from identical
weights (test_one_step_gradients_match)."""
from __future__ import annotations

import json
import subprocess

import torch

from bnnkit.train import read_checkpoint
from tests._train_fixtures import CIFAR, PYTHON, ROOT, cli_subprocess, env

RUN = ["--sync_bn", "--method", "biper", "--model", "resnet20_1w1a", "--data_path", CIFAR, "--subset", "128", "--val_subset", "64",
       "-b", "32", "-bt", "64", "--epochs", "2", "--freq", "20", "--tau", "0.037", "--lr", "0", "--seed", "3",
       "--workers", "1", "--threads", "1", "--device", "cpu", "--log_samples", "--set", "tensorboard=false",
       # The fast loader draws crops per (seed, epoch, rank, batch), so 1 and 2 processes would crop differently;
       # without augmentation both see identical images and batches.
       "--set", "augment=false"]


def torchrun(*argv, nproc=2):
    return subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "bnnkit", "train", *[str(a) for a in argv]], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=400)


def test_two_gloo_processes_shard_the_data_and_sync_bn_matches_one_process(tmp_path):
    two = torchrun(*RUN, "--results_dir", tmp_path, "--save", "ddp")
    assert two.returncode == 0, two.stderr[-3000:]
    one = cli_subprocess("train", *RUN, "--results_dir", tmp_path, "--save", "single")
    assert one.returncode == 0, one.stderr[-3000:]

    ranks = [json.loads((tmp_path / "ddp" / f"samples_rank{r}.json").read_text()) for r in (0, 1)]
    full = json.loads((tmp_path / "single" / "samples_rank0.json").read_text())
    for epoch in ("0", "1"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert len(a) == len(b) == 64 and not set(a) & set(b)  # each process saw a disjoint half
        assert sorted(a + b) == sorted(full[epoch])  # together, the whole epoch

    # one checkpoint, written once; with SyncBatchNorm the result equals one process with the same global batch
    d, s = read_checkpoint(str(tmp_path / "ddp" / "last.pt")), read_checkpoint(str(tmp_path / "single" / "last.pt"))
    assert d["spec"] == s["spec"] and d["epoch"] == s["epoch"] == 1
    for k, v in s["state_dict"].items():
        assert torch.allclose(d["state_dict"][k].float(), v.float(), rtol=1e-4, atol=1e-5), k
    dm = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    sm = (tmp_path / "single" / "metrics.csv").read_text().splitlines()
    assert len(dm) == len(sm) == 3
    for dr, sr in zip(dm[1:], sm[1:]):  # metrics are reduced over both processes
        for x, y in list(zip(dr.split(","), sr.split(",")))[1:8]:
            assert abs(float(x) - float(y)) < 1e-3 * max(1.0, abs(float(y))), (dr, sr)


def _one_step(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist
    import torch.nn.functional as F

    import bnnkit
    from bnnkit.methods import method_of
    from bnnkit.train import build_optimizer
    from bnnkit.train._syncbn import convert_sync_bn

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(3)
    net = bnnkit.create_model("resnet20_1w1a", "biper", "cifar10", freq=20.0, tau=0.037)
    ref = bnnkit.create_model("resnet20_1w1a", "biper", "cifar10", freq=20.0, tau=0.037)
    ref.load_state_dict(net.state_dict())
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    convert_sync_bn(net, torch.device("cpu"))
    convert_sync_bn(ref, torch.device("cpu"), distributed=False)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    cfg = {"weight_decay": 5e-4, "lr": 0.05, "momentum": 0.9, "optimizer": "sgd"}
    opt, ref_opt = build_optimizer(net, cfg), build_optimizer(ref, cfg)
    loss = F.cross_entropy(ddp(x[rank::2]), y[rank::2]) + method_of(net).regularizer(net)  # this process's half
    opt.zero_grad(); loss.backward(); opt.step()
    ref_loss = F.cross_entropy(ref(x), y) + method_of(ref).regularizer(ref)  # the whole batch in one process
    ref_opt.zero_grad(); ref_loss.backward(); ref_opt.step()
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total / 2, "ref_loss": ref_loss.detach(), "net": net.state_dict(), "ref": ref.state_dict(),
                    "grads": {n: p.grad for n, p in net.named_parameters() if p.grad is not None},
                    "ref_grads": {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}}, out)
    dist.barrier()  # leave together: a rank that tears down gloo while its peer still uses it aborts the peer
    dist.destroy_process_group()


def test_one_step_gradients_match(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:  # a port that is free now, not a random guess
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "step.pt"
    mp.spawn(_one_step, args=(port, str(out)), nprocs=2)
    r = torch.load(out, weights_only=True)
    assert torch.allclose(r["loss"], r["ref_loss"], rtol=1e-6)
    # float32 sums over a batch split in two differ in rounding; tiny gradients (alpha: ~1e-6, sums of
    # cancelling terms) are judged against the overall gradient scale
    scale = max(g.abs().max().item() for g in r["ref_grads"].values())
    flat = torch.cat([g.flatten() for g in r["ref_grads"].values()])
    ours = torch.cat([r["grads"][n].flatten() for n in r["ref_grads"]])
    assert (ours - flat).norm() / flat.norm() < 1e-4
    for n, g in r["ref_grads"].items():
        assert torch.allclose(r["grads"][n], g, rtol=1e-3, atol=1e-4 * scale), n
    for k in ("bn1.running_mean", "bn1.running_var"):  # synchronised statistics (deeper layers see rounding-level
        assert torch.allclose(r["net"][k], r["ref"][k], rtol=1e-5, atol=1e-6), k  # sign flips of activations)
    for k in ("layer3.2.bn2.running_var", "bn2.running_var"):
        assert torch.allclose(r["net"][k], r["ref"][k], rtol=1e-3, atol=1e-5), k


def test_two_gloo_processes_distil_from_a_teacher_on_each_shard_as_one_process_does(tmp_path):
    """--loss ce+kd under DDP: each process runs its own frozen teacher on its own shard, and the
    reduced losses (cross-entropy with the distillation term, and the distillation term alone,
    train_kd) equal one process's over the same global batch."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "teacher.pth")
    kd = [*RUN[:RUN.index("--epochs")], "--epochs", "1", *RUN[RUN.index("--epochs") + 2:],
          "--loss", "ce+kd", "--teacher", "resnet18", "--teacher_weights", tmp_path / "teacher.pth"]
    two = torchrun(*kd, "--results_dir", tmp_path, "--save", "ddp")
    assert two.returncode == 0, two.stderr[-3000:]
    one = cli_subprocess("train", *kd, "--results_dir", tmp_path, "--save", "single")
    assert one.returncode == 0, one.stderr[-3000:]
    rows = {}
    for name in ("ddp", "single"):
        header, row = (tmp_path / name / "metrics.csv").read_text().splitlines()
        rows[name] = dict(zip(header.split(","), map(float, row.split(","))))
        assert "distilling from resnet18" in (tmp_path / name / "log.txt").read_text()
    assert rows["single"]["train_kd"] > 0
    for key in ("train_loss", "train_kd", "train_top1", "val_loss"):
        assert abs(rows["ddp"][key] - rows["single"][key]) < 1e-3 * max(1.0, abs(rows["single"][key])), key
