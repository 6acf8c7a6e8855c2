"""What a user feels first: importing the library and the pack without transformers, the text-embedding
cache, and a ReNO loop that does not wait on the device every iteration."""
import gc
import subprocess
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from fixtures import REPO, child_env, tiny_model
from latent_clip import score_latents
from latent_clip.contract import non_finite_items
from latent_clip.reno import optimize_noise
from latent_clip.rewards import latent_alignment
from latent_clip.textcache import TextCache

HEAVY = ("transformers", "open_clip", "timm", "diffusers")


def _loaded_after(code: str) -> list[str]:
    """Which of :data:`HEAVY` a fresh interpreter has imported after running ``code``."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO,
                         env=child_env()).stdout
    return out.split()


def test_importing_the_library_leaves_open_clip_and_transformers_out():
    """Every module a node imports at start, and the public API's names, cost torch alone. (Loading a model
    cannot: LatentCLIP subclasses open_clip's CLIP, whose module imports open_clip.hf_model -> transformers.)"""
    code = ("import latent_clip\n"
            "from latent_clip import (build_classifier, classify, convert, load_model, rank_by_prompt, score_latents,\n"
            "                         Scores, ModelConfig, LatentContractError, CheckpointError)\n"
            "from latent_clip import batch, contract, examples, factory, fields, pixel_clip, reno, rewards, safety\n"
            "from latent_clip import score, verify, zeroshot")
    assert _loaded_after(code) == []


def test_the_model_class_is_still_public_and_imported_when_named():
    loaded = _loaded_after("import latent_clip\nassert 'LatentCLIP' in dir(latent_clip)\n"
                           "from latent_clip import LatentCLIP\nassert LatentCLIP.__module__ == 'latent_clip.model'")
    assert "open_clip" in loaded


def test_the_pack_imports_and_lists_its_nodes_without_open_clip():
    """As ComfyUI loads it (bench/inprocess.py): the pack, then its node list. ComfyUI itself imports
    transformers, so only open_clip can be the pack's."""
    from comfy_harness import COMFY_DIR, require_comfyui
    require_comfyui()
    code = ("import asyncio, pathlib\n"
            "from bench.inprocess import import_comfy, import_pack\n"
            f"import_comfy(pathlib.Path(r'{COMFY_DIR}'))\n"
            "pack = import_pack()\n"
            "nodes = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())\n"
            "assert len(nodes) > 10, nodes")
    assert "open_clip" not in _loaded_after(code)


# -- the text-embedding cache ---------------------------------------------------------------------------------

def _counting(model) -> list[int]:
    """A list that grows by one each time ``model``'s text transformer runs (a forward hook)."""
    runs: list[int] = []
    model.transformer.register_forward_hook(lambda *_: runs.append(1))
    return runs


def test_a_repeated_prompt_is_encoded_once_and_scores_as_before():
    model = tiny_model()
    runs = _counting(model)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.encode_text(model.tokenize(["a red circle"]))  # the token path: never cached
        first = score_latents(model, latents, "a red circle").cosine
        again = score_latents(model, latents, "a red circle").cosine
    assert len(runs) == 2  # the token call, then the first score: the second score hit the cache
    assert torch.equal(first, again)
    assert torch.equal(model.encode_text("a red circle"), expected)


def test_weights_loaded_under_inference_mode_are_cached_too():
    """ComfyUI loads models under ``torch.inference_mode``: their tensors keep no write counter, yet the cache
    must serve them (a KeyError-free first call, then hits)."""
    with torch.inference_mode():
        model = tiny_model()
        runs = _counting(model)
        first = model.encode_text(["a red circle"])
        assert torch.equal(model.encode_text(["a red circle"]), first) and len(runs) == 1
    with torch.no_grad():  # a later node's call, outside inference mode
        assert torch.equal(model.encode_text(["a red circle"]), first) and len(runs) == 1


def test_a_caller_writing_to_its_embedding_does_not_change_the_cache():
    model = tiny_model()
    with torch.no_grad():
        first = model.encode_text(["a", "b"])
        kept = first.clone()
        first.zero_()
        assert torch.equal(model.encode_text(["a", "b"]), kept)


def test_another_text_model_dtype_or_weights_version_misses():
    model = tiny_model()
    runs = _counting(model)
    with torch.no_grad():
        before = model.encode_text(["a red circle", "a blue square"])
        model.encode_text(["a blue square", "a green star"])  # one new text: one encode of it alone
        assert len(runs) == 2
        model.text_projection.mul_(2.0)  # weights changed in place: everything misses
        changed = model.encode_text(["a red circle"], normalize=False)
        assert len(runs) == 3
        model.encode_text(["a red circle"], normalize=True)  # normalize is part of the key
        assert len(runs) == 4
        assert torch.equal(changed, model.encode_text(model.tokenize("a red circle"), normalize=False))
        twin = tiny_model()  # same weights, another instance
        twin_runs = _counting(twin)
        assert torch.equal(twin.encode_text(["a red circle", "a blue square"]), before)
        assert len(twin_runs) == 1
        twin.to(torch.bfloat16).encode_text(["a red circle"])
        assert len(twin_runs) == 2


def test_the_cache_is_bounded_by_entries_and_bytes_least_recent_out():
    model = tiny_model()
    cache = TextCache(max_entries=3, max_bytes=1 << 30)
    with torch.no_grad():
        def encode(texts):
            return cache.encode(model, texts, True, lambda t: model.encode_text(model.tokenize(t)))
        encode(["a", "b", "c"])
        encode(["a"])        # now b is the least recent
        encode(["d"])
        assert len(cache) == 3
        runs = _counting(model)
        encode(["a", "c", "d"])
        assert runs == []
        encode(["b"])
        assert runs == [1]
        row_bytes = cache.nbytes // len(cache)
        small = TextCache(max_entries=100, max_bytes=2 * row_bytes)
        small.encode(model, ["a", "b", "c", "d"], True, lambda t: model.encode_text(model.tokenize(t)))
        assert len(small) == 2 and small.nbytes == 2 * row_bytes


def test_a_trainable_text_tower_under_grad_is_never_served_from_the_cache():
    model = tiny_model().requires_grad_(True)
    runs = _counting(model)
    with torch.no_grad():
        model.encode_text("a red circle")
    features = model.encode_text("a red circle")
    assert len(runs) == 2 and features.grad_fn is not None
    features.sum().backward()
    assert model.text_projection.grad is not None
    model.requires_grad_(False)  # frozen, as load_model returns it: cached rows serve a graph through the latents
    assert model.encode_text("a red circle").grad_fn is None and len(runs) == 2


# -- no wait on the device per ReNO iteration -----------------------------------------------------------------

# What makes the host wait for a device: reading a value (Python level) or an op whose output size or a scalar
# must come back (dispatch level). On the CPU nothing waits, so these counts are the proxy.
HOST_READS = {"cpu", "tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__"}
WAITING_OPS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select", "equal"}


class DeviceReads(TorchFunctionMode):
    """Counts the host reads of tensor values and the ops that wait for the device, while active."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self.ops = _WaitingOps(self.reads)

    def __enter__(self):
        self.ops.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self.ops.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS and args and isinstance(args[0], torch.Tensor):
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


class _WaitingOps(TorchDispatchMode):
    def __init__(self, reads: list[str]):
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in WAITING_OPS:
            self.reads.append(f"aten.{func.overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


def _reno_reads(device: torch.device, iterations: int, strict_cuda: bool = False) -> list[str]:
    """The device reads of a latent-reward ReNO run of ``iterations`` on ``device``: a tiny Latent-CLIP, a linear
    generator. With ``strict_cuda``, CUDA's sync debug mode raises on any sync after the first iterate's check."""
    model = tiny_model().to(device).requires_grad_(False)
    reward = latent_alignment(model, "a red circle")
    g = torch.Generator().manual_seed(0)
    mix = (torch.eye(4) + 0.1 * torch.randn(4, 4, generator=g)).to(device)
    noise = torch.randn(2, 4, 8, 8, generator=g).to(device)

    def strict(p):
        if strict_cuda:
            torch.cuda.set_sync_debug_mode("error" if p.iteration < p.iterations - 1 else 0)

    with DeviceReads() as reads:
        try:
            optimize_noise(lambda e: torch.einsum("dc,bchw->bdhw", mix, e), reward, noise, iterations=iterations,
                           callback=strict)
        finally:
            if strict_cuda:
                torch.cuda.set_sync_debug_mode(0)
    return reads.reads


def test_the_reno_loop_reads_the_device_a_fixed_number_of_times(device):
    """Reads at the first iterate (the NonFiniteError check) and at the end (results to the CPU), none per
    iteration: 3 and 9 iterations read the same. On CUDA the sync debug mode also fails any sync in between."""
    short, long = _reno_reads(device, 3), _reno_reads(device, 9, strict_cuda=device.type == "cuda")
    assert short == long, (short, long)
    assert len(short) <= 8, short  # measured 8: any() at the first iterate, 4 .cpu() and any() at the end


def test_the_latent_contract_reads_one_scalar_for_finite_latents():
    z = torch.randn(4, 4, 8, 8)
    with DeviceReads() as reads:
        assert non_finite_items(z) == []
    assert len(reads.reads) <= 2, reads.reads  # bool() of one any(): a __bool__ and its _local_scalar_dense
    z[2, 0, 1, 1] = float("nan")
    assert non_finite_items(z) == [2]


def test_a_deleted_models_rows_leave_the_cache():
    cache = TextCache()
    model, other = tiny_model(), tiny_model()
    with torch.no_grad():
        for m in (model, other):
            cache.encode(m, ["a", "b"], True, lambda t, m=m: m.encode_text(m.tokenize(t)))
    assert len(cache) == 4
    del model
    gc.collect()
    assert len(cache) == 2 and cache.nbytes == 2 * other.config.embed_dim * 4
