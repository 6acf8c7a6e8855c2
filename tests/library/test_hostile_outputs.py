"""NaN never passes silently out of a model: scores and class probabilities raise, the safety filter
fails closed (the library and the real ComfyUI node), for NaN weights and for an fp16 overflow."""
import pytest
import torch

import latent_clip
from latent_clip import safety
from fixtures import tiny_model

LATENTS = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 4


def nan_weight_model():
    model = tiny_model()
    with torch.no_grad():
        model.visual.latent_vit.proj[0, 0] = float("nan")
    return model


def fp16_overflow_model():
    """Finite fp16 weights whose image features overflow fp16's 65504 (projection entries +-60000)."""
    model = tiny_model()
    with torch.no_grad():
        proj = model.visual.latent_vit.proj
        proj.copy_(proj.sign() * 6e4)
    return model.half()


BROKEN = {"nan-weights": nan_weight_model, "fp16-overflow": fp16_overflow_model}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_scores_and_probabilities_raise_instead_of_returning_nan(kind):
    model = BROKEN[kind]()
    assert kind == "nan-weights" or all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        assert not torch.isfinite(model.encode_latents(LATENTS)).all()  # the model really is broken
        with pytest.raises(ValueError, match=r"NaN/Inf scores for batch items \[0, 1, 2\] of finite latents"):
            latent_clip.score_latents(model, LATENTS, "a cat")
        with pytest.raises(ValueError, match="NaN/Inf scores"):
            latent_clip.rank_by_prompt(model, LATENTS, "a cat")
        classifier = latent_clip.build_classifier(model, ["cat", "dog"])
        with pytest.raises(ValueError, match="NaN/Inf class probabilities"):
            latent_clip.classify(model, LATENTS, classifier)


@pytest.mark.parametrize("kind", list(BROKEN))
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_safety_check_fails_closed(kind, threshold):
    model = BROKEN[kind]()
    with torch.no_grad():
        result = safety.check(model, LATENTS, safety.parse_concepts("nudity\nviolence"), threshold)
    assert result.flagged.tolist() == [True] * 3 and result.non_finite.tolist() == [True] * 3
    text = safety.report(result)
    assert "flagged 3/3" in text and text.count("BLOCKED (NaN/Inf: no verdict)") == 3 and " ok" not in text


def test_safety_check_still_passes_finite_latents_below_the_threshold():
    with torch.no_grad():
        result = safety.check(tiny_model(), LATENTS, safety.parse_concepts("nudity"), 1.0)
    assert not result.flagged.any() and not result.non_finite.any()


@pytest.mark.comfyui
def test_safety_filter_node_blocks_what_it_cannot_judge(comfy_inprocess):
    import comfy.model_patcher
    pack = comfy_inprocess.pack
    holder = pack.nodes.loaders.ModelHolder(nan_weight_model())
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(holder, load_device=cpu, offload_device=cpu)
    latent = {"samples": LATENTS.clone(), "batch_index": [5, 6, 7]}
    node = pack.nodes.score.LatentCLIPSafetyFilter.PREPARE_CLASS_CLONE({})
    with torch.inference_mode():
        out, flags, any_flagged, report = node.execute(latent=latent, latent_clip=patcher, concepts="nudity",
                                                       threshold=1.0, action="zero", seed=0).result
    assert flags == [True] * 3 and any_flagged and not out["samples"].any()
    assert "BLOCKED (NaN/Inf: no verdict)" in report
    score = pack.nodes.score.LatentCLIPScore.PREPARE_CLASS_CLONE({})
    with torch.inference_mode(), pytest.raises(ValueError, match="NaN/Inf scores"):
        score.execute(latent=latent, latent_clip=patcher, prompt="a cat")
