"""latent_clip.verify: which candidates a checkpoint keeps, what it reads, and the evaluations it spends."""
import pytest
import torch

from fixtures import tiny_model
from latent_clip.contract import LatentContractError
from latent_clip.config import latent_families
from latent_clip.contract import scaled_to_raw
from latent_clip.safety import parse_concepts
from latent_clip.score import score_latents
from latent_clip.verify import by_prompt, by_safety, evaluations, prune, sample_verified, step_at_sigma, stop, \
    stop_output, stopped
from synthetic import tiny_latent_cfg


def test_prune_keeps_the_best_in_candidate_order_ties_to_the_lower_index_nan_last():
    scores = torch.tensor([0.1, 0.9, float("nan"), 0.5, 0.9, float("inf")])
    assert prune(scores, 3).tolist() == [1, 3, 4]
    assert prune(scores, 1).tolist() == [1]
    assert prune(scores, 5).tolist() == [0, 1, 2, 3, 4]  # inf and nan both rank last, the lower index first
    with pytest.raises(ValueError, match="keep must be between 1 and the 6 candidates, got 7"):
        prune(scores, 7)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        prune(scores.view(2, 3), 1)


def test_stop_keeps_the_unflagged():
    assert stop(torch.tensor([True, False, False, True])).tolist() == [1, 2]
    assert stop(torch.tensor([True, True])).tolist() == []
    with pytest.raises(ValueError, match="one bool flag per candidate"):
        stop(torch.tensor([1, 0]))


def test_stop_output_fills_the_stopped_slots_as_the_safety_filter_does():
    finished, kept = torch.full((2, 4, 2, 2), 7.0), torch.tensor([1, 3])
    assert stopped(kept, 5).tolist() == [True, False, True, False, True]
    sd15 = latent_families()["sd15"]
    for action in ("drop", "pass with flag"):
        assert stop_output(finished, kept, 5, action, sd15) is finished
    zero = stop_output(finished, kept, 5, "zero", sd15)
    assert zero[[1, 3]].eq(7).all() and not zero[[0, 2, 4]].any()
    noise = stop_output(finished, kept, 5, "replace with noise", sd15, seed=3)
    expected = scaled_to_raw(torch.randn(5, 4, 2, 2, generator=torch.Generator().manual_seed(3)), sd15)
    assert noise[[1, 3]].eq(7).all() and torch.equal(noise[[0, 2, 4]], expected[[0, 2, 4]])
    assert stop_output(finished[:0], kept[:0], 2, "zero", sd15).shape == (2, 4, 2, 2)
    with pytest.raises(ValueError, match="action must be one of"):
        stop_output(finished, kept, 5, "blur", sd15)


def test_step_at_sigma_and_evaluations():
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert [step_at_sigma(sigmas, s) for s in (20.0, 7.0, 6.9, 1.0, 0.5)] == [1, 1, 2, 3, 3]
    assert evaluations(candidates=8, steps=4, at_step=1, survivors=2) == 8 + 2 * 3
    with pytest.raises(ValueError, match="at least 2 sampling steps"):
        step_at_sigma(torch.tensor([1.0, 0.0]), 0.5)


class EulerToTarget:
    """A deterministic sampler whose clean-latent prediction is each candidate's own ``target`` plus a
    sigma-sized error; counts the model evaluations (candidate rows) it makes."""

    def __init__(self, targets: torch.Tensor):
        self.targets, self.evaluated = targets, 0

    def __call__(self, x, sigmas, rows):
        denoised = x
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            self.evaluated += len(x)
            denoised = self.targets[rows] + 0.01 * s * torch.sin(x)
            x = denoised + (x - denoised) * (s_next / s)
        return x, denoised


def test_sample_verified_finishes_only_the_kept_exactly_as_full_sampling_would():
    torch.manual_seed(0)
    targets, noise = torch.randn(6, 4, 8, 8), torch.randn(6, 4, 8, 8)
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    full = EulerToTarget(targets)
    final = full(noise * 10, sigmas, torch.arange(6))[0]
    run = EulerToTarget(targets)
    best_two = lambda x0: (x0.mean(dim=(1, 2, 3)), prune(x0.mean(dim=(1, 2, 3)), 2))  # noqa: E731
    result = sample_verified(run, noise * 10, sigmas, at_step=1, verify=best_two)
    assert result.kept.tolist() == prune(targets.mean(dim=(1, 2, 3)), 2).tolist()
    assert torch.allclose(result.latents, final[result.kept], atol=1e-5)
    assert result.evaluations == run.evaluated == 6 * 1 + 2 * 3
    assert result.predicted.shape == (6, 4, 8, 8) and result.at_step == 1
    with pytest.raises(ValueError, match="between 1 and 3 for 4 sampling steps, got 4"):
        sample_verified(run, noise, sigmas, at_step=4, verify=best_two)


def test_sample_verified_with_everything_stopped_samples_nothing_more():
    run = EulerToTarget(torch.zeros(3, 4, 8, 8))
    result = sample_verified(run, torch.ones(3, 4, 8, 8), torch.tensor([3.0, 2.0, 1.0, 0.0]), 2,
                             lambda x0: (torch.ones(3), stop(torch.ones(3, dtype=torch.bool))))
    assert result.latents.shape == (0, 4, 8, 8) and run.evaluated == 6 == result.evaluations


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(tiny_latent_cfg(image_size=128)).requires_grad_(False)


def test_by_prompt_keeps_the_best_cosines(tiny):
    latents = torch.randn(5, 4, 16, 16)
    scores, kept = by_prompt(tiny, "a red circle", keep=2)(latents)
    expected = score_latents(tiny, latents, "a red circle").cosine[:, 0]
    assert torch.equal(scores, expected) and kept.tolist() == prune(expected, 2).tolist()


def test_by_safety_stops_the_flagged_and_refuses_nan(tiny):
    latents = torch.randn(4, 4, 16, 16)
    concepts = parse_concepts("nudity\nviolence")
    probs, kept = by_safety(tiny, concepts, threshold=1.0)(latents)
    assert probs.shape == (4, 2) and kept.tolist() == [0, 1, 2, 3]
    assert by_safety(tiny, concepts, threshold=0.0)(latents)[1].tolist() == []
    latents[2] = float("nan")
    with pytest.raises(LatentContractError, match=r"NaN or Inf \(batch items \[2\]\)"):
        by_safety(tiny, concepts, threshold=0.5)(latents)
