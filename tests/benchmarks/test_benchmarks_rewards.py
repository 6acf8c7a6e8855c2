"""ReNO's pixel ensemble in the benchmarks (HPSv2.1, PickScore, a reward module, pixel CLIPScore): tiny random
models saved in the real on-disk formats, losses checked against each model's own forward, one VAE decode per
iteration, and clear errors on bad input."""
import json

import pytest
import torch
import torch.nn.functional as F

import train.benchmarks.geneval as geneval
from fixtures import bench_records
from hostile_files import MARKER, Exploit
from latent_clip import CheckpointError
from latent_clip.pixel_clip import CLIP_MEAN, CLIP_STD
from latent_clip.rewards import clip_image_reward, hps_image_reward, on_decoded
from tiny_pipelines import tiny_vae, write_tokenizer
from train.benchmarks import main
from train.benchmarks.pixel_rewards import load_open_clip, load_pickscore, load_reward_module, module_image_reward, \
    pickscore_image_reward
from train.models import build_model
from synthetic import TINY_PIXEL_CFG

MODULE = '''import torch

LOADS = []


def load(device):
    LOADS.append(str(device))
    w = torch.tensor([0.3, 0.5, 0.2], device=device).view(1, 3, 1, 1)
    return lambda images, prompt: 2 - (images * w).sum(1).mean((1, 2)) - 0.01 * len(prompt)


def score(images, prompt):
    return 2 - images.mean((1, 2, 3))


def scalar(images, prompt):
    return images.mean()
'''


def write_hps(path, cfg=TINY_PIXEL_CFG, seed=0):
    """An open_clip CLIP in HPS's checkpoint format: ``torch.save({'state_dict': ...})``."""
    torch.manual_seed(seed)
    model = build_model("pixel", cfg)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    return path


def write_pickscore(folder, seed=0):
    """A transformers CLIPModel + CLIP tokenizer, both with save_pretrained (PickScore_v1's layout)."""
    from transformers import CLIPConfig, CLIPModel

    tok = write_tokenizer(folder)
    torch.manual_seed(seed)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4}
    cfg = CLIPConfig(text_config={**tower, "vocab_size": len(tok), "max_position_embeddings": 77,
                                  "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                  "pad_token_id": tok.pad_token_id},
                     vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16)
    CLIPModel(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    (root / "pixel.json").write_text(json.dumps(TINY_PIXEL_CFG))
    (root / "ir_like.py").write_text(MODULE)
    return {**tiny, "hps": write_hps(root / "HPS_v2.1_compressed.pt"), "pixel_cfg": root / "pixel.json",
            "pickscore": write_pickscore(root / "PickScore_v1"), "module": root / "ir_like.py"}


def renos_preprocess(images, size):
    """By hand: images in [0, 1], square -> bicubic resize (antialiased) -> normalise with CLIP's mean/std."""
    x = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def test_hps_and_clip_losses_are_renos(files):
    import open_clip

    model, tokenizer = load_open_clip(str(files["pixel_cfg"]), str(files["hps"]), "cpu", torch.float32)
    saved = torch.load(files["hps"], weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        img, txt, scale = model(renos_preprocess(images, 64), open_clip.tokenize(["a red cube"]))
    cos = (img * txt).sum(-1)  # open_clip's forward returns L2-normalised features and exp(logit_scale)
    torch.testing.assert_close(hps_image_reward(model, tokenizer, "a red cube")(images), 1 - cos)
    torch.testing.assert_close(clip_image_reward(model, tokenizer, "a red cube")(images), 100 - scale * cos)


def test_pickscore_loss_is_renos(files):
    model, tokenizer = load_pickscore(str(files["pickscore"]), None, "cpu", torch.float32)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    images = torch.rand(2, 3, 64, 64)
    tokens = tokenizer("two blue balls", return_tensors="pt")
    with torch.no_grad():
        logits = model(**tokens, pixel_values=renos_preprocess(images, 32)).logits_per_image  # exp(scale) * cos
    torch.testing.assert_close(pickscore_image_reward(model, tokenizer, "two blue balls")(images), 30 - logits[:, 0])


def test_reward_module_load_or_function(files):
    name, fn = load_reward_module(str(files["module"]), "cpu")
    assert name == "ir_like"
    images = torch.rand(2, 3, 8, 8)
    w = torch.tensor([0.3, 0.5, 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(module_image_reward(fn, "abc", name)(images),
                               2 - (images * w).sum(1).mean((1, 2)) - 0.03)
    name, fn = load_reward_module(f"{files['module']}:score", "cpu")
    assert name == "score"
    torch.testing.assert_close(module_image_reward(fn, "abc", name)(images), 2 - images.mean((1, 2, 3)))


def test_gradients_reach_the_latents_through_one_shared_decode(files):
    model, tokenizer = load_open_clip(str(files["pixel_cfg"]), str(files["hps"]), "cpu", torch.float32)
    pick, pick_tok = load_pickscore(str(files["pickscore"]), None, "cpu", torch.float32)
    _, fn = load_reward_module(str(files["module"]), "cpu")
    vae = tiny_vae().eval().requires_grad_(False)
    calls = []
    vae.decoder.register_forward_hook(lambda *_: calls.append(1))
    terms = on_decoded({"hps": hps_image_reward(model, tokenizer, "a cat"),
                        "pickscore": pickscore_image_reward(pick, pick_tok, "a cat"),
                        "module": module_image_reward(fn, "a cat", "module")},
                       lambda z: vae.decode(z).sample)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    total = sum(w * terms[n](z) for n, w in (("hps", 5.0), ("pickscore", 0.05), ("module", 1.0)))
    total.sum().backward()
    assert calls == [1] and z.grad.abs().sum() > 0
    for name in terms:  # each term alone has a gradient of its own, through the VAE
        z1 = z.detach().clone().requires_grad_(True)
        terms[name](z1).sum().backward()
        assert z1.grad.abs().sum() > 0, name
    assert len(calls) == 4
    images = (vae.decode(z.detach()).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(terms["hps"](z.detach()), hps_image_reward(model, tokenizer, "a cat")(images))


def test_malicious_hps_pickle_is_refused(files, tmp_path):
    torch.save({"state_dict": {"logit_scale": torch.zeros(())}, "x": Exploit(tmp_path / MARKER)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_open_clip(str(files["pixel_cfg"]), str(tmp_path / "evil.pt"), "cpu", torch.float32)
    assert not (tmp_path / MARKER).exists()


def test_bad_inputs_give_clear_errors(files, tmp_path):
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_open_clip(str(files["pixel_cfg"]), str(tmp_path / "missing.pt"), "cpu", torch.float32)
    other = dict(TINY_PIXEL_CFG, embed_dim=16)  # another architecture: other projection shapes
    with pytest.raises(CheckpointError, match="does not fit .*shapes"):
        load_open_clip(other, str(files["hps"]), "cpu", torch.float32)
    with pytest.raises(FileNotFoundError, match="PickScore: no such folder"):
        load_pickscore(str(tmp_path / "nope"), None, "cpu", torch.float32)
    (tmp_path / "model_only").mkdir()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / "model_only" / f).write_bytes((files["pickscore"] / f).read_bytes())
    with pytest.raises(ValueError, match="no tokenizer in .*--pickscore-tokenizer"):
        load_pickscore(str(tmp_path / "model_only"), None, "cpu", torch.float32)
    model, tok = load_pickscore(str(tmp_path / "model_only"), str(files["pickscore"]), "cpu", torch.float32)
    assert tok("a").input_ids[0] == tok.bos_token_id
    with pytest.raises(FileNotFoundError, match="no such python file"):
        load_reward_module(str(tmp_path / "missing.py"), "cpu")
    with pytest.raises(ValueError, match="defines no function 'nope'"):
        load_reward_module(f"{files['module']}:nope", "cpu")
    (tmp_path / "noload.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no function 'load'"):
        load_reward_module(str(tmp_path / "noload.py"), "cpu")
    with pytest.raises(ValueError, match="taken by a built-in"):
        load_reward_module(f"{files['module']}:hps", "cpu")
    _, scalar = load_reward_module(f"{files['module']}:scalar", "cpu")
    with pytest.raises(ValueError, match=r"must return a \(2,\) tensor"):
        module_image_reward(scalar, "a", "scalar")(torch.rand(2, 3, 8, 8))


def geneval_args(files, out, *extra):
    return ["geneval", "--pipeline", str(files["sd"]), "--outdir", str(out), "--resolution", "64", "--device", "cpu",
            "--samples", "2", "--batch-size", "2", "--iterations", "3", "--limit", "1", "--summary-wait", "5", *extra]


def count_decodes(monkeypatch):
    """Count forward calls of the run's real VAE decoder (a hook added right after the real setup)."""
    calls, real_load_resources = [], geneval.load_resources

    def load_resources(settings):
        resources = real_load_resources(settings)
        resources.generator.vae.decoder.register_forward_hook(lambda *_: calls.append(1))
        return resources
    monkeypatch.setattr(geneval, "load_resources", load_resources)
    return calls


ENSEMBLE = ("--pixel-clip", "{pixel_cfg}", "--pixel-checkpoint", "{hps}", "--hps-checkpoint", "{hps}",
            "--hps-arch", "{pixel_cfg}", "--pickscore", "{pickscore}", "--reward-module", "{module}")


def test_geneval_with_the_pixel_ensemble_records_every_term_and_decodes_once(files, tmp_path, monkeypatch):
    calls = count_decodes(monkeypatch)
    ensemble = [a.format(**files) for a in ENSEMBLE]
    summary = main(geneval_args(files, tmp_path / "all", "--latent-clip", str(files["latent_clip"]), *ensemble))
    # one decode per ReNO iteration (3), one each for scoring the initial and best latents, one for the PNGs
    assert len(calls) == 3 + 2 + 1
    recs = bench_records(tmp_path / "all")
    assert len(recs) == 2
    weights = {"latent_clip": 0.01, "pixel_clip": 0.01, "hps": 5.0, "pickscore": 0.05, "ir_like": 1.0}
    for r in recs:
        assert set(r["losses"]) == set(weights) | {"total"}
        for k in ("initial", "best"):
            total = sum(w * r["losses"][n][k] for n, w in weights.items())
            assert r["losses"]["total"][k] == pytest.approx(total, rel=1e-5)
        assert 0 <= r["losses"]["hps"]["initial"] <= 2 and r["time"]["decode"] > 0 and r["time"]["reward"] > 0
    assert set(summary["rewards"]) == set(weights) | {"total"}
    calls.clear()
    main(geneval_args(files, tmp_path / "one", "--pixel-clip", str(files["pixel_cfg"])))
    assert len(calls) == 3 + 2 + 1  # as many decodes as a single pixel reward
