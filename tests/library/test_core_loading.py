"""Official checkpoints, safetensors exports, architecture inference and safe unpickling."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from open_clip import tokenize

import latent_clip
from latent_clip import CheckpointError, LatentCLIP, get_model_config, infer_config, list_models, load_model
from latent_clip.__main__ import main as cli
from latent_clip.contract import fit_latents
from hostile_files import MARKER, Exploit
from official_layout import ReferenceLatentCLIP, manifest, random_model, reduced_config, write_official_checkpoint

OFFICIAL = ["Latent-ViT-B-8-512", "Latent-ViT-B-4-512-plus"]
CAPTIONS = ["a photo of a red bus", "two dogs on a beach", "an astronaut riding a horse, oil painting"]


@pytest.mark.parametrize("name", OFFICIAL)
def test_full_size_layout_matches_official_manifest(name):
    with torch.device("meta"):
        model = LatentCLIP(get_model_config(name), vae_encoder=True)
    ours = {f"module.{k}": list(v.shape) for k, v in model.state_dict().items()}
    official = {e["key"]: e["shape"] for e in manifest(name)["keys"]}
    assert ours == official


@pytest.mark.parametrize("name", list_models())
def test_architecture_is_inferred_for_every_bundled_config(name):
    with torch.device("meta"):
        state = LatentCLIP(get_model_config(name)).state_dict()
    inferred, expected = infer_config(state), get_model_config(name)
    # B-6-336 and B-6-336-fp16 differ only in the VAE they were trained with, not in any tensor
    assert _architecture(inferred) == _architecture(expected)
    assert inferred.name.removesuffix("-fp16") == name.removesuffix("-fp16")


def _architecture(cfg):
    return replace(cfg, name=None, vision=replace(cfg.vision, latent_encoder_name=None))


def test_unknown_architecture_is_inferred_from_shapes():
    cfg = reduced_config("Latent-ViT-B-4-512-plus")
    with torch.device("meta"):
        state = LatentCLIP(cfg).state_dict()
    inferred = infer_config(state)
    assert inferred.name is None
    assert (inferred.embed_dim, inferred.vision.patch_size, inferred.vision.latent_size) == (48, 4, 64)
    assert (inferred.vision.width, inferred.vision.layers, inferred.text.width, inferred.text.layers) == (64, 2, 64, 2)


@pytest.fixture(scope="module", params=OFFICIAL)
def official(request, tmp_path_factory):
    cfg = reduced_config(request.param)
    model = random_model(cfg, seed=OFFICIAL.index(request.param))
    path = write_official_checkpoint(tmp_path_factory.mktemp("ckpt") / "epoch_34.pt", model,
                                     manifest_name=request.param)
    return cfg, path, ReferenceLatentCLIP(cfg, model.state_dict())


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(3, 4, 64, 64, generator=g) * 4.0  # raw SDXL latents have a std of several units
    images = torch.rand(2, 3, 128, 128, generator=g)
    return latents, images


def test_official_checkpoint_reproduces_reference_embeddings(official):
    cfg, path, ref = official
    model = load_model(path, config=cfg)
    latents, images = _inputs()
    with torch.no_grad():
        assert (model.encode_latents(latents) - ref.encode_latents(latents)).abs().max() <= 1e-4
        assert (model.encode_text(CAPTIONS) - ref.encode_text(tokenize(CAPTIONS))).abs().max() <= 1e-4
        # pixel path: our VAE encoder vs diffusers' AutoencoderKL posterior mean, then the ViT
        ours_latents = model.visual.encode_pixels(images * 2 - 1)
        ref_latents = ref.vae.encode(images * 2 - 1).latent_dist.mean
        assert (ours_latents - ref_latents).abs().max() <= 1e-4
        pooled = fit_latents(ref_latents, cfg.vision.latent_size, cfg.vision.patch_size, "pool")
        model.resize_policy = "pool"  # the reference ViT reads its trained 64x64 grid only
        assert (model.encode_images(images) - ref.encode_latents(pooled)).abs().max() <= 1e-4
    assert model.logit_scale.shape == () and not model.training


def test_convert_roundtrip_is_exact_and_casts(official, tmp_path):
    cfg, path, _ = official
    latents, images = _inputs(1)
    before = load_model(path, config=cfg)
    assert cli(["convert", str(path), str(tmp_path / "lc.safetensors"), "--config", str(tmp_path / "none.json")]) == 2
    cfg_json = tmp_path / "cfg.json"
    cfg_json.write_text(json.dumps(cfg.to_dict()))
    assert cli(["convert", str(path), str(tmp_path / "lc.safetensors"), "--config", str(cfg_json)]) == 0
    after = load_model(tmp_path / "lc.safetensors")  # config read from lc.json
    with torch.no_grad():
        assert torch.equal(before.encode_latents(latents), after.encode_latents(latents))
        assert torch.equal(before.encode_text(CAPTIONS), after.encode_text(CAPTIONS))
        assert torch.equal(before.encode_images(images), after.encode_images(images))

    assert cli(["convert", str(tmp_path / "lc.safetensors"), str(tmp_path / "half.safetensors"),
                "--dtype", "fp16", "--no-vae-encoder"]) == 0
    half = load_model(tmp_path / "half.safetensors")
    assert half.dtype == torch.float32 and not half.has_vae_encoder  # loads as fp32 unless asked
    assert load_model(tmp_path / "half.safetensors", dtype="fp16").dtype == torch.float16
    with torch.no_grad():
        assert (half.encode_latents(latents) - before.encode_latents(latents)).abs().max() < 5e-3
    with pytest.raises(ValueError, match="without a VAE encoder"):
        half.encode_images(images)
    assert (tmp_path / "half.safetensors").stat().st_size < (tmp_path / "lc.safetensors").stat().st_size / 2


def test_written_files_follow_the_umask(official, tmp_path):
    """An export (safetensors writes 0600 by itself), its JSON and an official checkpoint all get the mode the
    umask gives a new file, so a ComfyUI running as another user (or in Docker) can read them."""
    cfg, path, _ = official
    model = load_model(path, config=cfg)
    previous = os.umask(0o027)
    try:
        written = [latent_clip.save_export(model, tmp_path / "a.safetensors"), tmp_path / "a.json",
                   latent_clip.save_official_checkpoint(tmp_path / "b.pt", model, 1, "x")]
        assert {oct(f.stat().st_mode & 0o777) for f in written} == {oct(0o640)}
        os.umask(0o022)
        latent_clip.save_export(model, tmp_path / "a.safetensors")
        assert oct((tmp_path / "a.safetensors").stat().st_mode & 0o777) == oct(0o644)
    finally:
        os.umask(previous)


def test_vae_encoder_and_optimizer_are_dropped(official):
    cfg, path, _ = official
    model = load_model(path, config=cfg, vae_encoder=False)
    assert not model.has_vae_encoder
    assert not any("vae" in k for k in model.state_dict())


def test_checkpoint_without_vae_keys_loads(official, tmp_path):
    cfg, _, _ = official
    model = random_model(cfg, seed=7)
    path = write_official_checkpoint(tmp_path / "novae.pt", model, with_vae=False)
    loaded = load_model(path)
    assert not loaded.has_vae_encoder and loaded.config.vision.patch_size == cfg.vision.patch_size


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    evil = tmp_path / "epoch_34.pt"
    torch.save({"epoch": 1, "state_dict": {"x": Exploit(tmp_path / MARKER)}}, evil)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model(evil)
    result = subprocess.run([sys.executable, "-m", "latent_clip", "info", str(evil)], capture_output=True, text=True)
    assert result.returncode == 2 and "refusing to load" in result.stderr
    assert not (tmp_path / MARKER).exists()


def test_bad_files_give_clear_errors(official, tmp_path):
    cfg, path, _ = official
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "x.onnx").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="unsupported weights file"):
        load_model(tmp_path / "x.onnx")
    torch.save({"foo": 1}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_model(tmp_path / "nostate.pt")
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a Latent-CLIP state dict"):
        load_model(tmp_path / "other.pt")
    other = "Latent-ViT-B-4-512-plus" if cfg.vision.patch_size == 8 else "Latent-ViT-B-8-512"
    with pytest.raises(CheckpointError, match="does not match config|expects"):
        load_model(path, config=other)


@pytest.mark.slow
def test_full_size_b8_official_checkpoint_loads_lean(tmp_path):
    """A full-size B/8 checkpoint (VAE encoder + AdamW state, ~1.9 GB) loads with the optimizer and
    VAE dropped; peak memory stays far below the file size (the dropped parts are never read)."""
    cfg = get_model_config("Latent-ViT-B-8-512")
    model = random_model(cfg, seed=3)
    path = write_official_checkpoint(tmp_path / "epoch_34.pt", model, manifest_name=cfg.name)
    latents = torch.randn(2, 4, 64, 64) * 4
    with torch.no_grad():
        expected = model.encode_latents(latents)
    torch.save(latents, tmp_path / "latents.pt")
    del model
    probe = (
        # latent_clip.model brings in open_clip (and transformers, ~240 MB): imported before the baseline, as the
        # load is measured, not the libraries. VmHWM: peak RSS of this exec (ru_maxrss survives fork+exec)
        "import re, torch, latent_clip, latent_clip.model\n"
        "def kb(f): return int(re.search(f + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        "base = kb('VmRSS')\n"
        f"m = latent_clip.load_model(r'{path}', vae_encoder=False)\n"
        f"f = m.encode_latents(torch.load(r'{tmp_path / 'latents.pt'}'))\n"
        f"torch.save(f, r'{tmp_path / 'features.pt'}')\n"
        "print(base, kb('VmHWM'), m.config.name)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    base, peak, name = int(out[0]), int(out[1]), out[2]
    assert name == "Latent-ViT-B-8-512"
    kept = sum(e["numel"] * 4 for e in manifest(name)["keys"] if e["group"] in ("text", "latent_vit", "logit_scale"))
    file_size = path.stat().st_size
    assert file_size > 3 * kept  # the optimizer and VAE really are in the file
    assert peak - base < 1.5 * kept, (peak - base, kept, file_size)
    assert (torch.load(tmp_path / "features.pt") - expected).abs().max() <= 1e-4


def test_a_device_torch_cannot_use_is_one_clear_line(official, device):
    """device="cuda" on a machine without a GPU (the README's snippet as written), or a device torch does not
    know: a ValueError saying so, not torch's traceback from inside Module.to."""
    cfg, path, _ = official
    with pytest.raises(ValueError, match=r"^device 'gpu' is not a torch device \("):
        load_model(path, config=cfg, device="gpu")
    if device.type == "cuda":
        assert load_model(path, config=cfg, device="cuda").device.type == "cuda"
    else:
        with pytest.raises(ValueError) as err:
            load_model(path, config=cfg, device="cuda")
        assert str(err.value) == ("device 'cuda': torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                                  "use device='cpu'")


def _hf_cache(root, entry, payload):
    """``payload`` where ``huggingface-cli download`` puts ``entry``'s file: the cache's layout, ref and snapshot."""
    repo = root / f"models--{entry.hf_repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    target = repo / "snapshots" / ("0" * 40) / entry.hf_file
    target.parent.mkdir(parents=True)
    target.write_bytes(payload)
    return target


def test_registry_names_load_from_the_hugging_face_cache_with_their_architecture(official, tmp_path):
    """A registry name is read from the Hugging Face cache with the registry's architecture (here a reduced
    checkpoint in the B/8 entry's place does not fit Latent-ViT-B-8-512: the registry's config was used, not
    the tensors'); a name not downloaded is one line with the command to run; nothing is fetched."""
    from latent_clip.pretrained import get_pretrained
    entry = get_pretrained("latent-clip-b-8-512-34b-80k")
    cached = _hf_cache(tmp_path / "hub", entry, official[1].read_bytes())
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "latent_clip", "info", entry.name], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert str(cached)[-40:] in run.stderr and "config Latent-ViT-B-8-512 expects 12" in run.stderr
    empty = {**env, "HF_HUB_CACHE": str(tmp_path / "empty")}
    run = subprocess.run([sys.executable, "-m", "latent_clip", "info", entry.name], capture_output=True, text=True,
                         env=empty)
    assert run.returncode == 2 and run.stderr == (
        f"error: {entry.name} is not in the Hugging Face cache: download it with `huggingface-cli download "
        f"{entry.hf_repo} {entry.hf_file}` (nothing is fetched here), or pass the file's path\n")


def test_a_file_the_registry_records_is_recognised_by_its_sha256(official, tmp_path, monkeypatch, capsys):
    """Where the registry records a file's SHA-256, that file loads with the registry's architecture whatever
    its name; ``info`` prints the hash (to compare with Hugging Face's) and what it recognised."""
    import hashlib

    from latent_clip import pretrained
    cfg, path, _ = official
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_model(path).config.vision.latent_family == "sdxl"  # inferred: the first 4-channel family
    other = cfg.to_dict()
    other["vision_cfg"]["latent_family"] = "sd15"  # same tensors: only the registry can say so
    (tmp_path / "registered.json").write_text(json.dumps(other))
    entry = pretrained.PretrainedWeights("test-weights", str(tmp_path / "registered.json"), "org/repo", "w.pt",
                                         "sd15", sha256=digest)
    monkeypatch.setattr(pretrained, "REGISTRY", (*pretrained.REGISTRY, entry))
    assert load_model(path).config.vision.latent_family == "sd15"
    assert cli(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"sha256: {digest}\n" in out
    assert "recognised: test-weights (https://huggingface.co/org/repo/resolve/main/w.pt)" in out
    monkeypatch.setattr(pretrained, "REGISTRY", pretrained.REGISTRY[:-1])
    assert cli(["info", str(path)]) == 0
    assert "recognised: no (the registry records no hash for this file" in capsys.readouterr().out
