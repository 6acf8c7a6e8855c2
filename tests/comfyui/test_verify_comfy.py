"""Prune and Safety Stop samplers in-process on real ComfyUI (0.3.75, or the one $LATENT_CLIP_COMFYUI_DIR names):
the tests' random full-size SD1.5 checkpoint (tests/fixtures.sd15_checkpoint) loaded by ComfyUI's own checkpoint
loader, sampled at 64 px through CFGGuider.sample as SamplerCustomAdvanced runs it, under inference mode like the
executor, with tiny Latent-CLIP weights of the SD1.5 latent family.

The mechanics are checked exactly: the kept candidates are the best ``keep`` of the checkpoint scores the library
computes from ComfyUI's own ``denoised`` at step k; the survivors end where a plain euler run of all N ends; the
denoiser evaluations counted equal N*k + m*(S-k); each safety action's raw output.
"""
import importlib

import pytest
import torch

from bench.inprocess import import_comfyui
from comfy_harness import COMFY_DIR, TINY_CONFIG, require_comfyui
from fixtures import sd15_checkpoint, tiny_model

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
CANDIDATES, STEPS, SIDE = 4, 3, 8  # 64 px; one step of the 860 M-parameter UNet on 4 rows: ~2-4 s CPU
# Survivors against the plain run: the same ops per row, but the UNet runs on another batch size after the split,
# which may round differently. Measured 0.0 (bench/bench_verify_comfy.py on 0.3.75: N=2, S=3 and N=8, S=20 at
# 64 px); the margin is for BLAS kernels that block by batch size.
SPLIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def comfyui():
    """ComfyUI imported in this process once for the module (``comfy_inprocess``'s, module-scoped)."""
    require_comfyui()
    return import_comfyui(COMFY_DIR)


@pytest.fixture(scope="module")
def sd15(comfyui):
    """(model patcher, positive conditioning) of the tests' SD1.5 checkpoint."""
    import comfy.sd
    with torch.inference_mode():
        model = comfy.sd.load_checkpoint_guess_config(str(sd15_checkpoint()), output_vae=False,
                                                      output_clip=False)[0]
    positive = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {}]]
    return model, positive


@pytest.fixture(scope="module")
def nodes(comfyui):
    return importlib.import_module(f"{comfyui.pack.__name__}.nodes.verify")


@pytest.fixture(scope="module")
def lclip(comfyui):
    """Tiny Latent-CLIP weights of the SD1.5 family, inference tensors as when the loader node runs."""
    import comfy.model_patcher
    holder = importlib.import_module(f"{comfyui.pack.__name__}.nodes.loaders").ModelHolder
    with torch.inference_mode():
        clip = tiny_model(TINY_CONFIG, latent_family="sd15")
    return comfy.model_patcher.ModelPatcher(holder(clip), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(CANDIDATES, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def guided(sd15, sampler, seed: int = 0, steps: int = STEPS) -> tuple[torch.Tensor, list]:
    """SamplerCustomAdvanced's run of ``sampler`` (a CFGGuider at cfg 1, "simple" sigmas, an empty latent): the
    raw output and every step's (step, x0) its callback saw."""
    import comfy.samplers
    model, positive = sd15
    seen = []
    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(model)
        guider.inner_set_conds({"positive": positive})
        guider.set_cfg(1.0)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
        out = guider.sample(noise(seed), torch.zeros(CANDIDATES, 4, SIDE, SIDE), sampler, sigmas, seed=seed,
                            callback=lambda i, x0, x, total: seen.append((i, total, x0.clone())), disable_pbar=True)
    return out, seen


@pytest.fixture(scope="module")
def plain(sd15):
    """A plain euler run of all N candidates: the raw output and the callbacks' x0."""
    import comfy.samplers
    return guided(sd15, comfy.samplers.ksampler("euler"))


def sigmas(sd15, steps: int = STEPS) -> list[float]:
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(sd15[0].get_model_object("model_sampling"), "simple", steps).tolist()


def raw_x0(sd15, x0: torch.Tensor) -> torch.Tensor:
    return sd15[0].model.process_latent_out(x0)


def test_prune_keeps_the_best_of_the_checkpoint_scores_and_finishes_them_exactly(sd15, lclip, nodes, plain,
                                                                                   comfyui):
    score = importlib.import_module(f"{comfyui.pack.__name__}.latent_clip.score").score_latents
    sampler = nodes.LatentCLIPPruneSampler.execute(lclip, "a red apple", keep=2, at_step=1).result[0]
    out, seen = guided(sd15, sampler)
    result = sampler.last_result
    full, full_seen = plain
    checkpoint = raw_x0(sd15, full_seen[0][2])  # the plain run's prediction at step 1 (callback index 0)
    with torch.inference_mode():
        cosine = score(lclip.model.clip, checkpoint, "a red apple").cosine[:, 0]
    assert torch.allclose(result.scores, cosine, atol=1e-6)
    assert result.kept.tolist() == torch.sort(torch.topk(cosine, 2).indices).values.tolist()
    assert out.shape == (2, 4, SIDE, SIDE)
    assert (out - full[result.kept]).abs().max() <= SPLIT_ATOL
    assert sampler.counted == result.evaluations == CANDIDATES * 1 + 2 * (STEPS - 1)
    # the progress callback counts on across the split: steps 0..S-1 of S, the last ones on the survivors
    assert [(i, total, len(x0)) for i, total, x0 in seen] == [(0, 3, 4), (1, 3, 2), (2, 3, 2)]
    report = sampler.text.shown.splitlines()
    assert report[:2] == ["prompt: a red apple", f"pruned at step 1/3 (sigma {sigmas(sd15)[1]:.3f}): kept "
                                                 f"{result.kept.tolist()} of 4"]
    rows = [line.split() for line in report[3:7]]
    assert [float(r[1]) for r in rows] == pytest.approx(cosine.tolist(), abs=1e-4)
    assert [r[0] for r in rows if "kept" in r] == [str(i) for i in result.kept.tolist()]
    assert report[7] == "evaluations: 8 of 12 for all N (N*S), 33% saved (rule N*k + m*(S-k) = 8)"


def test_prune_at_a_sigma_and_its_errors(sd15, lclip, nodes, comfyui):
    import comfy.samplers
    sampler = nodes.PruneSampler(comfy.samplers.ksampler("euler"), lclip, "a cat", 3, 0, sigmas(sd15)[2])
    guided(sd15, sampler)
    assert sampler.last_result.at_step == 2 and sampler.counted == 4 * 2 + 3 * 1
    too_many = nodes.PruneSampler(comfy.samplers.ksampler("euler"), lclip, "a cat", 5, 1, 1.0)
    with pytest.raises(ValueError, match="keep is 5 but the LATENT given to SamplerCustomAdvanced holds 4 "
                                         "candidates"):
        guided(sd15, too_many)
    late = nodes.PruneSampler(comfy.samplers.ksampler("euler"), lclip, "a cat", 2, 3, 1.0)
    with pytest.raises(ValueError, match="between 1 and 2 for 3 sampling steps, got 3"):
        guided(sd15, late)
    reno = importlib.import_module(f"{comfyui.pack.__name__}.nodes.reno")
    with pytest.raises(ValueError, match="plain KSAMPLER.*got RenoSampler"):
        nodes.PruneSampler(reno.RenoSampler(comfy.samplers.ksampler("euler"), ()), lclip, "a cat", 2, 1, 1.0)


@pytest.fixture(scope="module")
def flag_threshold(sd15, lclip, nodes, plain):
    """A threshold that flags about half the candidates at step 1: between the checkpoint's 2nd and 3rd highest
    concept probability (the tiny random model's probabilities lie close to 0.5)."""
    sampler = nodes.LatentCLIPSafetyStopSampler.execute(lclip, "nudity", 1.0, "pass with flag", 1).result[0]
    guided(sd15, sampler)
    top = torch.sort(sampler.last_result.scores[:, 0], descending=True).values
    return float(top[1] + top[2]) / 2


@pytest.mark.parametrize("action", ["drop", "zero", "replace with noise", "pass with flag"])
def test_safety_stop_actions(sd15, lclip, nodes, plain, flag_threshold, action, comfyui):
    pack = comfyui.pack.__name__
    check = importlib.import_module(f"{pack}.latent_clip.safety").check
    apply_action = importlib.import_module(f"{pack}.latent_clip.safety").apply_action
    concepts = importlib.import_module(f"{pack}.latent_clip.safety").parse_concepts("nudity")
    sampler = nodes.LatentCLIPSafetyStopSampler.execute(lclip, "nudity", flag_threshold, action, 1).result[0]
    out, _ = guided(sd15, sampler, seed=0)
    result, (full, full_seen) = sampler.last_result, plain
    with torch.inference_mode():
        expected = check(lclip.model.clip, raw_x0(sd15, full_seen[0][2]), concepts, flag_threshold)
    assert sampler.flagged.tolist() == expected.flagged.tolist() == [p > flag_threshold for p in
                                                                     expected.probs[:, 0].tolist()]
    assert 0 < int(expected.flagged.sum()) < CANDIDATES
    survivors = (~expected.flagged).nonzero().flatten()
    going_on = torch.arange(CANDIDATES) if action == "pass with flag" else survivors
    assert result.kept.tolist() == going_on.tolist()
    assert sampler.counted == CANDIDATES + len(going_on) * (STEPS - 1)
    # the raw output is the Safety Filter's action applied to what a full run would end with
    want = apply_action({"samples": full.clone()}, expected.flagged if action != "pass with flag" else
                        torch.zeros(CANDIDATES, dtype=torch.bool), action, lclip.model.clip.config.vision.family,
                        seed=0)["samples"]
    assert out.shape == want.shape and (out - want).abs().max() <= SPLIT_ATOL
    verdict = "FLAGGED" if action == "pass with flag" else "STOPPED"
    lines = sampler.text.shown.splitlines()
    assert lines[0].startswith("safety stop at step 1/3") and lines[0].endswith(
        f"action {action}; {'flagged' if action == 'pass with flag' else 'stopped'} "
        f"{int(expected.flagged.sum())} of 4")
    assert [line.split()[0] for line in lines[2:6] if verdict in line] == [
        str(i) for i in expected.flagged.nonzero().flatten().tolist()]
    assert lines[6].startswith(f"evaluations: {sampler.counted} of 12 for all N")


def test_every_candidate_stopped_samples_nothing_more(sd15, lclip, nodes):
    sampler = nodes.LatentCLIPSafetyStopSampler.execute(lclip, "nudity", 0.0, "zero", 1).result[0]
    out, seen = guided(sd15, sampler)
    assert sampler.counted == CANDIDATES and len(seen) == 1
    assert out.shape == (CANDIDATES, 4, SIDE, SIDE) and not out.any()
