"""train fit: learning, DDP == one process on the same global batch, exact resume after kill -9,
pixel models, adaptation from a pixel CLIP, distillation. CPU, tiny models, real processes."""
import subprocess
import sys

import pytest
import torch

from fixtures import IMAGES, REPO, child_env, fit_args, kill_when, logged_losses, records
import latent_clip
from train import checkpoint
from train.main import main as fit
from train.models import build_model, load_pixel_model
from synthetic import TINY_PIXEL_CFG as TINY_PIXEL, write_image_shards, write_synthetic_latents


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return write_synthetic_latents(tmp_path_factory.mktemp("latents"), n_classes=4, per_class=16, n_shards=2)


@pytest.mark.slow
def test_fit_learns_the_synthetic_pairing_and_writes_an_official_checkpoint(latents, tmp_path):
    losses = fit(fit_args(latents, tmp_path, "learn", **{"max-steps": 24, "save-every": 12, "log-every": 12,
                                                      "eval-every": 12, "zeroshot-data": str(latents),
                                                      "zeroshot-templates": "identity"}))
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < losses[0] - 0.4, losses
    zeroshot = [r for r in records(tmp_path / "learn") if "zeroshot" in r]
    assert [r["step"] for r in zeroshot] == [12, 24] and zeroshot[-1]["zeroshot"]["n"] == 64
    assert zeroshot[-1]["zeroshot"]["top1"] > 0.25  # 4 classes: better than chance on the learned pairing
    ckpt_path = tmp_path / "learn/checkpoints/epoch_latest.pt"
    raw = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    assert {"epoch", "name", "state_dict", "optimizer", "step", "config", "rng"} <= set(raw)
    assert raw["step"] == 24 and all(k.startswith("module.") for k in raw["state_dict"])
    model = latent_clip.load_model(ckpt_path)  # the library reads what the trainer writes
    assert model.config.embed_dim == 32 and model.config.vision.latent_size == 16
    export = latent_clip.load_model(tmp_path / "learn/model.safetensors")
    assert torch.equal(export.logit_scale, model.logit_scale)


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_on_the_same_global_batch(latents, tmp_path):
    """2 ranks x 2 accumulation steps x 2 samples == 1 process x 8 samples."""
    single = fit(fit_args(latents, tmp_path, "single", **{"max-steps": 4, "save-every": 0}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train",
           "fit", *fit_args(latents, tmp_path, "ddp", **{"max-steps": 4, "save-every": 4, "micro-batch-size": 2})]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(None), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = logged_losses(tmp_path / "ddp")
    assert sorted(ddp) == [1, 2, 3, 4]
    # the gloo all-reduce sums the two ranks' gradients in another order than one process does; after 4 AdamW
    # steps that fp32 rounding shows at ~1e-5 relative (seen: 1.4e-5); a wrong global batch differs by >1e-2
    assert [ddp[s] for s in range(1, 5)] == pytest.approx(single, rel=1e-4, abs=1e-6)
    assert (tmp_path / "ddp/checkpoints/epoch_latest.pt").is_file()


@pytest.mark.slow
def test_kill_9_then_resume_latest_reproduces_the_uninterrupted_losses(latents, tmp_path):
    over = {"max-steps": 14, "save-every": 3}
    reference = fit(fit_args(latents, tmp_path, "reference", **over))
    kill_when([sys.executable, "-m", "train", "fit", *fit_args(latents, tmp_path, "killed", **over)],
              lambda: max(logged_losses(tmp_path / "killed"), default=0) >= 7, threads=None, timeout=180)
    before = logged_losses(tmp_path / "killed")
    ckpt = checkpoint.load(tmp_path / "killed/checkpoints/epoch_latest.pt")
    assert 3 <= ckpt["step"] < 14 and ckpt["step"] % 3 == 0
    resumed = fit(fit_args(latents, tmp_path, "killed", **over, resume="latest"))
    assert len(resumed) == 14 - ckpt["step"]
    assert [before[s] for s in sorted(before)] == pytest.approx(reference[:len(before)], rel=1e-6)
    assert resumed == pytest.approx(reference[ckpt["step"]:], rel=1e-6)


def test_pixel_clip_trains_with_the_same_loop_on_image_shards(tmp_path):
    shards = write_image_shards(IMAGES, tmp_path / "images", n_shards=2)
    losses = fit(fit_args(shards[0].parent, tmp_path, "pixel", **{"config": "smoke_pixel", "max-steps": 3,
                                                              "save-every": 3}))
    assert len(losses) == 3 and all(l == l for l in losses)
    raw = checkpoint.load(tmp_path / "pixel/checkpoints/epoch_latest.pt")
    assert raw["model_kind"] == "pixel" and "visual.conv1.weight" in raw["state_dict"]
    load_pixel_model(TINY_PIXEL, tmp_path / "pixel/checkpoints/epoch_latest.pt")  # what eval --pixel-checkpoint reads


def test_stage1_from_a_pixel_clip_trains_only_the_patch_embedding(latents, tmp_path):
    pixel = build_model("pixel", {**TINY_PIXEL, "vision_cfg": {**TINY_PIXEL["vision_cfg"], "patch_size": 8}})
    torch.save({"state_dict": {f"module.{k}": v for k, v in pixel.state_dict().items()}}, tmp_path / "pixel.pt")
    fit(fit_args(latents, tmp_path, "stage1", **{"init": "pixel-clip", "pretrained": str(tmp_path / "pixel.pt"),
                                              "freeze": "patch-embed", "max-steps": 2, "save-every": 2}))
    after = checkpoint.load(tmp_path / "stage1/checkpoints/epoch_latest.pt")["state_dict"]
    before = pixel.state_dict()
    assert torch.equal(after["token_embedding.weight"], before["token_embedding.weight"])
    assert torch.equal(after["visual.latent_vit.proj"], before["visual.proj"])
    assert torch.equal(after["visual.latent_vit.transformer.resblocks.0.mlp.c_fc.weight"],
                       before["visual.transformer.resblocks.0.mlp.c_fc.weight"])
    assert after["visual.latent_vit.positional_embedding"].shape == (5, 64)  # 8x8 pixel grid -> 2x2 latent grid
    assert after["visual.latent_vit.conv1.weight"].shape == (64, 4, 8, 8)


@pytest.mark.slow
def test_distillation_from_a_pixel_teacher_on_decoded_latents_lowers_the_loss(latents, vae_dir, tmp_path):
    teacher = build_model("pixel", TINY_PIXEL)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    losses = fit(fit_args(latents, tmp_path, "distill", **{
        "teacher-model": TINY_PIXEL, "teacher-checkpoint": str(tmp_path / "teacher.pt"), "vae": str(vae_dir),
        "distill-weight": 1.0, "contrastive-weight": 0.0, "max-steps": 8, "save-every": 0}))
    assert losses[-1] < losses[0] * 0.8, losses


def test_gradient_accumulation_is_exact_for_the_contrastive_loss(latents, tmp_path):
    """open_clip's accum-freq scheme: the loss sees the whole global batch's negatives, so two
    micro-batches of 4 train exactly like one batch of 8."""
    whole = fit(fit_args(latents, tmp_path, "whole", **{"max-steps": 3, "save-every": 0}))
    accumulated = fit(fit_args(latents, tmp_path, "accum", **{"max-steps": 3, "save-every": 0, "micro-batch-size": 4}))
    assert accumulated == pytest.approx(whole, rel=1e-5)


@pytest.mark.parametrize("shape", [(4, 8, 8), (16, 16, 16)], ids=["tiny-world size", "16 channels"])
def test_latents_that_do_not_fit_the_config_are_refused_before_the_first_step(tmp_path, shape):
    """The smoke config reads 4 x 16 x 16 SDXL latents: 8 x 8 ones (the tiny world's) would make one token per
    image and the loss would stay at ln(8); 16 channels cannot even be embedded."""
    data = write_synthetic_latents(tmp_path / "data", shape=shape)
    with pytest.raises(ValueError) as err:
        fit(fit_args(data, tmp_path, "wrong"))
    got = "x".join(map(str, shape))
    assert str(err.value) == (f"{data / '000000.safetensors'}: latents are {got} (C x H x W), but the model config "
                              f"reads SDXL / SDXL-Turbo VAE (also sdxl-vae-fp16-fix) latents ('sdxl') of 4x16x16 (128 px): encode "
                              f"the data with that VAE and size, or train a config made for these latents")
    assert not (tmp_path / "wrong" / "log.jsonl").exists()  # no step ran


def test_a_loss_stuck_at_ln_batch_is_a_warning(tmp_path, capsys):
    """Identical samples and captions: every pair is as likely as every other, the loss is ln(8) at every
    step, and after StuckLoss.STEPS of them the run says so, once."""
    from train.data import write_latent_shard, write_sizes
    write_latent_shard(tmp_path / "data" / "000000.safetensors", torch.ones(16, 4, 16, 16), ["a cat"] * 16,
                       [str(i) for i in range(16)])
    write_sizes(tmp_path / "data")
    losses = fit(fit_args(tmp_path / "data", tmp_path, "stuck", **{"max-steps": 22, "save-every": 0}))
    assert losses == pytest.approx([2.0794415] * 22, abs=1e-5)  # ln 8
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: step 20: the loss has stayed at ln(batch 8) = 2.0794 for 20 steps: the model "
                        "tells no pair apart (data it cannot read, identical samples or captions, or a learning rate "
                        "too high or too low)"]
