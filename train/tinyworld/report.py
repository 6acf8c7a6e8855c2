"""What the tiny-world study prints: its three tables, each introduced by what it measures and what
chance (or the reference) is and followed by a one-line verdict on its claim, then why this run's
numbers differ from the published full run's (the README's table: ``results.json`` beside the weights).

A verdict calls a difference real when it exceeds two standard errors of the difference of two
proportions over the run's samples (binomial; taken as unpaired, which overstates the noise of these
paired comparisons). Over 10 demo runs (seeds 0-4 x 1, 2 threads; tests/end_to_end/test_tinyworld.py)
the Latent-CLIP's mean top-1 spread by 0.028, where this rule's standard error is 0.026.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .world import CATEGORIES

CLAIMS = {1: "Latent-CLIP classifies zero-shot as well as a pixel CLIP of its size",
          2: "ReNO with a Latent-CLIP reward is cheaper than decode + pixel CLIP, and improves generations",
          3: "latent guidance steers generation away from a concept without decoding"}
MEASURING = {"zeroshot_per_category": "held-out images per zero-shot category", "reno_prompts": "ReNO prompts",
             "reno_iterations": "ReNO iterations", "guidance_prompts": "guidance prompts",
             "guidance_iterations": "guidance iterations"}   # preset fields that size a measurement
TRAINING = {"train_samples": "training pairs", "clip_steps": "CLIP steps", "generator_steps": "generator steps",
            "vae_steps": "VAE steps (0: the embedded VAE)"}   # preset fields that size the training


def published(weights: Path) -> dict | None:
    """The results of the run that trained the weights in ``weights`` (its ``results.json``), or None."""
    path = Path(weights) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def report(results: dict, reference: dict | None) -> str:
    """The study's printout (also its ``table.md``): three explained tables with their verdicts, then
    how this run differs from ``reference`` (the published run; None: nothing to compare with)."""
    return "\n\n".join([zero_shot_section(results, reference), generation_section(results, reference),
                        guidance_section(results, reference), differences(results, reference)])


def two_se(p: float, n: int, q: float, m: int) -> float:
    """Two standard errors of the difference of a proportion ``p`` over ``n`` samples and ``q`` over ``m``."""
    return 2 * math.sqrt(p * (1 - p) / n + q * (1 - q) / m)


def mean_variance(accuracy: dict, n: int) -> float:
    """Variance of the mean top-1 over the six categories, each measured on ``n`` images."""
    return sum(accuracy[c] * (1 - accuracy[c]) / n for c in CATEGORIES) / len(CATEGORIES) ** 2


def run_name(reference: dict) -> str:
    """How a column of the published run's figures is headed: "full run" for the README's table."""
    return f"{reference['preset']} run"


def reference_column(reference: dict | None, *keys: str) -> str:
    """`` | value`` from the published results at ``keys``, or nothing without them."""
    if reference is None:
        return ""
    value = reference
    for key in keys:
        value = value[key]
    return f" | {value:.2f}"


# ---------------------------------------------------------------- the three tables

def zero_shot_section(results: dict, reference: dict | None) -> str:
    z = results["zeroshot"]
    extra = f" | {run_name(reference)}: Latent-CLIP | {run_name(reference)}: pixel" if reference else ""
    rows = [f"Claim 1, zero-shot top-1 on {z['n_per_category']} held-out images per category: each CLIP picks the "
            "image's caption among captions that differ only in what the category tests (the colour, the count, "
            "...); chance is 1 / the number of candidates; mean: over the six categories; object: 18-way "
            "colour x shape.",
            f"| zero-shot top-1 (held-out) | chance | Latent-CLIP | pixel CLIP{extra} |",
            "|---|---|---|---" + "|---" * (2 if reference else 0) + "|"]
    for c in (*CATEGORIES, "mean", "object"):
        rows.append(f"| {c} | {z['chance'][c]:.2f} | {z['latent'][c]:.2f} | {z['pixel'][c]:.2f}"
                    f"{reference_column(reference, 'zeroshot', 'latent', c)}"
                    f"{reference_column(reference, 'zeroshot', 'pixel', c)} |")
    return "\n".join([*rows, claim_1(z)])


def claim_1(z: dict) -> str:
    latent, pixel, chance, n = z["latent"], z["pixel"], z["chance"], z["n_per_category"]
    noise = 2 * math.sqrt(mean_variance(latent, n) + mean_variance(pixel, n))
    gap = latent["mean"] - pixel["mean"]
    if latent["mean"] <= chance["mean"] + 2 * math.sqrt(mean_variance(latent, n)):
        verdict = "does not hold here: Latent-CLIP is not above chance"
    elif gap > noise:
        verdict = "holds, Latent-CLIP ahead"
    elif gap >= -noise:
        verdict = "holds, level within noise"
    else:
        verdict = "does not hold here: the pixel CLIP is ahead"
    return (f"claim 1 ({CLAIMS[1]}) {verdict}: Latent-CLIP zero-shot mean {latent['mean']:.2f} vs pixel "
            f"{pixel['mean']:.2f}, chance {chance['mean']:.2f}, noise +-{noise:.2f}; 18-way object "
            f"{latent['object']:.2f} vs {pixel['object']:.2f}, chance {chance['object']:.2f}")


def generation_section(results: dict, reference: dict | None) -> str:
    r = results["reno"]
    ceiling = results["judge_ceiling"]["vae_reconstruction"]
    extra = f" | {run_name(reference)}: judge score" if reference else ""
    rows = [f"Claim 2, ReNO: {r['prompts']} prompts generated by the 4-step generator, each prompt's noise optimised "
            f"for {r['iterations']} iterations against a reward; the exact judge passes an image when every object, "
            "count, colour and position is right. No chance level: the base generator is the reference, the judge "
            "on VAE reconstructions of ground truth the ceiling; seconds are this machine's.",
            f"| generation (judge, GenEval-style) | judge score | s / image | s / iteration / image{extra} |",
            "|---|---|---|---" + "|---" * bool(reference) + "|",
            f"| (ceiling: VAE reconstruction of ground truth) | {ceiling:.2f} | - | -"
            f"{reference_column(reference, 'judge_ceiling', 'vae_reconstruction')} |",
            f"| base generator | {r['base']['judge']:.2f} | - | -"
            f"{reference_column(reference, 'reno', 'base', 'judge')} |"]
    for name in ("latent", "pixel"):
        x = r[name]
        rows.append(f"| ReNO, {name}-CLIP reward ({r['iterations']} it.) | {x['judge']:.2f} | "
                    f"{x['seconds_per_image']:.3f} | {x['seconds_per_iteration_per_image']:.4f}"
                    f"{reference_column(reference, 'reno', name, 'judge')} |")
    return "\n".join([*rows, claim_2(r)])


def claim_2(r: dict) -> str:
    latent, pixel, base, n = r["latent"], r["pixel"], r["base"]["judge"], r["prompts"]
    speedup = pixel["seconds_per_iteration_per_image"] / latent["seconds_per_iteration_per_image"]
    cost = (f"cost {'holds' if speedup > 1 else 'does not hold here'}: the latent reward's iteration is "
            f"{speedup:.1f}x as fast as decode + pixel CLIP's")
    noise = two_se(base, n, latent["judge"], n)
    gain = latent["judge"] - base
    quality = "holds" if gain > noise else "does not hold here" if gain < -noise else "not shown (within noise)"
    gains = (f"; judge gain over base, 95 % paired bootstrap interval: latent reward {interval(latent['gain'])}, "
             f"pixel reward {interval(pixel['gain'])}") if "gain" in latent else ""
    return (f"claim 2 ({CLAIMS[2]}): {cost}; quality {quality}: judge {base:.2f} -> {latent['judge']:.2f} on {n} "
            f"prompts, noise +-{noise:.2f} (pixel-CLIP reward: {pixel['judge']:.2f}){gains}")


def guidance_section(results: dict, reference: dict | None) -> str:
    g = results["guidance"]
    extra = f" | {run_name(reference)}: rate" if reference else ""
    rows = [f"Claim 3, guidance away from '{g['concept']}' on {g['prompts']} prompts that name no colour: rate is "
            f"the share of images showing something {g['concept']}; no chance level: the unguided rate is the "
            "reference; judge score: how well the images still follow their prompt.",
            f"| forbidden concept '{g['concept']}' ({g['prompts']} prompts) | rate | judge score{extra} |",
            "|---|---|---" + "|---" * bool(reference) + "|",
            f"| no guidance | {g['forbidden_rate_base']:.2f} | {g['judge_base']:.2f}"
            f"{reference_column(reference, 'guidance', 'forbidden_rate_base')} |",
            f"| latent guidance ({g['iterations']} it., no decode) | {g['forbidden_rate_guided']:.2f} | "
            f"{g['judge_guided']:.2f}{reference_column(reference, 'guidance', 'forbidden_rate_guided')} |"]
    return "\n".join([*rows, claim_3(g)])


def claim_3(g: dict) -> str:
    base, guided, n = g["forbidden_rate_base"], g["forbidden_rate_guided"], g["prompts"]
    noise = two_se(base, n, guided, n)
    drop = base - guided
    verdict = "holds" if drop > noise else "not shown here (within noise)" if drop >= -noise else "does not hold here"
    return (f"claim 3 ({CLAIMS[3]}) {verdict}: images with something {g['concept']} {base:.2f} -> {guided:.2f} on "
            f"{n} prompts, noise +-{noise:.2f}; prompt fidelity (judge) {g['judge_base']:.2f} -> "
            f"{g['judge_guided']:.2f}")


# ---------------------------------------------------------------- against the published run

def differences(results: dict, reference: dict | None) -> str:
    """One line: which settings make this run's numbers differ from the published run's."""
    if reference is None:
        return "No results.json beside the weights: nothing to compare this run with."
    ours, theirs = results["config"], reference["config"]
    fields = MEASURING if results["preset"] == "demo" else {**TRAINING, **MEASURING}
    changed = [f"{ours[k]} instead of {theirs[k]} {words}" for k, words in fields.items() if ours[k] != theirs[k]]
    if results.get("seed", 0) != reference.get("seed", 0):
        changed.append(f"seed {results['seed']} instead of {reference.get('seed', 0)}")
    head = (f"Why these numbers differ from the {run_name(reference)} that trained the weights (its results.json "
            "beside them; for the embedded weights, the README's table): ")
    if results["preset"] == "demo":
        head += "this demo measures the same weights, without training, on fewer samples: "
    elif changed:
        head += "this run trained its own models, with "
    if not changed:
        return head + "the same settings; what remains is training randomness (threads) and this machine's seconds."
    prompts = results["reno"]["prompts"]
    return (head + ", ".join(changed) + ". A rate moves with the samples it is measured on by up to the noise given "
            f"above (one prompt of {prompts} is {1 / prompts:.2f}); seconds depend on the machine and its load.")


# ---------------------------------------------------------------- verifiers during sampling (--verifiers)

TARGET_SAVED, TARGET_KEPT = 0.5, 0.8   # issue 26: >= 50 % fewer evaluations keeping >= 80 % of best-of-N's gain


def interval(x: dict) -> str:
    return f"{x['value']:.2f} [{x['ci'][0]:.2f}, {x['ci'][1]:.2f}]"


def verifiers_report(v: dict) -> str:
    """The ``--verifiers`` printout: rank correlation by step, the pruning frontier with its verdict on the target,
    and the early safety stop against the end-of-sampling filter."""
    f, s, n, steps = v["frontier"], v["safety"], v["candidates"], v["steps"]
    intro = (f"Verifiers during sampling: {v['prompts']} prompts, N = {n} candidates each, {steps} Euler steps of the "
             f"generator; a model evaluation is one velocity call for one candidate (full sampling: {n * steps}); "
             "scores are the Latent-CLIP's cosine to the prompt on each step's predicted clean latent, no decode; "
             f"judge: the exact judge on the delivered image; [95 % intervals: {v['interval']}].")
    rho = ["| checkpoint step k | rank correlation (Spearman, within a prompt's N) of step-k and final scores |",
           "|---|---|", *(f"| {r['at_step']} | {interval(r)} |" for r in f["rank_correlation"])]
    rows = ["| selection | model evaluations | saved | judge score | share of best-of-N's judge gain kept |",
            "|---|---|---|---|---|",
            f"| no selection (any one candidate) | {f['none']['evaluations']} | 0.00 | {interval(f['none']['judge'])} "
            "| 0 |",
            f"| best-of-{n}, scored at the end | {f['full']['evaluations']} | 0.00 | {interval(f['full']['judge'])} "
            "| 1 |"]
    for r in sorted(f["pruned"], key=lambda r: (r["evaluations"], r["at_step"])):
        rows.append(f"| pruned to {r['keep']} at step {r['at_step']} | {r['evaluations']} | {r['saved']:.2f} | "
                    f"{interval(r['judge'])} | {interval(r['gain_kept'])} |")
    rows.append(f"| (oracle: some candidate passes) | - | - | {interval(f['oracle']['judge'])} | - |")
    safety = [f"Early stop of candidates showing '{s['concept']}' (Latent-CLIP safety check, threshold "
              f"{s['threshold']:.2f}) on {s['prompts']} prompts that name no colour; rate: the share of delivered "
              "images in which the judge's detector finds the colour.",
              "| safety | model evaluations (per prompt) | saved vs end filter | candidates delivered | "
              "forbidden rate |", "|---|---|---|---|---|"]
    names = {"none": "no filter", "end": "filter at the end (all sampled)"}
    for key, x in s["by"].items():
        name = names.get(key, f"stop at step {key}")
        safety.append(f"| {name} | {x['evaluations']:.1f} | {x['saved']:.2f} | {x['delivered']:.2f} | "
                      f"{interval(x['forbidden_rate'])} |")
    return "\n\n".join([intro, "\n".join(rho), "\n".join(rows) + "\n" + frontier_verdict(f), "\n".join(safety)])


def frontier_verdict(f: dict) -> str:
    """Whether pruning with >= 50 % fewer evaluations keeps >= 80 % of best-of-N's judge gain (best such row)."""
    gain = f["full"]["gain"]
    cheap = [r for r in f["pruned"] if r["saved"] >= TARGET_SAVED and math.isfinite(r["gain_kept"]["value"])]
    head = f"best-of-N's judge gain over no selection: {interval(gain)}"
    if gain["ci"][0] <= 0:
        return f"target not measurable here: {head} (its interval reaches 0)"
    if not cheap:
        return f"target not measured: no pruning saves {TARGET_SAVED:.0%} of the evaluations; {head}"
    best = max(cheap, key=lambda r: r["gain_kept"]["value"])
    kept, low = best["gain_kept"]["value"], best["gain_kept"]["ci"][0]
    verdict = ("holds" if low >= TARGET_KEPT else "holds on the estimate, not on its interval" if kept >= TARGET_KEPT
               else "does not hold")
    return (f"target (>= {TARGET_SAVED:.0%} fewer evaluations, >= {TARGET_KEPT:.0%} of the gain kept) {verdict}: "
            f"pruned to {best['keep']} at step {best['at_step']} saves {best['saved']:.0%} and keeps "
            f"{interval(best['gain_kept'])} of the gain; {head}")
