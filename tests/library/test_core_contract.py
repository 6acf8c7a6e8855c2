"""The latent contract: accepted inputs, clear errors, sizes, scaling, chunking, gradients."""
import pytest
import torch
import torch.nn.functional as F

from latent_clip import (LatentContractError, get_latent_family, raw_to_scaled, scaled_to_raw, score_latents,
                         rank_by_prompt, build_classifier, classify)
from latent_clip.zeroshot import parse_labels
from official_layout import random_model, reduced_config


@pytest.fixture(scope="module")
def model():
    return random_model(reduced_config("Latent-ViT-B-8-512"), seed=11, vae_encoder=False)


def test_default_resize_policy_is_the_measured_one(model):
    assert model.resize_policy == "interpolate"


@pytest.mark.parametrize("shape, dtype, message", [
    ((2, 16, 64, 64), torch.float32, r"reads 4-channel SDXL.* got 16 channels — a SD3 .* or FLUX\.1 VAE latent\?"),
    ((2, 64, 64, 4), torch.float32, r"channels-last \(NHWC\).*permute\(0, 3, 1, 2\)"),
    ((4, 64, 64), torch.float32, r"must be batched.*z\[None\]"),
    ((1, 4, 8, 64, 64), torch.float32, r"4-D.*video latent"),
    ((0, 4, 64, 64), torch.float32, r"empty"),
    ((1, 4, 64, 64), torch.int64, r"floating point"),
    ((1, 4, 4, 4), torch.float32, r"smaller than one patch"),
])
def test_bad_latents_get_specific_errors(model, shape, dtype, message):
    with pytest.raises(LatentContractError, match=message):
        model.encode_latents(torch.zeros(shape, dtype=dtype))


def test_a_channel_error_names_the_family_shortly():
    """The embedded tiny-world model on FLUX latents: one short sentence with the family's short name."""
    from latent_clip import load_model
    from latent_clip.config import DEMO_WEIGHTS
    with pytest.raises(LatentContractError) as err:
        load_model(DEMO_WEIGHTS).encode_latents(torch.zeros(1, 16, 8, 8))
    assert str(err.value) == ("this model reads 4-channel tiny-world demo VAE latents ('tinyworld'), got 16 channels "
                              "— a SD3 / SD3.5 VAE or FLUX.1 VAE latent?")


def test_non_finite_latents_name_the_items(model):
    z = torch.randn(3, 4, 64, 64)
    z[2, 0, 5, 5] = float("nan")
    with pytest.raises(LatentContractError, match=r"NaN or Inf \(batch items \[2\]\)"):
        model.encode_latents(z)
    with pytest.raises(LatentContractError, match="torch.Tensor"):
        model.encode_latents([[0.0]])


def test_scaling_roundtrip_uses_family_data():
    sdxl, sd3 = get_latent_family("sdxl"), get_latent_family("sd3")
    assert sdxl.scaling_factor == 0.13025 and sdxl.shift_factor == 0.0
    raw = torch.randn(2, 4, 8, 8) * 5
    assert torch.allclose(scaled_to_raw(raw * 0.13025, sdxl), raw, atol=1e-5)
    raw16 = torch.randn(1, 16, 8, 8)
    assert torch.allclose(scaled_to_raw(raw_to_scaled(raw16, sd3), sd3), raw16, atol=1e-5)
    assert torch.allclose(raw_to_scaled(raw16, sd3), (raw16 - 0.0609) * 1.5305)


def test_1024px_latents_pool_to_trained_size(model, monkeypatch):
    """Pooling a 2x-nearest-upsampled latent recovers the 64x64 latent exactly."""
    z64 = torch.randn(2, 4, 64, 64) * 4
    z128 = F.interpolate(z64, scale_factor=2, mode="nearest")
    monkeypatch.setattr(model, "resize_policy", "pool")
    with torch.no_grad():
        assert torch.allclose(model.encode_latents(z128), model.encode_latents(z64), atol=1e-5)


@pytest.mark.parametrize("policy", ["pool", "interpolate"])
@pytest.mark.parametrize("hw", [(128, 128), (128, 96), (96, 160), (40, 40), (67, 71)])
def test_any_latent_size_is_encoded(model, policy, hw, monkeypatch):
    monkeypatch.setattr(model, "resize_policy", policy)
    with torch.no_grad():
        f = model.encode_latents(torch.randn(2, 4, *hw))
    assert f.shape == (2, 48) and torch.allclose(f.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_interpolated_position_embedding_is_identity_at_trained_size(model, monkeypatch):
    z = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        monkeypatch.setattr(model, "resize_policy", "pool")
        pooled = model.encode_latents(z)
        monkeypatch.setattr(model, "resize_policy", "interpolate")
        interpolated = model.encode_latents(z)
    assert torch.equal(pooled, interpolated)


def test_chunking_does_not_change_results(model):
    z = torch.randn(5, 4, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.encode_latents(z, chunk_size=2), model.encode_latents(z), atol=1e-6)


def test_raw_features_and_gradients(model):
    z = (torch.randn(2, 4, 64, 64) * 4).requires_grad_()
    raw = model.encode_latents(z, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))
    text = model.encode_text("a red bus")
    (raw @ text.T).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_scores_and_ranking(model):
    z = torch.randn(4, 4, 64, 64)
    with torch.no_grad():
        s = score_latents(model, z, ["a red bus", "a dog"])
        expected = model.encode_latents(z) @ model.encode_text(["a red bus", "a dog"]).T
        order, cos = rank_by_prompt(model, z, "a dog")
    assert torch.allclose(s.cosine, expected, atol=1e-6)
    assert torch.allclose(s.logits, s.cosine * model.logit_scale.exp(), atol=1e-5)
    assert torch.equal(order, torch.argsort(expected[:, 1], descending=True))
    assert torch.allclose(cos, expected[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        score_latents(model, z, ["ok", "  "])


def test_zero_shot_ensemble_matches_manual_computation(model):
    labels = parse_labels("cat\n\n  dog \nbus\n")
    assert labels == ["cat", "dog", "bus"]
    templates = ["a photo of a {}.", "a drawing of a {}."]
    z = torch.randn(3, 4, 64, 64)
    with torch.no_grad():
        classifier = build_classifier(model, labels, templates)
        probs = classify(model, z, classifier)
        manual = torch.stack([F.normalize(model.encode_text([t.format(c) for t in templates]).mean(0), dim=0)
                              for c in labels], dim=1)
        logits = model.logit_scale.exp() * model.encode_latents(z) @ manual
    assert classifier.shape == (48, 3)
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    with pytest.raises(ValueError, match="no class labels"):
        build_classifier(model, [], templates)
    with pytest.raises(ValueError, match="must each contain"):
        build_classifier(model, labels, ["a photo"])


def test_batched_calls_report_progress_per_chunk_and_stop_when_it_raises(model):
    from latent_clip.safety import Concept, concept_probs

    z = torch.randn(5, 4, 64, 64)
    seen = []
    features = model.encode_latents(z, chunk_size=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    torch.testing.assert_close(features, model.encode_latents(z, chunk_size=2))
    for call in (lambda p: score_latents(model, z, "a dog", progress=p),
                 lambda p: classify(model, z, build_classifier(model, ["dog", "cat"]), progress=p),
                 lambda p: concept_probs(model, z, [Concept("dog", "a dog", "a cat")], progress=p)):
        seen.clear()
        call(lambda done, total: seen.append((done, total)))
        assert seen[-1] == (5, 5)
    with pytest.raises(ZeroDivisionError):  # whatever progress raises stops the call
        score_latents(model, z, "a dog", progress=lambda done, total: 1 / 0)
