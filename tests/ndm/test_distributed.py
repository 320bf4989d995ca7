"""fit_ndm and collect_activations under torch.distributed: 2 Gloo processes spawned from pytest against one process.

Stated tolerances: with the same seed and global key pool, the 2-process fit has the same partition and merges,
and its rotation and losses equal the 1-process ones within 1e-9 (float64 arithmetic) / 2e-4 (float32), its mean
MI at each check within 1e-9 / 2e-2 (nats): the ranks add partial gradients in another order than one process, which
changes the last bits of each step (in float32 enough to move a few KSG neighbour counts). The distributed
store holds exactly the rows of a 1-process collection, in the same order.

No hang: every collective of the spawned ranks times out after TIMEOUT seconds, a rank that raises or dies ends
the others at once (torch.multiprocessing's join), and the whole spawn is killed after DEADLINE seconds."""

from __future__ import annotations

import datetime
import shutil
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tests.conftest import SMALL
from tests.ndm.test_fit import blocks_data
from tl_tensorsim import load, training
from tl_tensorsim.activation_store import ActivationStore, load_activations
from tl_tensorsim.activations import collect_activations
from tl_tensorsim.adapter import ModelView
from tl_tensorsim.distributed import Collectives, shard_range
from tl_tensorsim.ndm import fit_ndm
from tl_tensorsim.ndm.mutual_info import subspace_mutual_information
from tl_tensorsim.ndm.partition import SubspacePartition
from tl_tensorsim.ndm.trainer import NDMState

WORLD = 2
FIT = dict(unit_size=1, key_pool=64, refresh_every=3, rerank=2, lr=1e-2, max_steps=50, merge_start=20,
           merge_interval=15, batch_size=15, mi_queries=100, mi_keys=301, log_every=10, progress=False)  # fmt: skip
RUNS = {"f64": dict(dtype=torch.float64), "f32": dict(dtype=torch.float32, merge_start=1_000)}
HOOK = "blocks.1.hook_resid_mid"
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
TIMEOUT, DEADLINE = 60, 240  # seconds: per collective (Gloo), for the whole spawned job (a normal run: ~10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(folder):
    view = ModelView.build({**SMALL, "seed": 0}, backend="bridge")
    view.load_state_dict(load_file(str(folder / "weights.safetensors")))
    return view.model.eval()


def _inputs(folder):
    inputs = load_file(str(folder / "inputs.safetensors"))
    return inputs["tokens"], inputs["mask"]


def _worker(rank: int, port: int, folder) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=TIMEOUT))  # fmt: skip
    writes = []  # the folders this rank's training loops wrote
    save = training.save_artifact

    def counted_save(path, *args, **kwargs):
        writes.append(str(path))
        if path.parent.parent.name == "ckpt_resume" and path.name == "step_00000030":
            time.sleep(1.0)  # a slow write of the checkpoint the interrupted run resumes from: rank 1 is at the
            # resume before rank 0 has written it, and must wait for it (once a race that resumed ranks apart)
        return save(path, *args, **kwargs)

    training.save_artifact = counted_save
    try:
        acts = blocks_data(600)
        for name, kw in RUNS.items():
            ckpt = folder / f"ckpt_{name}" if name == "f32" else None
            part = fit_ndm(acts, seed=5, checkpoint_dir=ckpt, checkpoint_every=20, **{**FIT, **kw})
            part.save(folder / f"rank{rank}_{name}")
        # Ctrl-C on both ranks in update 31 (after the checkpoint at 30), then resume=True: the same result
        original = NDMState.batch_loss

        def interrupted(self, step, generator):
            if step == 30:
                raise KeyboardInterrupt
            return original(self, step, generator)

        NDMState.batch_loss = interrupted
        try:
            fit_ndm(acts, seed=5, checkpoint_dir=folder / "ckpt_resume", checkpoint_every=10, **{**FIT, **RUNS["f64"]})
        except KeyboardInterrupt:
            pass
        finally:
            NDMState.batch_loss = original
        resumed = fit_ndm(acts, seed=5, checkpoint_dir=folder / "ckpt_resume", checkpoint_every=10, resume=True,
                          **{**FIT, **RUNS["f64"]})  # fmt: skip
        resumed.save(folder / f"rank{rank}_resumed")
        (folder / f"rank{rank}_writes.txt").write_text("\n".join(writes))
        # a checkpoint folder the ranks do not share: refused on every rank, before any training collective
        if rank == 0:
            shutil.copytree(folder / "ckpt_resume", folder / "own0")
        try:
            fit_ndm(acts, seed=5, checkpoint_dir=folder / f"own{rank}", resume=True, **{**FIT, **RUNS["f64"]})
        except ValueError as exc:
            (folder / f"rank{rank}_unshared.txt").write_text(str(exc))
        mi = subspace_mutual_information(acts, [1, 1, 2], n_queries=50, n_keys=101, seed=3, comm=Collectives())
        save_file({"mi": mi}, str(folder / f"rank{rank}_mi.safetensors"))
        tokens, mask = _inputs(folder)
        store = collect_activations(_model(folder), tokens, HOOK, mask, batch_size=1, out=folder / "store",
                                    progress=False)  # fmt: skip
        assert isinstance(store, ActivationStore) and len(store.parts) == WORLD
        try:
            collect_activations(_model(folder), tokens, HOOK, distributed=True, progress=False)
        except ValueError as exc:
            if rank == 0:
                (folder / "refused_without_folder.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    view = ModelView.build({**SMALL, "seed": 0}, backend="bridge")
    save_file(view.state_dict(), str(folder / "weights.safetensors"))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, SMALL["d_vocab"], (7, 6), generator=g)
    save_file({"tokens": tokens, "mask": torch.rand(7, 6, generator=g) < 0.6}, str(folder / "inputs.safetensors"))
    # fork: the children start with the parent's imports (a spawned child spends ~7 s CPU importing the package)
    job = mp.start_processes(_worker, args=(_free_port(), folder), nprocs=WORLD, join=False, start_method=START_METHOD)
    end = time.monotonic() + DEADLINE
    while not job.join(timeout=1):  # raises (and ends the other ranks) as soon as one rank fails
        if time.monotonic() > end:
            for process in job.processes:
                process.kill()
            pytest.fail(f"the {WORLD} spawned ranks did not finish within {DEADLINE} s; killed")
    return folder


@pytest.mark.parametrize(("name", "atol"), [("f64", 1e-9), ("f32", 1e-6)])
def test_two_processes_fit_like_one(spawned, name, atol):
    acts = blocks_data(600)
    one = fit_ndm(acts, seed=5, **{**FIT, **RUNS[name]})
    two = [load(spawned / f"rank{r}_{name}") for r in range(WORLD)]
    assert isinstance(two[0], SubspacePartition)
    assert torch.equal(two[0].R, two[1].R) and two[0].history == two[1].history  # identical on every rank
    checks = one.history["checks"]
    assert any(c["merged"] for c in checks) == (name == "f64")  # the float64 schedule merged
    assert two[0].sizes == one.sizes and two[0].history["checks"] == [
        {**c, "mean_mi": pytest.approx(c["mean_mi"], abs=atol)} for c in checks
    ]
    torch.testing.assert_close(two[0].R, one.R, rtol=0, atol=atol)
    torch.testing.assert_close(torch.tensor(two[0].history["loss"]), torch.tensor(one.history["loss"]),
                               rtol=0, atol=atol)  # fmt: skip


def test_resume_after_interrupt_on_every_rank(spawned):
    whole = load(spawned / "rank0_f64")
    for r in range(WORLD):
        resumed = load(spawned / f"rank{r}_resumed")
        assert torch.equal(resumed.R, whole.R) and resumed.history == whole.history


def test_only_rank_zero_writes_checkpoints(spawned):
    steps = sorted(p.name for p in (spawned / "ckpt_f32" / "resume").iterdir())
    assert steps == ["step_00000050"]  # the last one kept
    written = (spawned / "rank0_writes.txt").read_text().split()
    assert any("ckpt_f32" in w for w in written) and any("ckpt_resume" in w for w in written)
    assert (spawned / "rank1_writes.txt").read_text() == ""  # rank 1 resumed from rank 0's files, wrote nothing


def test_unshared_checkpoint_folder_refused_on_every_rank(spawned):
    for r in range(WORLD):
        message = (spawned / f"rank{r}_unshared.txt").read_text()
        assert message.startswith("checkpoint_dir: every process must see the same folder")
        assert "rank 0: step 50, rank 1: none" in message


def test_sharded_mutual_information_equals_one_process(spawned):
    acts = blocks_data(600)
    one = subspace_mutual_information(acts, [1, 1, 2], n_queries=50, n_keys=101, seed=3)
    for r in range(WORLD):
        torch.testing.assert_close(load_file(str(spawned / f"rank{r}_mi.safetensors"))["mi"], one, rtol=0, atol=1e-12)


def test_distributed_store_equals_one_process(spawned):
    tokens, mask = _inputs(spawned)
    expected = collect_activations(_model(spawned), tokens, HOOK, mask, batch_size=1, progress=False)
    store = load_activations(spawned / "store")
    assert store.shape == expected.shape and store.dtype == expected.dtype
    assert [p["sequences"] for p in store.manifest["parts"]] == [list(shard_range(7, r, WORLD)) for r in range(WORLD)]
    assert torch.equal(store.tensor(), expected)
    ids = torch.tensor([len(expected) - 1, 0, 3, 3, 5])
    assert torch.equal(store[ids], expected[ids]) and torch.equal(store[2:9], expected[2:9])
    assert torch.equal(store[-1], expected[-1])
    # one process, out=folder: a one-part store with the same rows
    single = collect_activations(_model(spawned), tokens, HOOK, mask, batch_size=1, out=spawned / "one", progress=False)
    assert len(single.parts) == 1 and torch.equal(single.tensor(), expected)


def test_shard_range_covers_in_order():
    for n in (0, 1, 5, 7, 128):
        for w in (1, 2, 3, 8):
            shards = [shard_range(n, r, w) for r in range(w)]
            assert [i for lo, hi in shards for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in shards) - min(hi - lo for lo, hi in shards) <= 1


def test_store_errors(spawned, tmp_path):
    from tl_tensorsim import activations

    assert activations.ActivationStore is ActivationStore and activations.load_activations is load_activations
    assert (spawned / "refused_without_folder.txt").read_text().startswith("out: under torch.distributed (2 processes)")
    with pytest.raises(FileNotFoundError, match="not an activation store"):
        load_activations(tmp_path)
    store = load_activations(spawned / "store")
    with pytest.raises(IndexError, match="rows must lie in"):
        store[torch.tensor([0, len(store)])]
