"""train.data: shard formats, the deterministic stream, and how ranks split a global batch."""
import io

import pytest
import torch

from train.data import BatchPlan, SampleStream, TrainBatches, expand_shards, open_shard, shard_len, write_latent_shard
from synthetic import write_synthetic_latents


def test_stream_visits_every_sample_once_per_epoch_and_is_seeded():
    stream = SampleStream([3, 5, 2], seed=1)
    epoch0 = [stream.locate(p) for p in range(10)]
    epoch1 = [stream.locate(p) for p in range(10, 20)]
    everything = sorted((s, r) for s, n in enumerate([3, 5, 2]) for r in range(n))
    assert sorted(epoch0) == everything and sorted(epoch1) == everything
    assert epoch0 != epoch1  # reshuffled each epoch
    assert epoch0 == [SampleStream([3, 5, 2], seed=1).locate(p) for p in range(10)]
    assert epoch0 != [SampleStream([3, 5, 2], seed=2).locate(p) for p in range(10)]


def test_ranks_read_exactly_the_single_process_global_batch():
    single = BatchPlan(global_batch=8, micro_batch=8)
    ranks = [BatchPlan(global_batch=8, micro_batch=2, world_size=2, rank=r) for r in range(2)]
    for step in range(3):
        ours = sorted(p for plan in ranks for m in range(plan.accum) for p in plan.positions(step, m))
        assert ours == list(single.positions(step, 0))
    with pytest.raises(ValueError, match="multiple"):
        BatchPlan(global_batch=10, micro_batch=4, world_size=2).accum


def test_shard_split_gives_each_rank_its_own_shards(tmp_path):
    shards = [tmp_path / f"{i}.tar" for i in range(5)]
    assert BatchPlan(8, 4, 2, 1, split="shards").my_shards(shards) == shards[1::2]


def test_wds_and_safetensors_shards_hold_the_same_samples_and_webdataset_reads_ours(tmp_path):
    z = torch.randn(3, 4, 8, 8)
    for suffix in (".tar", ".safetensors"):
        write_latent_shard(tmp_path / f"a{suffix}", z.half(), ["x", "y", "z"], ["k0", "k1", "k2"], [0, 1, 2])
    tar, st = open_shard(tmp_path / "a.tar"), open_shard(tmp_path / "a.safetensors")
    assert len(tar) == len(st) == shard_len(tmp_path / "a.tar") == 3
    for i in range(3):
        assert torch.equal(tar[i].latent, st[i].latent) and tar[i].latent.dtype == torch.float32
        assert (tar[i].caption, tar[i].label, tar[i].key) == (st[i].caption, st[i].label, st[i].key)
    import webdataset as wds
    rows = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False))
    assert [r["__key__"] for r in rows] == ["k0", "k1", "k2"] and set(rows[0]) >= {"latent.pt", "txt", "cls"}
    loaded = torch.load(io.BytesIO(rows[1]["latent.pt"]), weights_only=True)  # the authors' reader
    assert torch.equal(loaded.float(), z[1].half().float()) and rows[1]["txt"] == b"y"


def test_batches_do_not_depend_on_workers_or_on_where_we_start(tmp_path):
    write_synthetic_latents(tmp_path, n_classes=3, per_class=5, shape=(4, 8, 8), n_shards=3)
    shards = expand_shards(tmp_path)
    plan = BatchPlan(global_batch=4, micro_batch=2)
    it = iter(TrainBatches(shards, plan, seed=0))
    first = [next(it) for _ in range(10)]  # 5 steps x 2 micro-batches, crosses an epoch (15 samples)
    loader = torch.utils.data.DataLoader(TrainBatches(shards, plan, seed=0), batch_size=None, num_workers=2)
    with_workers = [b for b, _ in zip(loader, range(10))]
    late = iter(TrainBatches(shards, plan, seed=0, start_step=3))
    for a, b in zip(first, with_workers):
        assert torch.equal(a.inputs, b.inputs) and list(a.captions) == list(b.captions)
        assert list(a.sources) == list(b.sources) and not a.problems and not b.problems
    for a in first[6:]:
        b = next(late)
        assert torch.equal(a.inputs, b.inputs) and a.captions == b.captions and a.sources == b.sources
