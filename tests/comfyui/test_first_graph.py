"""The first graph (template ``latent_clip_first_graph``) on a ComfyUI with nothing downloaded: the pack's
example latents and its embedded demo model, classified and scored over HTTP, every answer checked
against the captions that ship with the latents and against the library on the same model."""
from __future__ import annotations

import pytest
import torch

import latent_clip
from comfy_harness import execution_error, load_api_workflow, run_graph_with_texts
from latent_clip.config import DEMO_WEIGHTS
from latent_clip.examples import example_latents
from workflows.build import FIRST_PROMPT

pytestmark = pytest.mark.comfyui
GRAPH = "latent_clip_first_graph.json"


def rows(report: str, header_line: int) -> list[list[str]]:
    """The cells of a report's table whose header is line ``header_line``."""
    return [line.split() for line in report.splitlines()[header_line + 1:]]


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def run(bare_comfy_server) -> tuple[dict, list[tuple[str, str]]]:
    """The template's API graph run once as the frontend runs it; the models folder is empty before and after."""
    assert files_under(bare_comfy_server.models_dir) == []
    entry, texts = run_graph_with_texts(bare_comfy_server, load_api_workflow(GRAPH))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert files_under(bare_comfy_server.models_dir) == []
    return entry["outputs"], texts


def test_example_node_shows_the_captions(run):
    outputs, _ = run
    captions = example_latents().captions
    assert outputs["1"]["text"] == ["\n".join(f"{i}: {c}" for i, c in enumerate(captions))]


def test_zero_shot_names_every_colour(run):
    """All 18 right: the demo model on these latents, measured 18/18 with the top label at p >= 0.80."""
    outputs, _ = run
    examples, report = example_latents(), outputs["10"]["text"][0]
    table = rows(report, 0)
    assert report.splitlines()[0].split() == ["#", "top", *examples.labels]
    assert [row[1] for row in table] == examples.answers
    assert outputs["20"]["text"] == [f"```\n{report}\n```"]  # its Preview Any shows the whole report


def test_score_ranks_the_prompts_colour_first(run):
    """Cosines as the library computes them; the red latents above every other (measured: the red ones 0.70-0.73,
    the best other 0.53)."""
    outputs, _ = run
    examples, report = example_latents(), outputs["11"]["text"][0]
    cosine = torch.tensor([float(row[1]) for row in rows(report, 1)])
    model = latent_clip.load_model(DEMO_WEIGHTS)
    expected = latent_clip.score_latents(model, examples.latents, FIRST_PROMPT).cosine[:, 0]
    torch.testing.assert_close(cosine, expected, atol=2e-4, rtol=0)
    red = [i for i, a in enumerate(examples.answers) if a == "red"]
    assert sorted(cosine.argsort(descending=True)[:len(red)].tolist()) == red
    assert outputs["21"]["text"] == [f"```\n{report}\n```"]


def test_no_warning_on_the_first_graph(run):
    """The embedded model on its own latents: nothing for the person to worry about on any node."""
    _, texts = run
    assert not [text for _, text in texts if "⚠" in text]
