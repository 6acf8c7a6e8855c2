"""The ReNO loop (latent_clip.reno) on small differentiable generators with known optima."""
import itertools
import math

import pytest
import torch

from latent_clip.reno import (NonFiniteError, RenoProgress, clip_grad_norm_per_sample_, norm_regulariser,
                              optimize_noise, private_saved_tensors)

SHAPE = (4, 8, 8)  # d = 256


def _cos_problem(seed=0, batch=2):
    """generate = a fixed invertible linear map; reward = 100 - 100 cos(latent, target).
    The optimum direction is known (A e ∝ target); the reward ignores the norm, so the
    regulariser alone sets it (to sqrt(d - 1))."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(SHAPE)
    a = torch.eye(d) + 0.1 * torch.randn(d, d, generator=g) / math.sqrt(d)
    target = torch.randn(batch, d, generator=g)

    def generate(e):
        return (e.flatten(1) @ a.T).view(e.shape)

    def reward(latent):  # ReNO's CLIPScore loss at its weight 0.01: 0.01 * (100 - 100 cos)
        return 1 - torch.nn.functional.cosine_similarity(latent.flatten(1), target, dim=1)

    noise = torch.randn(batch, *SHAPE, generator=g)
    return generate, reward, noise


def test_loop_raises_reward_and_keeps_norm_on_the_shell():
    generate, reward, noise = _cos_problem()
    result = optimize_noise(generate, reward, noise, iterations=30)
    assert result.history.shape == (30, 2)
    assert (result.best_loss < 0.5 * result.initial_loss).all()
    d = math.prod(SHAPE)
    norms = result.best_noise.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, math.sqrt(d)), rtol=0.1)
    assert not result.best_noise.requires_grad and not result.best_latent.requires_grad


def test_returns_the_true_best_iterate():
    generate, reward, noise = _cos_problem(seed=1)
    # lr large enough that the trajectory overshoots, so the best is not the last iterate
    result = optimize_noise(generate, reward, noise, iterations=12, lr=400.0)
    best = result.history.min(0)
    assert torch.equal(result.best_loss, best.values)
    assert torch.equal(result.best_iteration, best.indices)
    assert torch.allclose(result.best_latent, generate(result.best_noise))
    assert torch.allclose(reward(result.best_latent), result.best_loss, atol=1e-4)
    assert (result.best_iteration < 11).any(), "test setup: expected an overshooting trajectory"


def test_last_iteration_is_evaluated_not_stepped():
    generate, reward, noise = _cos_problem()
    seen = []
    optimize_noise(lambda e: (seen.append(e.detach().clone()), generate(e))[1], reward, noise, iterations=3)
    assert len(seen) == 3 and torch.equal(seen[0], noise)
    one = optimize_noise(generate, reward, noise, iterations=1)
    assert torch.equal(one.best_noise, noise) and one.history.shape == (1, 2)


def test_callback_sees_progress_and_can_stop():
    generate, reward, noise = _cos_problem()
    seen: list[RenoProgress] = []

    def stop_at_3(p):
        seen.append(p)
        return p.iteration == 3

    result = optimize_noise(generate, reward, noise, iterations=50, callback=stop_at_3)
    assert result.stopped and result.history.shape == (4, 2) and len(seen) == 4
    assert seen[-1].iterations == 50 and torch.equal(seen[-1].best_loss, result.best_loss)
    assert len(result.iteration_seconds) == 4 and result.seconds > 0


def test_regulariser_value_and_gradient_match_the_formula():
    e = torch.randn(3, *SHAPE, dtype=torch.float64, requires_grad=True)
    d = math.prod(SHAPE)
    reg = norm_regulariser(e, weight=0.01)
    n = e.detach().flatten(1).norm(dim=1)
    assert reg.dtype == torch.float32 and reg.shape == (3,)
    assert torch.allclose(reg.double(), 0.01 * (0.5 * n**2 - (d - 1) * n.log()), rtol=1e-5)
    reg.sum().backward()
    expected = 0.01 * (e.detach() - (d - 1) * e.detach() / n.view(-1, 1, 1, 1) ** 2)
    assert torch.allclose(e.grad, expected, rtol=1e-4, atol=1e-6)
    # minimum on the chi shell
    shell = torch.randn(1, d)
    radii = torch.linspace(0.8, 1.2, 41) * math.sqrt(d - 1)
    values = torch.stack([norm_regulariser(shell / shell.norm() * r) for r in radii]).flatten()
    assert values.argmin() == 20


def test_grad_clip_is_per_sample():
    g = torch.stack([torch.full(SHAPE, 10.0), torch.full(SHAPE, 1e-4)])
    small = g[1].clone()
    norms = clip_grad_norm_per_sample_(g, 0.1)
    assert torch.allclose(g[0].norm(), torch.tensor(0.1), rtol=1e-4)
    assert torch.equal(g[1], small) and norms.shape == (2,)


def test_samples_are_independent():
    generate, reward, noise = _cos_problem(seed=2, batch=2)
    both = optimize_noise(generate, reward, noise, iterations=8)
    for i in range(2):
        one = optimize_noise(generate, lambda z, i=i: reward_at(reward, z, i, 2), noise[i:i + 1], iterations=8)
        assert torch.allclose(one.best_noise, both.best_noise[i:i + 1], atol=1e-5)
        assert torch.allclose(one.history[:, 0], both.history[:, i], atol=1e-4)
        assert one.best_iteration.item() == both.best_iteration[i].item()


def reward_at(reward, z, i, batch):
    """Evaluate a batch-`batch` reward on a single sample placed at index i."""
    padded = torch.ones(batch, *z.shape[1:])
    padded[i:i + 1] = z
    return reward(padded)[i:i + 1]


def test_runs_under_inference_mode_and_rejects_bad_rewards():
    generate, reward, noise = _cos_problem()
    with torch.inference_mode():
        inf_noise = noise.clone()
        result = optimize_noise(generate, reward, inf_noise, iterations=3)
    assert (result.best_loss <= result.initial_loss).all()
    with pytest.raises(ValueError, match="one loss per sample"):
        optimize_noise(generate, lambda z: reward(z).sum(), noise, iterations=2)
    with pytest.raises(ValueError):
        optimize_noise(generate, reward, noise, iterations=0)


def test_private_saved_tensors_gives_the_out_of_place_gradient():
    """A forward that updates saved activations in place (as ComfyUI's FLUX blocks do) fails
    backward as it is; under private_saved_tensors its gradient equals the out-of-place
    computation's, also when one tensor is saved by several ops and changed between them."""
    def forward(x, in_place: bool):
        y = x * 2
        z = torch.nn.functional.layer_norm(y, (4,))
        w = y * z                     # y saved by layer_norm and by mul: one shared copy
        if in_place:
            y += z                    # changes y after both saved it
            y *= z
            y[:, :1] = z[:, :1]       # __setitem__ writes too
        else:
            y = (y + z) * z
            y = torch.cat([z[:, :1], y[:, 1:]], dim=1)
        return w.sum() + (y * z).sum() + torch.nn.functional.layer_norm(y, (4,)).square().sum()

    x = torch.randn(3, 4, requires_grad=True)
    (expected,) = torch.autograd.grad(forward(x, False), x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(forward(x, True), x)
    with private_saved_tensors():
        loss = forward(x, True)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], expected)


def test_an_unbackwarded_graph_under_private_saved_tensors_is_released():
    """ReNO's last evaluation is never backwarded (nor an interrupted one). Ops that save their
    output (exp, softmax) must not tie the graph into a cycle through the saved-tensor hooks that
    Python cannot collect: that kept a whole UNet alive after every ComfyUI run."""
    import gc
    import weakref

    def unbackwarded_graph():
        weight = torch.nn.Parameter(torch.randn(64, 64), requires_grad=False)
        x = torch.randn(4, 64, requires_grad=True)
        with private_saved_tensors():
            loss = (x @ weight).softmax(-1).exp().sum()
        assert loss.grad_fn is not None
        return weakref.ref(weight)

    alive = unbackwarded_graph()
    gc.collect()
    assert alive() is None


def _flaky(generate, nan_at: dict[int, list[int]]):
    """``generate`` whose output is NaN for the samples ``nan_at[it]`` at evaluation ``it``."""
    calls = itertools.count()

    def out(e):
        bad = nan_at.get(next(calls), [])
        return generate(e).index_fill(0, torch.tensor(bad, dtype=torch.long), float("nan"))

    return out


def _finite_only(reward):
    def checked(latent):  # as Latent-CLIP's contract does: a NaN latent is an error
        assert torch.isfinite(latent).all(), "the reward was given a non-finite latent"
        return reward(latent)

    return checked


def test_non_finite_iterates_are_never_chosen_and_the_best_finite_one_is_returned():
    generate, reward, noise = _cos_problem(seed=3)
    clean = optimize_noise(generate, reward, noise, iterations=10)
    with pytest.warns(RuntimeWarning, match=r"NaN/Inf latents, rewards or gradients .*\{1: 3\} of 10"):
        result = optimize_noise(_flaky(generate, {3: [1], 4: [1], 9: [1]}), _finite_only(reward), noise, iterations=10)
    assert result.nonfinite.tolist() == [0, 3]
    assert torch.isnan(result.history[[3, 4, 9], 1]).all() and torch.isfinite(result.history[:, 0]).all()
    assert result.best_iteration[1] not in (3, 4, 9) and torch.isfinite(result.best_noise).all()
    assert torch.allclose(result.best_latent[1], generate(result.best_noise)[1], atol=1e-5)
    # sample 0 never saw a NaN: its trajectory is the clean run's
    torch.testing.assert_close(result.history[:, 0], clean.history[:, 0])
    assert result.best_iteration[0] == clean.best_iteration[0]


def test_a_non_finite_reward_or_gradient_takes_no_step():
    generate, reward, noise = _cos_problem(seed=4, batch=1)

    calls = itertools.count()

    def nan_reward(latent):  # the reward itself breaks at evaluation 1
        return reward(latent) * (float("nan") if next(calls) == 1 else 1.0)

    def nan_gradient(e):  # forward unchanged, backward NaN (d sqrt(u) at u = 0)
        return generate(e) + 0 * (e - e.detach()).abs().sqrt()

    with pytest.warns(RuntimeWarning, match=r"\{0: 1\} of 3"):
        result = optimize_noise(generate, nan_reward, noise, iterations=3, momentum=0.0)
    assert result.history[1].isnan().all() and result.best_iteration.item() != 1
    with pytest.warns(RuntimeWarning, match=r"\{0: 2\} of 3"):
        frozen = optimize_noise(nan_gradient, reward, noise, iterations=3)
    torch.testing.assert_close(frozen.history[2], frozen.history[0])  # no step was taken
    assert torch.equal(frozen.best_noise, noise)


def test_a_non_finite_first_iterate_is_an_error():
    generate, reward, noise = _cos_problem(seed=5, batch=3)
    with pytest.raises(NonFiniteError, match=r"first iterate.*batch items \[0, 2\].*nothing to optimise from"):
        optimize_noise(_flaky(generate, {0: [0, 2]}), _finite_only(reward), noise, iterations=5)
