"""Latent verifiers during sampling, measured in the tiny world (issue 26): how well a candidate's score at step
k predicts its final score, what pruning N candidates to m at step k keeps of best-of-N's judge gain for the
model evaluations it saves, and what stopping forbidden candidates at step k saves over filtering at the end.

    python -m train tinyworld --verifiers [--quick] [--weights latent_clip/assets/tinyworld] [--out DIR]

Every pruned and stopped run goes through :func:`latent_clip.verify.sample_verified` with
:func:`~latent_clip.verify.by_prompt` / :func:`~latent_clip.verify.by_safety` on the generator's predicted clean
latents (raw, as the Latent-CLIP reads them); a model evaluation is one velocity call for one candidate. Intervals
are 95 % paired percentile bootstraps over prompts (:func:`bootstrap`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from latent_clip.score import score_latents
from latent_clip.verify import Verified, by_prompt, by_safety, evaluations, sample_verified

from . import steer
from .judge import detect, to_uint8
from .vae import SCALING_FACTOR
from .world import CATEGORIES, PREFIXES, make_sample

BOOTSTRAP = 2000
SAFETY_THRESHOLD = 0.5   # p(forbidden colour) against any other colour; the Safety Filter node's default


@dataclass(frozen=True)
class Setup:
    """A frontier measurement: ``prompts`` prompts (and as many colour-open ones for the safety stop), ``candidates``
    N per prompt, ``steps`` S Euler steps; pruning keeps each of ``keeps`` at every step k in 1..S-1."""

    prompts: int
    candidates: int
    steps: int
    keeps: tuple[int, ...]


@dataclass
class FlowRun:
    """``run(x, sigmas, rows)`` for :func:`latent_clip.verify.sample_verified`: Euler steps of the tiny rectified flow
    (t = 1 - sigma, t 0 -> 1) on model-space latents ``x`` with candidate ``rows``' text; returns x at the last sigma
    and the last step's predicted clean latent ``x + sigma * v`` as a raw latent. Counts its model evaluations."""

    model: torch.nn.Module
    text: torch.Tensor   # (N, cond): every candidate's caption embedding
    evaluated: int = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigmas: torch.Tensor, rows: torch.Tensor):
        text, predicted = self.text[rows], x
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            v = self.model.velocity(x, (1 - sigma).expand(len(x)), text)
            self.evaluated += len(x)
            predicted = x + sigma * v
            x = x + (sigma - sigma_next) * v
        return x, predicted / SCALING_FACTOR


def sigmas_for(steps: int) -> torch.Tensor:
    """The generator's Euler schedule as sigmas: 1 - t for t = 0, 1/S, ..., 1 (what ``TinyFlowModel.sample`` runs)."""
    return torch.linspace(1.0, 0.0, steps + 1)


def bootstrap(per_prompt: np.ndarray, statistic=np.mean, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``statistic`` over prompts (rows of ``per_prompt``, resampled together); resamples
    where the statistic is undefined (NaN: a ratio over a zero gain) are left out."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(per_prompt), (BOOTSTRAP, len(per_prompt)))
    values = np.array([statistic(per_prompt[r]) for r in rows])
    if np.isnan(values).all():
        return float("nan"), float("nan")
    return float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))


def estimate(per_prompt: np.ndarray, statistic=np.mean, seed: int = 0) -> dict:
    """``{"value", "ci"}``: ``statistic`` over all prompts and its bootstrap interval."""
    return {"value": float(statistic(per_prompt)), "ci": bootstrap(per_prompt, statistic, seed)}


def gain_fraction(pairs: np.ndarray) -> float:
    """(pruned - none) / (full - none) from per-prompt columns (none, full, pruned): the share of best-of-N's
    judge gain that pruning keeps (NaN when best-of-N gains nothing)."""
    none, full, pruned = pairs.mean(0)
    return float((pruned - none) / (full - none)) if full != none else float("nan")


# ---------------------------------------------------------------- one prompt's candidates

@dataclass
class Candidates:
    """One prompt's N candidates sampled to the end: ``scores`` (S, N) the Latent-CLIP cosine of each step's
    predicted clean latent to the prompt (row S-1: the final latent), ``ok`` (N,) the judge on the decoded finals."""

    prompt: str
    noise: torch.Tensor
    run: FlowRun
    final: torch.Tensor
    scores: np.ndarray
    ok: np.ndarray


def sample_all(models: dict, prompt: str, spec, noise: torch.Tensor, steps: int) -> Candidates:
    """Sample every candidate step by step (N*S evaluations), scoring each step's predicted clean latent."""
    run = FlowRun(models["generator"], models["generator"].embed([prompt] * len(noise)))
    sigmas, x, scores = sigmas_for(steps), noise, []
    rows = torch.arange(len(noise))
    for k in range(steps):
        x, predicted = run(x, sigmas[k:k + 2], rows)
        scores.append(score_latents(models["latent"], predicted, prompt).cosine[:, 0].numpy())
    final = x / SCALING_FACTOR
    ok = steer.judge_latents(models["vae"], final, [spec] * len(noise))[0]
    return Candidates(prompt, noise, run, final, np.stack(scores), ok)


def pruned_choice(models: dict, c: Candidates, steps: int, at_step: int, keep: int) -> tuple[int, Verified]:
    """Prune ``c``'s candidates to ``keep`` at ``at_step`` (sample_verified + by_prompt) and finish the survivors;
    the candidate delivered is the survivor with the best final score (decode-free)."""
    result = sample_verified(c.run, c.noise, sigmas_for(steps), at_step, by_prompt(models["latent"], c.prompt, keep))
    final = score_latents(models["latent"], result.latents / SCALING_FACTOR, c.prompt).cosine[:, 0]
    return int(result.kept[int(final.argmax())]), result


# ---------------------------------------------------------------- the three measurements

def prompts(seed: int, n: int, categories=CATEGORIES) -> list:
    return [make_sample(seed, i, categories[i % len(categories)], prefix=False) for i in range(n)]


def prompt_noise(seed: int, index: int, candidates: int, generator) -> torch.Tensor:
    c, s = generator.config["channels"], generator.config["size"]
    return torch.randn(candidates, c, s, s, generator=torch.Generator().manual_seed(seed * 100_003 + index))


def measure(models: dict, setup: Setup, seed: int, colour: str) -> dict:
    """The frontier on prompts of world seed ``10 * seed + 6`` and the safety stop against ``colour`` on world
    ``10 * seed + 7`` (the study's other stages use 0-4, the example latents 5)."""
    world = 10 * seed + 6
    return {"candidates": setup.candidates, "steps": setup.steps, "prompts": setup.prompts,
            "interval": f"95 % paired percentile bootstrap over prompts ({BOOTSTRAP} resamples)",
            "frontier": frontier(models, setup, world), "safety": safety_stop(models, setup, world + 1, colour)}


def frontier(models: dict, setup: Setup, seed: int) -> dict:
    """Rank correlation by step, and the judge score of no selection, full and pruned best-of-N per evaluation."""
    n, s = setup.candidates, setup.steps
    none, full, oracle, rho = [], [], [], []
    pruned = {(k, m): [] for k in range(1, s) for m in setup.keeps}
    for i, sample in enumerate(prompts(seed, setup.prompts)):
        prompt = PREFIXES[1] + sample.spec.phrase()
        c = sample_all(models, prompt, sample.spec, prompt_noise(seed, i, n, models["generator"]), s)
        none.append(c.ok.mean())
        full.append(float(c.ok[int(np.argmax(c.scores[-1]))]))
        oracle.append(float(c.ok.any()))
        rho.append([spearmanr(c.scores[k - 1], c.scores[-1]).statistic for k in range(1, s)])
        for k, m in pruned:
            chosen, result = pruned_choice(models, c, s, k, m)
            if result.evaluations != evaluations(n, s, k, m):
                raise RuntimeError(f"pruning at step {k} to {m} spent {result.evaluations} evaluations, "
                                   f"expected {evaluations(n, s, k, m)}")
            pruned[k, m].append(float(c.ok[chosen]))
    none, full, rho = np.array(none), np.array(full), np.nan_to_num(np.array(rho))  # constant scores: rho 0
    rows = []
    for (k, m), ok in pruned.items():
        triple = np.stack([none, full, np.array(ok)], axis=1)
        rows.append({"at_step": k, "keep": m, "evaluations": evaluations(n, s, k, m),
                     "saved": 1 - evaluations(n, s, k, m) / (n * s), "judge": estimate(triple[:, 2], seed=seed),
                     "gain_kept": estimate(triple, gain_fraction, seed=seed)})
    return {"none": {"evaluations": n * s, "judge": estimate(none, seed=seed)},
            "full": {"evaluations": n * s, "judge": estimate(full, seed=seed),
                     "gain": estimate(full - none, seed=seed)},
            "oracle": {"judge": estimate(np.array(oracle), seed=seed)},
            "rank_correlation": [{"at_step": k, **estimate(rho[:, k - 1], seed=seed)} for k in range(1, s)],
            "pruned": rows}


def safety_stop(models: dict, setup: Setup, seed: int, colour: str, threshold: float = SAFETY_THRESHOLD) -> dict:
    """Forbidden-colour rate of the delivered images and evaluations: no filter, the end-of-sampling filter (all N
    sampled, flagged finals dropped) and the early stop at each step k (flagged candidates not finished)."""
    n, s = setup.candidates, setup.steps
    open_colour = [c for c in CATEGORIES if c not in ("colors", "color_attr")]
    samples = [x for x in prompts(seed, 3 * setup.prompts, open_colour)
               if all(q.colour is None for q in x.spec.queries)][:setup.prompts]
    concepts = steer.avoid_concepts(colour)
    verify = by_safety(models["latent"], concepts, threshold)
    counts = {"none": [], "end": [], **{k: [] for k in range(1, s)}}   # per prompt: (delivered, forbidden, evals)
    for i, sample in enumerate(samples):
        prompt = PREFIXES[1] + sample.spec.phrase()
        noise = prompt_noise(seed, i, n, models["generator"])
        run = FlowRun(models["generator"], models["generator"].embed([prompt] * n))
        final = run(noise, sigmas_for(s), torch.arange(n))[0] / SCALING_FACTOR
        red = forbidden(models, final, colour)
        kept = verify(final)[1].numpy()
        counts["none"].append((n, red.sum(), n * s))
        counts["end"].append((len(kept), red[kept].sum(), n * s))
        for k in range(1, s):
            result = sample_verified(run, noise, sigmas_for(s), k, verify)
            delivered = result.kept.numpy()
            counts[k].append((len(delivered), red[delivered].sum(), result.evaluations))
    rate = lambda a: a[:, 1].sum() / max(a[:, 0].sum(), 1)  # noqa: E731  forbidden share of delivered images
    out = {}
    for key, rows in counts.items():
        a = np.array(rows, dtype=float)
        out[str(key)] = {"forbidden_rate": estimate(a, rate, seed=seed), "delivered": float(a[:, 0].mean() / n),
                         "evaluations": float(a[:, 2].mean()), "saved": float(1 - a[:, 2].mean() / (n * s))}
    return {"concept": colour, "threshold": threshold, "prompts": len(samples), "by": out}


def forbidden(models: dict, raw: torch.Tensor, colour: str) -> np.ndarray:
    """(N,) bool: the judge's detector finds an object of ``colour`` in each decoded raw latent."""
    with torch.no_grad():
        images = to_uint8(models["vae"].decode(raw).sample)
    return np.array([any(d.colour == colour for d in detect(img)) for img in images])
