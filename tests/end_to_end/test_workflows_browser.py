"""Every UI-format workflow in example_workflows/ opened in the real ComfyUI frontend (headless
Debian Chromium via Playwright; frontends 1.32.9, 1.48.7 and 1.58.1 tested, $LATENT_CLIP_FRONTEND_ROOT
picks one): no missing-node dialog, the frontend's missing-models list (1.32.9: a dialog; 1.48+: the
right side panel) offers each template's model downloads, no two nodes overlap (title bars included;
again after a run, when reports and previews have grown), the page's own prompt validates except for
model files that cannot exist here, then it is queued with the test weights swapped in and its results
show on the canvas. The template browser lists every template by its whole title with its thumbnail,
and opening one shows its note. Expert inputs stay on the classic canvas and, on Nodes 2.0, open with the
node's "Show advanced inputs"; the node search finds nodes by their search aliases (ComfyUI 0.33).
Screenshots ``<id>.png`` go to $LATENT_CLIP_SCREENSHOTS if set (else the test's temp dir); with
$LATENT_CLIP_THUMBNAILS set, each template's ``<title>.jpg`` thumbnail is written there (example_workflows/
holds the shipped ones, from ComfyUI 0.33.0 + frontend 1.48.7)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import pytest

from comfy_harness import (PACK_NAME, TEST_LATENT, TINY_EXPORT, UI_WORKFLOWS, execution_error, load_api_workflow,
                           post_prompt, skip_or_fail, wait_history)
from latent_clip.examples import example_latents
from workflows.build import FIRST_GRAPH, SPECS, TEMPLATES, VERIFY_SPECS, note_markdown

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MISSING_FILES_OK = {"CheckpointLoaderSimple", "LatentCLIPLoader"}  # SDXL-Turbo / official weights
SETTINGS = {"Comfy.TutorialCompleted": b"true",  # no first-run template browser
            "Comfy.Minimap.Visible": b"false", "Comfy.Graph.CanvasInfo": b"false",
            "LiteGraph.Canvas.MinFontSizeForLOD": b"0"}  # readable screenshots when zoomed out
CLOSE_BANNER = """() => {
    const text = [...document.querySelectorAll('*')].find(
        e => e.childElementCount === 0 && e.textContent.includes('Introducing Nodes 2.0'));
    for (let p = text?.parentElement, i = 0; p && i < 4; p = p.parentElement, i++) {
        const close = [...p.querySelectorAll('button')].filter(b => !b.textContent.includes('Try'));
        if (close.length) { close[close.length - 1].click(); return true; }
    }
    return false; }"""
FOCUS_OURS = "() => window.app.canvas.selectNodes(window.app.graph.nodes.filter(n => n.type.startsWith('LatentCLIP')))"
OURS_BOX = """() => {
    const ds = window.app.canvas.ds, rect = window.app.canvas.canvas.getBoundingClientRect();
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const n of window.app.graph.nodes.filter(n => n.type.startsWith('LatentCLIP'))) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 50);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const [ax, ay] = ds.convertOffsetToCanvas([x0, y0]), [bx, by] = ds.convertOffsetToCanvas([x1, y1]);
    const x = Math.max(0, ax + rect.left - 20), y = Math.max(0, ay + rect.top - 20);
    return {x, y, width: Math.min(bx - ax + 40, rect.width - x), height: Math.min(by - ay + 40, rect.height - y)};
}"""
OURS = list(SPECS)  # the Latent-CLIP templates; the ReNO/guidance ones bring their own run checks
OVERLAPS = """() => {
    const boxes = window.app.graph.nodes.map(n => [`${n.type}#${n.id}`, n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT,
                                                   n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
    const out = [];
    for (const [i, a] of boxes.entries()) for (const b of boxes.slice(i + 1))
        if (a[1] < b[3] && b[1] < a[3] && a[2] < b[4] && b[2] < a[4]) out.push(`${a[0]} overlaps ${b[0]}`);
    return out; }"""
# The missing models as the frontend lists them, [{directory, name, download (an enabled Download button), reason}]:
# 1.32.9 opens a dialog with a row per model ("<directory> / <name>", its reason why not in a message); 1.48+ show
# them in the right side panel's Errors tab (opened by the error overlay's "View details"), each name (its title)
# above its directory ("<directory> · <size>" when the size is known).
MISSING_MODELS = """() => {
    const rows = [...document.querySelectorAll('.comfy-missing-models li')];
    if (rows.length) return rows.map(li => {
        const [directory, name] = li.querySelector('span[title]').innerText.split(' / ');
        const download = [...li.querySelectorAll('button')].find(b => b.innerText.startsWith('Download'));
        return {directory, name, download: !!download && !download.disabled,
                reason: li.querySelector('.p-message')?.innerText ?? ''};
    });
    const group = document.querySelector('[data-testid="error-group-missing-model"]');
    return [...(group?.querySelectorAll('[title]') ?? [])].filter(e => e.title === e.innerText.trim()).map(e => {
        const row = e.parentElement.parentElement.parentElement;
        return {directory: e.parentElement.nextElementSibling.innerText.split(' · ')[0], name: e.title,
                download: !!row.querySelector('[data-testid="missing-model-download"]:not([disabled])'), reason: ''};
    }); }"""
MISSING_SHOWN = """() => !!document.querySelector('.comfy-missing-models li, [data-testid=error-overlay-see-errors]')"""
SUFFIXES = (".safetensors", ".sft")  # what every tested frontend downloads (1.32.9 MissingModelsWarning: only these)
# The template browser's cards: each card's title element (the first whose whole text is the title; 1.32.9 repeats it
# as the description), whether it shows the whole title (no overflow, not clamped), and its images loaded.
CARD = """card => {
    const title = card.dataset.testid.replace('template-workflow-', '');
    const shown = [...card.querySelectorAll('*')].find(e => !e.childElementCount && e.textContent.trim() === title);
    return {title, shown: shown?.textContent.trim(),
            fits: !!shown && shown.scrollWidth <= shown.clientWidth && shown.scrollHeight <= shown.clientHeight,
            images: [...card.querySelectorAll('img')].map(i => i.complete && i.naturalWidth > 0)}; }"""
CARDS = f"""() => [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map({CARD})"""
# A card draws its thumbnail only while it is in view, and drops it when scrolled out (1.58's LazyImage): the ten
# cards overflow the dialog, so each is scrolled into view and its own thumbnail awaited, as a person looking
# through the list sees them.
CARD_NAMED = f"""title => ({CARD})(document.querySelector(`[data-testid="template-workflow-${{title}}"]`))"""
THUMBNAIL_SHOWN = f"""title => {{ const images = ({CARD_NAMED})(title).images;
    return images.length > 0 && images.every(Boolean); }}"""
# What each Preview as Text shows: its text widgets (1.32.9 'preview'; 1.48+ 'preview_text' beside a 'preview_mode'
# toggle), the report it received.
PREVIEWS = """() => window.app.graph.nodes.filter(n => n.type === 'PreviewAny')
    .map(n => n.widgets.filter(w => typeof w.value === 'string').map(w => w.value))"""
THUMBNAIL = (512, 384)
RENO_INPUTS, RENO_ADVANCED = ["iterations", "lr"], ["grad_clip", "reg_weight", "momentum", "allow_family_mismatch"]
ADD_RENO_SAMPLER = """() => { const n = LiteGraph.createNode('LatentCLIPRenoSampler'); n.pos = [300, 200];
    window.app.graph.add(n); return n; }"""
VIEWPORT = {"width": 1920, "height": 1080}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A fresh Chromium profile whose requests reach the test servers (loopback) only."""
    try:
        import playwright.sync_api as playwright_api
    except ImportError:
        skip_or_fail("Python playwright missing: bash scripts/setup.sh --dev")
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"{CHROMIUM} missing: run bash scripts/install_comfyui.sh")
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium")), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport=VIEWPORT)
        context.route(re.compile(r"^(?!http://127\.0\.0\.1:\d+/).*"), lambda route: route.abort())
        yield context
        context.close()


def _open_page(browser, server):
    """The frontend of ``server`` in a new tab of ``browser``, ready (graph and canvas up); its page errors
    collect in ``page.page_errors``."""
    for setting, value in SETTINGS.items():
        urllib.request.urlopen(urllib.request.Request(
            f"{server.url}/api/settings/{setting}", data=value, method="POST"), timeout=10)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url, wait_until="domcontentloaded")
    page.wait_for_function("() => window.app?.graph && window.LiteGraph && "
                           "document.querySelector('#graph-canvas')?.width > 0", timeout=60_000)
    page.page_errors = errors
    return page


@pytest.fixture(scope="module")
def page(browser, comfy_server):
    return _open_page(browser, comfy_server)


@pytest.fixture(scope="module")
def bare_page(browser, bare_comfy_server):
    """The frontend of a ComfyUI with the pack alone and models/ empty, as a new user first opens it."""
    return _open_page(browser, bare_comfy_server)


def _queue(page) -> dict:
    with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as resp:
        page.evaluate("() => window.app.queuePrompt(0, 1)")
    return {"status": resp.value.status, **resp.value.json()}


def _load(page, path: Path) -> tuple[dict, list[dict]]:
    """Load ``path`` as a user opening it does; returns the workflow and the missing models the
    frontend lists (MISSING_MODELS; its dialog or side panel is closed again)."""
    workflow = json.loads(path.read_text())
    missing = page.evaluate("wf => wf.nodes.map(n => n.type).filter(t => !(t in LiteGraph.registered_node_types))",
                            workflow)
    assert missing == [], f"{path.name}: unknown node types {missing}"
    page.evaluate("([wf, name]) => window.app.loadGraphData(wf, true, true, name)", [workflow, path.stem])  # its tab
    page.wait_for_timeout(500)
    assert page.locator(".p-dialog", has_text="missing nodes").count() == 0
    assert page.evaluate("() => window.app.graph.nodes.length") == len(workflow["nodes"])
    return workflow, _missing_models(page)


def _missing_models(page) -> list[dict]:
    """The missing models the frontend lists after a load, as a user finds them (1.48+: the error
    overlay's "View details"); everything opened is closed again."""
    if any(n["properties"].get("models") for n in page.evaluate("() => window.app.graph.serialize().nodes")):
        page.wait_for_function(MISSING_SHOWN, timeout=10_000)
    details = page.locator('[data-testid="error-overlay-see-errors"]')
    if details.count():
        details.click()
        page.locator('[data-testid="error-group-missing-model"]').wait_for(timeout=10_000)
    rows = page.evaluate(MISSING_MODELS)
    _close_dialogs(page)
    return rows


def _close_dialogs(page) -> None:
    """Closes dialogs (PrimeVue's; 1.58's template browser is a reka dialog), and (1.48+) the error overlay and the
    right side panel."""
    dialogs = page.locator('.p-dialog, [role="dialog"][data-state="open"]')
    for _ in range(10):
        panel = page.locator('[data-testid="properties-panel"] button[aria-pressed="true"]')
        if panel.count():
            panel.first.click()
        overlay = page.locator('[data-testid="error-overlay-dismiss"]')
        if overlay.count():
            overlay.first.click()
        if not (dialogs.count() or panel.count() or overlay.count()):
            page.mouse.move(VIEWPORT["width"] - 1, VIEWPORT["height"] // 2)  # no tooltip left on a screenshot
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)
    raise AssertionError(f"a dialog stays open: {dialogs.first.inner_text()[:300]}")


def _shot(page, path: Path, clip: dict | None = None) -> None:
    page.evaluate(CLOSE_BANNER)
    page.screenshot(path=str(path), clip=clip)


def _path(template: str) -> Path:
    return UI_WORKFLOWS / f"{TEMPLATES[template][0]}.json"


@pytest.mark.parametrize("template", TEMPLATES)
def test_ui_workflow_loads(page, template, tmp_path):
    """Opens clean, offers its models (a .pt file for download or with the frontend's own reason), no overlapping nodes
    (its note included), seeds that only pick replacement noise start 'fixed'."""
    workflow, rows = _load(page, _path(template))
    assert not page.page_errors, page.page_errors
    models = [m for n in workflow["nodes"] for m in n["properties"].get("models", [])]
    assert {m["directory"] for m in models} == (set() if template in FIRST_GRAPH else {"checkpoints", "latent_clip"})
    assert sorted((r["directory"], r["name"]) for r in rows) == sorted((m["directory"], m["name"]) for m in models)
    for model in models:
        assert model["url"].startswith("https://huggingface.co/")
    for row in rows:  # each offered for download, or with the frontend's reason (1.32.9: only SUFFIXES)
        assert row["download"] != bool(row["reason"]), row
        assert row["download"] or (not row["name"].endswith(SUFFIXES) and "Only allowed suffixes" in row["reason"]), row
    assert page.evaluate(OVERLAPS) == []
    fixed = page.evaluate("""() => window.app.graph.nodes.filter(n => n.type === 'LatentCLIPSafetyFilter')
        .map(n => n.widgets.find(w => w.name === 'seed').linkedWidgets[0].value)""")
    assert set(fixed) <= {"fixed"}

    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(500)
    shots = Path(os.environ.get("LATENT_CLIP_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    _shot(page, shots / f"{template}.png")
    if os.environ.get("LATENT_CLIP_THUMBNAILS"):
        from PIL import Image, ImageOps
        image = ImageOps.fit(Image.open(shots / f"{template}.png").convert("RGB"), THUMBNAIL)
        image.save(Path(os.environ["LATENT_CLIP_THUMBNAILS"]) / f"{TEMPLATES[template][0]}.jpg", quality=80)


# Where each node of the open graph is on screen: its box (title bar included) in screen px, and what the page
# shows at points just inside its corners and edge midpoints (the canvas, a widget of the graph, or the
# frontend's own bars, sidebar, zoom controls).
ON_SCREEN = """() => {
    const ds = window.app.canvas.ds, rect = window.app.canvas.canvas.getBoundingClientRect(), out = [];
    for (const n of window.app.graph.nodes) {
        const [x0, y0] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
        const [x1, y1] = ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
        const box = [x0 + rect.left, y0 + rect.top, x1 + rect.left, y1 + rect.top], covered = [];
        for (const [fx, fy] of [[0, 0], [.5, 0], [1, 0], [0, .5], [1, .5], [0, 1], [.5, 1], [1, 1]]) {
            const x = box[0] + 3 + fx * (box[2] - box[0] - 6), y = box[1] + 3 + fy * (box[3] - box[1] - 6);
            const e = document.elementFromPoint(x, y);
            const ours = e && (e === window.app.canvas.canvas ||
                               e.closest('.dom-widget, .comfy-markdown, textarea, [data-node-id]'));
            if (!ours)
                covered.push(`${Math.round(x)},${Math.round(y)}: ${e ? e.tagName + '.' + e.className : 'off screen'}`);
        }
        out.push({node: `${n.type}#${n.id}`, box, covered});
    }
    return {canvas: [rect.left, rect.top, rect.right, rect.bottom], scale: ds.scale, nodes: out}; }"""
# The note's text on screen: its heading's font size times the zoom, and whether it shows whole (no scrolling), beside
# the size of the note's plain text at 100 % (the frontend's text size for notes and text boxes).
NOTE_TEXT = """() => {
    const note = window.app.graph.nodes.find(n => n.type === 'MarkdownNote').widgets[0].element;
    const heading = note.querySelector('h2'), size = e => parseFloat(getComputedStyle(e).fontSize);
    return {note_px: size(heading) * window.app.canvas.ds.scale, text_px: size(heading.parentElement),
            whole: note.scrollHeight <= note.clientHeight + 1}; }"""
OPEN_VIEWPORT = {"width": 1600, "height": 1000}


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_opens_readable_at_1600x1000(page, template):
    """Opened in a 1600x1000 window (its missing-models notice closed), a template shows every node whole on the
    canvas, clear of the frontend's bars, sidebar and zoom controls, at its own zoom, with its note shown whole at
    least as large as a note's plain text at 100 % (10 px; the frontend's text boxes too): as the note is a heading
    (15 px), the zoom is at least 10/15 = 0.67; the shipped templates open at 0.75-0.90 (workflows/build.py)."""
    page.set_viewport_size(OPEN_VIEWPORT)
    try:
        workflow, _ = _load(page, _path(template))
        page.evaluate(CLOSE_BANNER)
        page.wait_for_timeout(300)
        shown = page.evaluate(ON_SCREEN)
        assert shown["scale"] == pytest.approx(workflow["extra"]["ds"]["scale"])
        left, top, right, bottom = shown["canvas"]
        for node in shown["nodes"]:
            x0, y0, x1, y1 = node["box"]
            assert left <= x0 and top <= y0 and x1 <= right and y1 <= bottom, node
            assert node["covered"] == [], node
        text = page.evaluate(NOTE_TEXT)
        assert text["whole"] and text["note_px"] >= text["text_px"], text
    finally:
        page.set_viewport_size(VIEWPORT)


def test_new_safety_filter_seed_starts_fixed(page):
    control = page.evaluate("""() => { const n = LiteGraph.createNode('LatentCLIPSafetyFilter');
        window.app.graph.add(n); const v = n.widgets.find(w => w.name === 'seed').linkedWidgets[0].value;
        window.app.graph.remove(n); return v; }""")
    assert control == "fixed"


@pytest.mark.parametrize("template", OURS)
def test_ui_workflow_queues(comfy_server, page, template, tmp_path):
    _load(page, _path(template))

    # With the test weights swapped in, and the SDXL-Turbo part cut off where there is one.
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    for node in prompt.values():
        if node["class_type"] == "LatentCLIPLoader":
            node["inputs"]["model_name"] = TINY_EXPORT
    if any(n["class_type"] == "CheckpointLoaderSimple" for n in prompt.values()):
        prompt = _without_sdxl(prompt)
    client_id = page.evaluate("() => window.app.api.clientId")
    entry = wait_history(comfy_server, post_prompt(comfy_server, prompt, client_id))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert not page.page_errors, page.page_errors

    # The whole result on the canvas: the preview shows the node's full report, nothing overlaps.
    page.wait_for_timeout(500)
    report = next(n for k, n in entry["outputs"].items() if prompt[k]["class_type"].startswith("LatentCLIP"))["text"]
    assert page.evaluate(PREVIEWS) == [[f"```\n{report[0]}\n```"]]  # the node's whole report, a Markdown code block
    assert page.evaluate(OVERLAPS) == []

    shots = Path(os.environ.get("LATENT_CLIP_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(700)
    _shot(page, shots / f"{template}.png")
    page.evaluate(FOCUS_OURS)  # a close-up of the pack's nodes with their results
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.evaluate("() => { window.app.canvas.deselectAll(); window.app.graph.setDirtyCanvas(true, true); }")
    page.wait_for_timeout(700)
    _shot(page, shots / f"{template}_nodes.png", page.evaluate(OURS_BOX))

    if template == "latent_clip_safety_filter":  # everything blocked: the job succeeds, the report says so
        (node,) = [n for n in prompt.values() if n["class_type"] == "LatentCLIPSafetyFilter"]
        node["inputs"]["threshold"] = 0.0
        entry = wait_history(comfy_server, post_prompt(comfy_server, prompt, client_id))
        assert entry["status"]["status_str"] == "success", execution_error(entry)
        page.wait_for_timeout(500)
        ((shown,),) = page.evaluate(PREVIEWS)
        assert "nothing passed on" in shown

    # As shipped: only the model files that cannot exist here may fail validation.
    answer = _queue(page)
    assert answer["status"] == 200 or answer.get("node_errors"), answer
    page.keyboard.press("Escape")
    bad = {n["class_type"] for n in answer.get("node_errors", {}).values()}
    assert bad <= MISSING_FILES_OK, json.dumps(answer)[:2000]
    page.keyboard.press("Escape")


def _without_sdxl(prompt: dict) -> dict:
    """The page's prompt with KSampler replaced by LoadLatent of the test latents and every node
    that needs the checkpoint (decode, save image) dropped."""
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
    prompt[sampler] = {"class_type": "LoadLatent", "inputs": {"latent": TEST_LATENT}}
    needs_ckpt = {k for k, n in prompt.items() if n["class_type"] in ("CheckpointLoaderSimple", "CLIPTextEncode",
                                                                     "EmptyLatentImage", "VAEDecode", "SaveImage")}
    return {k: n for k, n in prompt.items() if k not in needs_ckpt}


TEXTS = """() => { window.__texts = [];
    window.app.api.addEventListener('progress_text', e => window.__texts.push([e.detail.nodeId, e.detail.text])); }"""


@pytest.mark.slow
@pytest.mark.parametrize("template", VERIFY_SPECS)
def test_verifier_template_queues_from_the_page(sd15_server, page, template):
    """A verifier template as the page sends it, with its test twin's values (the tests' SD1.5 checkpoint at 64 px,
    tiny SD1.5-family weights, few steps), decoded and saved: it runs, and the sampler's report reaches the page as
    SamplerCustomAdvanced's progress text."""
    _load(page, _path(template))
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    twin = load_api_workflow(f"{template}.json")
    for nid in set(prompt) & set(twin):
        prompt[nid]["inputs"].update({k: v for k, v in twin[nid]["inputs"].items() if not isinstance(v, list)})
    page.evaluate(TEXTS)
    client_id = page.evaluate("() => window.app.api.clientId")
    entry = wait_history(sd15_server, post_prompt(sd15_server, prompt, client_id), timeout=600)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert len(entry["outputs"]["21"]["images"]) == (2 if template == "prune_sdxl_turbo" else 4)  # decoded: the kept
    page.wait_for_timeout(500)
    shown = [text for node, text in page.evaluate("() => window.__texts") if node == "16"]
    assert shown and shown[-1].splitlines()[-1].startswith("evaluations: "), shown
    assert not page.page_errors, page.page_errors
    _close_dialogs(page)


def test_template_browser_shows_every_template_by_title(page):
    """Left sidebar Templates -> Extensions -> comfyui-latent-clip: a card per file of example_workflows/,
    each showing its whole title (not cut off) with its <title>.jpg thumbnail loaded; opening the card found by
    its title fetches the graph (both from /api/workflow_templates/<pack>/, 200), shows its note at the top left
    and lists its missing models."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    served = {}
    listen = lambda r: "/api/workflow_templates/" in r.url and served.update({unquote(r.url): r.status})  # noqa: E731
    page.on("response", listen)
    titles = sorted(title for title, _ in TEMPLATES.values())
    assert titles == sorted(p.stem for p in UI_WORKFLOWS.glob("*.json"))
    # Every tested frontend also shows the file name as the card's description, each '-' and '_' made a space
    # ("Latent-CLIP" read "Latent CLIP"): a title with neither reads the same twice.
    assert [t for t in titles if "-" in t or "_" in t] == []
    try:
        for i, (name, (_, note)) in enumerate(TEMPLATES.items()):
            _open_template_browser(page)
            page.locator('[data-testid^="template-workflow-"]').nth(len(titles) - 1).wait_for(timeout=10_000)
            cards = page.evaluate(CARDS)
            assert sorted(c["title"] for c in cards) == titles
            for card in cards:  # the whole title readable in the card
                assert card["shown"] == card["title"] and card["fits"], card
            for pictured in titles if i == 0 else []:  # each thumbnail, in view (then cached by the page)
                page.locator(f'[data-testid="template-workflow-{pictured}"]').scroll_into_view_if_needed()
                with contextlib.suppress(PlaywrightTimeout):  # the assert says which one is missing
                    page.wait_for_function(THUMBNAIL_SHOWN, arg=pictured, timeout=30_000)
                card = page.evaluate(CARD_NAMED, pictured)
                assert card["images"] and all(card["images"]), card
            _open_template_card(page, name)
            assert bool(_missing_models(page)) == (name not in FIRST_GRAPH)
            shown = page.evaluate("""() => { const top = window.app.graph.nodes.reduce((a, b) =>
                a.pos[0] + a.pos[1] <= b.pos[0] + b.pos[1] ? a : b), el = top.widgets[0].element;
                const r = el.getBoundingClientRect();
                const seen = el.contains(document.elementFromPoint(r.left + 5, r.top + 5));
                return [top.type, seen, el.innerText.trim()]; }""")  # the note's top left corner on screen, uncovered
            assert shown == ["MarkdownNote", True, note.replace("**", "").replace("`", "")], shown
    finally:
        _close_dialogs(page)  # a failure here leaves no template browser over the next tests' clicks
    page.remove_listener("response", listen)
    url = f"{page.url.split('#')[0].rstrip('/')}/api/workflow_templates/{PACK_NAME}/"
    assert served == {url + title + ext: 200 for title in titles for ext in (".jpg", ".json")}, served


def test_expert_inputs_open_as_a_user_opens_them(page):
    """The ReNO Sampler's advanced inputs: every tested frontend keeps them on the classic canvas (what the other
    tests use); on Nodes 2.0 nodes 1.48+ hide them until the node's "Show advanced inputs" is clicked, 1.32.9
    shows them."""
    shown = page.evaluate(f"""() => {{ const n = ({ADD_RENO_SAMPLER})();
        const names = n.widgets.filter(w => n.isWidgetVisible(w)).map(w => w.name);
        window.app.graph.remove(n); return names; }}""")
    assert shown == RENO_INPUTS + RENO_ADVANCED
    version = tuple(map(int, page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__").split(".")[:2]))
    page.evaluate("() => window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
    try:
        page.evaluate("() => window.app.graph.clear()")  # nothing covers the node
        node = page.locator(f'[data-node-id="{page.evaluate(f"() => ({ADD_RENO_SAMPLER})().id")}"]')
        node.get_by_text(RENO_INPUTS[-1], exact=True).wait_for(timeout=10_000)  # its widgets are drawn
        labels = lambda: set(node.inner_text().split("\n"))  # noqa: E731 - the node's texts as shown now
        if version >= (1, 48):
            assert labels() >= set(RENO_INPUTS) and not labels() & set(RENO_ADVANCED)
            node.get_by_role("button", name="Show advanced inputs").click()
        for label in RENO_ADVANCED:  # drawn one by one (after the button on 1.48+): under load the last came late
            node.get_by_text(label, exact=True).wait_for(timeout=10_000)
        assert labels() >= {*RENO_INPUTS, *RENO_ADVANCED}
    finally:
        page.evaluate("() => window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false)")


def test_node_search_finds_nodes_by_their_aliases(comfy_server, page):
    """Double-click on the empty canvas, type "nsfw" (in no name of ours, an alias of four nodes): ComfyUI 0.33
    serves the aliases and the search lists those nodes; 0.3.75 serves none, and the same search lists none of ours."""
    version = tuple(map(int, comfy_server.get("/system_stats")["system"]["comfyui_version"].split(".")[:2]))
    page.evaluate("() => window.app.graph.clear()")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    for _ in range(10):  # a fresh page's canvas takes double-clicks a moment after the page fixture is ready
        page.mouse.dblclick(VIEWPORT["width"] // 2, VIEWPORT["height"] // 2)
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function("() => document.activeElement?.tagName === 'INPUT'", timeout=1_000)  # search box
            break
    else:
        raise AssertionError("double-clicking the empty canvas opened no node search")
    for attempt in range(2):  # once in a few runs on 1.58 the first keys reach the box before it searches
        page.keyboard.type("nsfw")
        try:
            page.locator('[role="option"]').first.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt:
                raise
            page.keyboard.press("Control+A")
            page.keyboard.press("Backspace")
    page.wait_for_timeout(500)  # the search runs as one types: the list for the whole word
    listed = {o.inner_text().split("\n")[0] for o in page.locator('[role="option"]').all()}
    _close_dialogs(page)
    assert listed, "the node search listed nothing"
    expected = {"Latent-CLIP Safety Filter", "Latent-CLIP Safety Guider", "Latent-CLIP Reward: Avoid Concepts",
                "Safety Stop Sampler (Latent-CLIP)"}
    assert {name for name in listed if "Latent-CLIP" in name} == (expected if version >= (0, 33) else set()), listed


def _open_template_browser(page) -> None:
    """Left sidebar Templates -> Extensions -> comfyui-latent-clip, after closing what is open (a dialog, the
    Missing Models a previous graph left, or its error overlay, which goes as the next graph loads)."""
    _close_dialogs(page)
    page.get_by_role("button", name="Templates").first.click()
    page.get_by_text(PACK_NAME, exact=True).first.click()


def _open_template_card(page, name: str) -> None:
    """In the open template browser, the card titled as template ``name``; waits for its note."""
    page.locator('[data-testid^="template-workflow-"]', has=page.get_by_text(TEMPLATES[name][0], exact=True)).click()
    page.wait_for_function("note => window.app.graph.nodes.some(n => n.widgets?.[0]?.value === note)",
                           arg=note_markdown(name))


@pytest.mark.parametrize("template", FIRST_GRAPH)
def test_first_graph_runs_from_the_template_browser(bare_page, bare_comfy_server, template, tmp_path):
    """A new user's first run: a ComfyUI whose models/ folder is empty, the first graph opened from the template
    browser, no missing model listed, queued as it is; every report shows whole on the canvas, the zero-shot one
    naming each latent's colour as its caption does."""
    page = bare_page
    _open_template_browser(page)
    _open_template_card(page, template)
    assert _missing_models(page) == []
    answer = _queue(page)
    assert answer["status"] == 200 and not answer.get("node_errors"), answer
    entry = wait_history(bare_comfy_server, answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert not page.page_errors, page.page_errors

    page.wait_for_timeout(500)
    reports = {k: out["text"][0] for k, out in entry["outputs"].items() if k in ("10", "11")}  # Zero-Shot, Score
    assert sorted(page.evaluate(PREVIEWS)) == sorted([f"```\n{r}\n```"] for r in reports.values())
    top = [line.split()[1] for line in reports["10"].splitlines()[1:]]
    assert top == example_latents().answers
    assert page.evaluate(OVERLAPS) == []
    shots = Path(os.environ.get("LATENT_CLIP_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    _shot(page, shots / f"{template}_run.png")
