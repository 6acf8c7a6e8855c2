"""What a user feels first: importing the library and the pack without transformers, the text-embedding
cache, and a ReNO loop that does not wait on the device every iteration."""
import subprocess
import sys

from fixtures import REPO, child_env

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
