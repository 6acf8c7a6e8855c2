"""Tiny world: the judge is exact on ground truth, the study trains models that learn, and the
embedded weights run the demo."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from train.tinyworld import study
from train.tinyworld.judge import detect, judge, judge_batch
from train.tinyworld.world import CATEGORIES, COLOURS, RELATIONS, SHAPES, Query, Spec, make_sample, make_samples

ASSETS = study.ASSETS


def test_world_is_a_pure_function_of_seed_and_index():
    a, b = make_sample(7, 3), make_sample(7, 3)
    assert a.caption == b.caption and a.spec == b.spec and np.array_equal(a.image, b.image)
    assert not np.array_equal(make_sample(8, 3).image, a.image)
    assert {s.spec.category for s in make_samples(0, 200)} == set(CATEGORIES)


def test_judge_is_right_on_ground_truth():
    samples = make_samples(11, 600)
    ok = judge_batch(np.stack([s.image for s in samples]), [s.spec for s in samples])
    assert ok.mean() >= 0.99


def _mismatch(spec: Spec) -> Spec:
    """The same spec with the tested attribute changed, so the ground truth must fail it."""
    q = spec.queries
    other = lambda xs, x: next(v for v in xs if v != x)  # noqa: E731
    if spec.category == "position":
        flipped = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        return replace(spec, relation=flipped[spec.relation])
    if spec.category == "counting":
        return replace(spec, queries=(replace(q[0], count=q[0].count % 4 + 1),))
    if spec.category == "color_attr":
        return replace(spec, queries=(replace(q[0], colour=q[1].colour), replace(q[1], colour=q[0].colour)))
    if spec.category == "colors":
        return replace(spec, queries=(replace(q[0], colour=other(COLOURS, q[0].colour)),))
    if spec.category == "single_object":
        return replace(spec, queries=(replace(q[0], shape=other(SHAPES, q[0].shape)),))
    taken = {q[0].shape, q[1].shape}
    return replace(spec, queries=(q[0], Query(next(s for s in SHAPES if s not in taken))))


def test_judge_fails_mismatched_specs():
    samples = make_samples(12, 300)
    wrong = [judge(s.image, _mismatch(s.spec)) for s in samples]
    assert np.mean(wrong) <= 0.02


def test_detect_finds_every_object():
    for s in make_samples(13, 100):
        found = detect(s.image)
        assert sorted((d.colour, d.shape) for d in found) == sorted((o.colour, o.shape) for o in s.scene.objects)
    assert set(RELATIONS) == {"left of", "right of", "above", "below"}


def test_embedded_weights_load_in_the_library():
    import latent_clip
    model = latent_clip.load_model(ASSETS / "latent_clip.safetensors")
    assert model.config.vision.latent_family == "tinyworld"
    models = study.load_models(ASSETS)
    assert models["vae"].config.scaling_factor == latent_clip.get_latent_family("tinyworld").scaling_factor


@pytest.mark.slow
def test_demo_runs_on_embedded_weights(tmp_path):
    results = study.main(["--demo", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").is_file() and (tmp_path / "reward_curves.png").is_file()
    z = results["zeroshot"]
    for kind in ("latent", "pixel"):
        assert z[kind]["object"] > 3 * z["chance"]["object"], (kind, z[kind])
        assert z[kind]["mean"] > z["chance"]["mean"] + 0.1, (kind, z[kind])
    assert results["guidance"]["forbidden_rate_guided"] < results["guidance"]["forbidden_rate_base"]


@pytest.mark.slow
def test_quick_study_learns(tmp_path):
    results = study.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["preset"] == "quick"
    z = results["zeroshot"]
    for kind in ("latent", "pixel"):   # held-out data, well above chance
        assert z[kind]["object"] > 3 * z["chance"]["object"], (kind, z[kind])
        assert z[kind]["colors"] > 2.5 * z["chance"]["colors"], (kind, z[kind])
        assert z[kind]["mean"] > z["chance"]["mean"] + 0.05, (kind, z[kind])
    r, g = results["reno"], results["guidance"]
    assert r["latent"]["judge"] >= r["base"]["judge"]
    assert r["latent"]["reward_best"] < r["latent"]["reward_start"]
    assert g["forbidden_rate_guided"] < g["forbidden_rate_base"]
