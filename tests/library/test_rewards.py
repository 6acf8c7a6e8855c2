"""Rewards (latent_clip.rewards) on a tiny Latent-CLIP and a tiny open_clip model."""
import pytest
import torch
import torch.nn.functional as F

from fixtures import tiny_model
from latent_clip.pixel_clip import clip_preprocess
from latent_clip.rewards import clip_score_loss, concept_loss, latent_alignment, latent_avoid, \
    pixel_alignment, step_away, weighted_sum
from synthetic import tiny_latent_cfg


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(tiny_latent_cfg(image_size=512)).requires_grad_(False)


def test_clip_score_loss_is_renos():
    f = F.normalize(torch.randn(3, 8), dim=-1)
    t = F.normalize(torch.randn(1, 8), dim=-1)
    scale = torch.tensor(100.0).log()
    assert torch.allclose(clip_score_loss(f, t, scale), 100 - 100.0 * (f @ t.T).squeeze(1), atol=1e-3)
    assert torch.allclose(clip_score_loss(t, t, scale), torch.tensor([0.0]), atol=1e-3)


def test_concept_loss_is_minus_log_p_neutral():
    f = F.normalize(torch.randn(2, 8), dim=-1)
    c, n = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(2.0)
    logits = torch.stack([f @ c.T, f @ n.T], -1) * scale.exp()
    expected = -logits.log_softmax(-1)[..., 1].sum(-1)
    assert torch.allclose(concept_loss(f, c, n, scale), expected, atol=1e-5)


def test_latent_rewards_are_per_sample_and_differentiable(tiny):
    z = torch.randn(2, 4, 32, 40, requires_grad=True)  # any size: pooled to the trained one
    align, avoid = latent_alignment(tiny, "a red apple"), latent_avoid(tiny, "gore\n\nnudity | a clothed person")
    total = weighted_sum({"align": align, "avoid": avoid, "off": lambda _: 1 / 0}, {"align": 0.01, "avoid": 1.0})
    loss = total(z)
    assert loss.shape == (2,) and loss.dtype == torch.float32
    assert torch.allclose(loss, 0.01 * align(z) + avoid(z))
    loss.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert torch.allclose(align(z[:1]), align(z)[:1], atol=1e-4)
    with pytest.raises(ValueError):
        latent_avoid(tiny, [])
    with pytest.raises(KeyError):
        weighted_sum({"a": align}, {"b": 1.0})


def test_step_away_lowers_the_concept_loss(tiny):
    avoid = latent_avoid(tiny, "a cat")
    z = torch.randn(1, 4, 64, 64)
    before = avoid(z)
    with torch.inference_mode():  # as inside a ComfyUI node
        z_inf = z.clone()
        for _ in range(5):
            z_inf, _ = step_away(z_inf, avoid, strength=0.05)
    assert avoid(z_inf.clone()) < before


def test_pixel_alignment_through_a_decoder():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import tokenize

    torch.manual_seed(0)
    clip = CLIP(16, CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
                CLIPTextCfg(width=32, heads=1, layers=1)).eval().requires_grad_(False)
    decoder = torch.nn.Sequential(torch.nn.Upsample(scale_factor=8), torch.nn.Conv2d(4, 3, 3, padding=1))
    decoder.requires_grad_(False)
    reward = pixel_alignment(clip, tokenize, "a red apple", lambda z: decoder(z).tanh())
    z = torch.randn(2, 4, 8, 6, requires_grad=True)
    loss = reward(z)
    loss.sum().backward()
    assert loss.shape == (2,) and z.grad.abs().sum() > 0
    assert clip_preprocess(torch.zeros(1, 3, 64, 48), 32).shape == (1, 3, 32, 32)


def test_avoid_matches_the_safety_filter_probabilities(tiny):
    from latent_clip import safety

    concepts = safety.parse_concepts("gore\nviolence")
    z = torch.randn(3, 4, 64, 64)
    p = safety.concept_probs(tiny, z, concepts)
    assert torch.allclose(latent_avoid(tiny, concepts)(z), -(1 - p).log().sum(-1), atol=1e-4)
