"""Sample order and DDP sharding: disjoint, complete, equal batch counts, reshuffled per epoch."""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bnnkit.data import DataError, build_loader, read_source
from bnnkit.data._order import batch_sizes, epoch_order, shard_order
from tests._data_helpers import make_cifar_pickles


@pytest.mark.parametrize("n,bs,ws", [(50, 8, 1), (50, 8, 2), (50, 8, 3), (49, 16, 2), (10, 3, 3), (9, 3, 3), (7, 4, 4), (100, 7, 5)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_disjoint_complete_equal_batches(n, bs, ws, drop_last):
    for epoch in (0, 1):
        plans = [shard_order(n, bs, 3, epoch, True, r, ws, drop_last) for r in range(ws)]
        seen = torch.cat([p[0] for p in plans]).tolist()
        assert len(seen) == len(set(seen))  # disjoint
        counts = {len(p[2]) for p in plans}
        assert len(counts) == 1  # every rank runs the same number of steps (DDP would hang otherwise)
        for idx, _, sizes in plans:
            assert sum(sizes) == len(idx) and all(0 < s <= bs for s in sizes)
            assert not drop_last or set(sizes) <= {bs}
        if not drop_last:
            assert sorted(seen) == list(range(n))  # complete: the partial batch is kept
        else:
            assert len(seen) == ws * bs * ((n // ws) // bs)


def test_batch_count_split_keeps_ranks_in_step():
    # 10 samples, 3 ranks, batch 3: shards 4/3/3 -> rank 0 has 2 batches; ranks 1 and 2 split theirs
    assert [batch_sizes(10, 3, r, 3, False) for r in range(3)] == [[3, 1], [2, 1], [2, 1]]


def test_order_is_pure_function_of_seed_and_epoch():
    a, b = epoch_order(1000, 7, 3, True), epoch_order(1000, 7, 3, True)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(1000))
    assert not torch.equal(a, epoch_order(1000, 7, 4, True)) and not torch.equal(a, epoch_order(1000, 8, 3, True))
    assert epoch_order(5, 7, 3, False).tolist() == [0, 1, 2, 3, 4]
    state = torch.get_rng_state()
    epoch_order(10, 1, 1, True)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched


def test_loader_shards_and_lengths(tmp_path):
    make_cifar_pickles(tmp_path, n_train=50)
    ranks = [build_loader("cifar10", tmp_path, "train", 8, rank=r, world_size=2, seed=1) for r in range(2)]
    for loader in ranks:
        assert loader.dataset_size == 50 and loader.num_samples == 25 and len(loader) == 4
    for epoch in (0, 1):
        parts = [set(l.indices_for_epoch(epoch)) for l in ranks]
        assert not parts[0] & parts[1] and parts[0] | parts[1] == set(range(50))
    ranks[0].set_epoch(1)
    labels = torch.cat([y for _, y in ranks[0]])
    src = ranks[0].source
    assert labels.tolist() == src.labels[ranks[0].indices_for_epoch(1)].tolist()
    assert ranks[0].indices_for_epoch(0) != ranks[0].indices_for_epoch(1)
    dropped = build_loader("cifar10", tmp_path, "train", 8, rank=1, world_size=2, drop_last=True)
    assert dropped.num_samples == 24 and len(dropped) == 3
    assert list(dropped.iter_from(3)) == []
    with pytest.raises(DataError, match=r"iter_from\(4\) is outside this epoch's 0..3 batches"):
        dropped.iter_from(4)
    with pytest.raises(DataError, match="rank 2 is outside 0..1"):
        build_loader("cifar10", tmp_path, "train", 8, rank=2, world_size=2)
    with pytest.raises(DataError, match="batch_size must be a positive int"):
        build_loader("cifar10", tmp_path, "train", 0)


def _worker(rank: int, world: int, init: str, root: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        loader = build_loader("cifar10", root, "train", 8, seed=4)  # rank and world size from torch.distributed
        result = {"rank": loader.rank, "world": loader.world_size, "len": len(loader)}
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            labels = [y.tolist() for _, y in loader]
            result[f"e{epoch}"] = loader.indices_for_epoch()
            result[f"labels{epoch}"] = sum(labels, [])
            result[f"steps{epoch}"] = len(labels)
        gathered = [None] * world
        dist.all_gather_object(gathered, result)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(gathered, f)
        dist.barrier()  # leave together: tearing gloo down under a peer that still uses it aborts the peer
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_read_disjoint_complete_shards(tmp_path):
    make_cifar_pickles(tmp_path / "data", n_train=45)
    out = tmp_path / "result.json"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path / "data"), str(out)), nprocs=2, join=True)
    results = json.loads(out.read_text())
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    labels = read_source("cifar10", tmp_path / "data", "train").labels
    for epoch in (0, 1):
        shards = [r[f"e{epoch}"] for r in results]
        assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(45))
        assert results[0][f"steps{epoch}"] == results[1][f"steps{epoch}"] == results[0]["len"] == 3
        for r in results:  # what each process iterated is exactly its shard, in order
            assert r[f"labels{epoch}"] == labels[r[f"e{epoch}"]].tolist()
    assert results[0]["e0"] != results[0]["e1"]
