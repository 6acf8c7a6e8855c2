"""The nodes' execute() on real tensors with the real ComfyUI imported in this process (no server):
model folder registration, model management, caching, interrupts and LATENT-dict hygiene."""
import pytest
import torch

import latent_clip
from comfy_harness import TINY_CONFIG, TINY_EXPORT, make_latents
from fixtures import tiny_model

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lc_models")
    latent_clip.save_export(tiny_model(TINY_CONFIG), folder / TINY_EXPORT)
    (folder / "notes.txt").write_text("not weights")
    return folder


@pytest.fixture
def pack(comfy_inprocess, models_dir):
    """The pack with ``models_dir`` registered the way extra_model_paths.yaml does it."""
    folder_paths = comfy_inprocess.folder_paths
    folder_paths.add_model_folder_path("latent_clip", str(models_dir))
    comfy_inprocess.pack.nodes.loaders.register_model_folder()
    folder_paths.filename_list_cache.pop("latent_clip", None)
    return comfy_inprocess.pack


def run(node, **inputs):
    with torch.inference_mode():  # as ComfyUI's executor does
        return node.PREPARE_CLASS_CLONE({}).execute(**inputs)


def test_model_folder_lists_weights_only(pack, comfy_inprocess, models_dir):
    folder_paths = comfy_inprocess.folder_paths
    paths, extensions = folder_paths.folder_names_and_paths["latent_clip"]
    assert str(models_dir) in paths and paths[0].endswith("latent_clip")
    assert extensions == {".safetensors", ".pt", ".pth", ".bin"}
    assert folder_paths.get_filename_list("latent_clip") == [TINY_EXPORT]


def test_loader_wraps_model_for_model_management(pack, comfy_inprocess):
    mm = comfy_inprocess.comfy.model_management
    loader = pack.nodes.loaders.LatentCLIPLoader
    patcher = run(loader, model_name=TINY_EXPORT, dtype="auto", device="default").result[0]
    assert run(loader, model_name=TINY_EXPORT, dtype="auto", device="default").result[0] is patcher  # cached
    assert run(loader, model_name=TINY_EXPORT, dtype="bf16", device="cpu").result[0].model.clip.dtype == torch.bfloat16
    assert patcher.load_device == mm.get_torch_device()
    model = pack.nodes.loaders.model_of(patcher)
    assert model.dtype == torch.float32 and any(m.model is patcher for m in mm.current_loaded_models)
    mm.unload_all_models()
    assert not any(m.model is patcher for m in mm.current_loaded_models)
    assert model.device == patcher.offload_device
    with pytest.raises(FileNotFoundError, match="no_such.pt"):
        run(loader, model_name="no_such.pt", dtype="auto", device="default")


def test_nodes_on_latent_dicts(pack):
    patcher = pack.nodes.loaders.load_patcher(TINY_EXPORT, "fp32", "default")
    z = make_latents(batch=5)
    latent = {"samples": z, "noise_mask": torch.rand(5, 1, 32, 32), "batch_index": [10, 11, 12, 13, 14]}
    nodes = pack.nodes.score

    out = run(nodes.LatentCLIPSelectBest, latent=latent, latent_clip=patcher, prompt="a cat", k=3)
    best, best_index, report = out.result
    order = latent_clip.rank_by_prompt(patcher.model.clip, z, "a cat")[0][:3].tolist()
    assert best_index == order[0] and best["batch_index"] == [10 + i for i in order]
    torch.testing.assert_close(best["noise_mask"], latent["noise_mask"][order])
    assert "kept 3 of 5" in report and report == f"```\n{out.ui.as_dict()['text'][0]}\n```"

    blocked = run(nodes.LatentCLIPSafetyFilter, latent=latent, latent_clip=patcher, concepts="nudity",
                  threshold=0.0, action="zero", seed=0).result
    assert blocked[1] == [True] * 5 and blocked[2] is True and not blocked[0]["samples"].any()
    assert blocked[0]["batch_index"] == latent["batch_index"] and "BLOCKED" in blocked[3]
    dropped = run(nodes.LatentCLIPSafetyFilter, latent=latent, latent_clip=patcher, concepts="nudity",
                  threshold=0.0, action="drop", seed=0)
    assert type(dropped.result[0]).__name__ == "ExecutionBlocker" and dropped.result[0].message is None
    assert dropped.result[1:3] == ([True] * 5, True) and "nothing passed on" in dropped.ui.as_dict()["text"][0]
    with pytest.raises(ValueError, match="no concepts"):
        run(nodes.LatentCLIPSafetyFilter, latent=latent, latent_clip=patcher, concepts="# none",
            threshold=0.5, action="drop", seed=0)

    passed = run(nodes.LatentCLIPScoreThreshold, score=0.3, threshold=0.25, comparison=">=").result
    assert passed == (True, 1)


def test_interrupt_is_respected(pack, comfy_inprocess):
    mm = comfy_inprocess.comfy.model_management
    patcher = pack.nodes.loaders.load_patcher(TINY_EXPORT, "fp32", "default")
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(pack.nodes.score.LatentCLIPScore, latent={"samples": make_latents()}, latent_clip=patcher,
                prompt="a cat")
    finally:
        mm.interrupt_current_processing(False)


def test_pack_survives_broken_optional_module(comfy_inprocess, monkeypatch):
    import asyncio
    import sys
    pack = comfy_inprocess.pack
    monkeypatch.setitem(sys.modules, f"{pack.__name__}.nodes.reno", None)  # import of nodes/reno.py fails
    ext = asyncio.run(pack.comfy_entrypoint())
    ids = {n.GET_SCHEMA().node_id for n in asyncio.run(ext.get_node_list())}
    assert {"LatentCLIPLoader", "LatentCLIPScore", "LatentCLIPSafetyFilter"} <= ids


def test_embedded_tinyworld_model_is_the_loaders_first_choice(pack, comfy_inprocess):
    """A newcomer without weights still gets a working first graph: the shipped tiny-world model,
    the default only while the folder holds no weights."""
    loaders = pack.nodes.loaders
    assert loaders.model_choices()[0] == loaders.EMBEDDED
    model_name = loaders.LatentCLIPLoader.GET_SCHEMA().inputs[0]
    assert model_name.default == TINY_EXPORT != model_name.options[0]
    assert loaders.default_model([loaders.EMBEDDED]) == loaders.EMBEDDED
    patcher = run(loaders.LatentCLIPLoader, model_name=loaders.EMBEDDED, dtype="auto", device="default").result[0]
    model = loaders.model_of(patcher)
    assert model.config.vision.latent_family == "tinyworld"
    with torch.no_grad():
        assert model.encode_latents(torch.randn(2, 4, 8, 8)).shape == (2, model.config.embed_dim)


def test_misuse_is_said_on_the_node(pack, caplog):
    """Tiny-world model on other latents and a single label: warnings on the node (and in the log);
    repeated labels and unknown weights: one clear error, the latter before the run."""
    loaders, nodes = pack.nodes.loaders, pack.nodes.score
    tiny_world = loaders.load_patcher(loaders.EMBEDDED, "fp32", "default")
    with caplog.at_level("WARNING", logger="comfyui-latent-clip"):
        run(nodes.LatentCLIPZeroShot, latent={"samples": make_latents()}, latent_clip=tiny_world,
            labels="cat", templates="a photo of a {}.")
    assert "only knows the 8x8 latents" in caplog.text and "these are 32x32" in caplog.text
    assert "only one label ('cat')" in caplog.text
    assert [r.getMessage()[:14] for r in caplog.records] == ["[Latent-CLIP] "] * 2  # which pack wrote it
    caplog.clear()
    with caplog.at_level("WARNING", logger="comfyui-latent-clip"):
        run(nodes.LatentCLIPScore, latent={"samples": torch.randn(2, 4, 8, 8)}, latent_clip=tiny_world, prompt="x")
    assert caplog.text == ""
    with pytest.raises(ValueError, match=r"labels must differ, but \['cat'\] appear more than once"):
        run(nodes.LatentCLIPZeroShot, latent={"samples": make_latents()}, latent_clip=tiny_world,
            labels="cat\ndog\ncat", templates="a photo of a {}.")
    assert loaders.LatentCLIPLoader.validate_inputs(model_name=TINY_EXPORT) is True
    answer = loaders.LatentCLIPLoader.validate_inputs(model_name="nope.pt")
    assert answer.startswith("Latent-CLIP weights 'nope.pt' not found in ") and TINY_EXPORT in answer
