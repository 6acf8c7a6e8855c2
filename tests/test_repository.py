"""The repository as a fresh clone gets it: layers import only downward, nothing reads a path outside
the checkout, bundled data is what its checksums say, and every bench script starts."""
import ast
import hashlib
import os
import re
import subprocess
import sys
import tomllib
import warnings
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from fixtures import DATA, REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OWN = {"latent_clip", "train", "bench", "nodes", "tests"} | {p.stem for p in (REPO / "tests").glob("*.py")}  # + helpers
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution",
                   "nodes", "latent_preview", "node_helpers"}  # top-level modules of ComfyUI itself
TEST_HELPERS = {p.stem for p in (REPO / "tests").glob("*.py")}  # fixtures, synthetic, tiny_pipelines, ...
# The trainer's public names (train/__init__.py's __all__): all that train/benchmarks and train/tinyworld may use
TRAINER_PUBLIC = set(next(ast.literal_eval(node.value) for node in ast.parse((REPO / "train/__init__.py").read_text())
                          .body if isinstance(node, ast.Assign) and node.targets[0].id == "__all__"))
TRAIN_PARTS = ("benchmarks", "tinyworld")  # train/'s two parts beside the trainer


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()


def third_party_imports(layers) -> dict[str, set[str]]:
    """Top-level modules imported anywhere under ``layers`` (folders or files) that are not our own:
    {module: files}."""
    found: dict[str, set[str]] = {}
    for layer in layers:
        for f in (REPO / layer).rglob("*.py") if (REPO / layer).is_dir() else [REPO / layer]:
            for name in imported_modules(f.read_text(), f.relative_to(REPO).parent.parts):
                if name and name not in OWN and name not in sys.stdlib_module_names:
                    found.setdefault(name, set()).add(str(f.relative_to(REPO)))
    return found


def declared_closure(roots: set[str]) -> set[str]:
    """The installed distributions that ``roots`` (distribution names) pull in, transitively."""
    seen, todo = set(), {canonical(r) for r in roots}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.add(canonical(req.name))
    return seen


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_declared():
    """What latent_clip/, train/ and bench/ import comes from what scripts/setup.sh installs without
    --dev: requirements.txt, pyproject's train extra and torch/torchvision (or what those pull in).
    The one exception: bench scripts that measure the pack inside ComfyUI import ComfyUI itself, the
    host program (``setup.sh --dev`` installs it), never a package of ours to declare."""
    installed = declared_closure({"torch", "torchvision"}
                                 | requirement_names(PYPROJECT["project"]["optional-dependencies"]["train"])
                                 | requirement_names((REPO / "requirements.txt").read_text().splitlines()))
    providers = metadata.packages_distributions()
    undeclared = {module: sorted(files) for module, files in third_party_imports(("latent_clip", "train", "bench")).items()
                  if not {canonical(d) for d in providers.get(module, [])} & installed
                  and not (module in COMFYUI_MODULES and all(f.startswith("bench/") for f in files))}
    assert not undeclared, "imported but not installed by scripts/setup.sh"


def imported_targets(source: str, package: tuple[str, ...]) -> set[str]:
    """Dotted names of what every import in ``source`` (module level and inside functions) of a file in
    ``package`` reaches, relative imports resolved: ``import a.b`` is ``a.b``, ``from ..data import x`` in
    train/benchmarks/ is ``train.data.x``, ``from .. import x`` there ``train.x``."""
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            targets |= {f"{module}.{alias.name}" if module else alias.name for alias in node.names}
    return targets


def imported_modules(source: str, package: tuple[str, ...]) -> set[str]:
    """Top-level names of every import in ``source``: ``from ..nodes import x`` in latent_clip/ is ``nodes``."""
    return {target.split(".")[0] for target in imported_targets(source, package)}


def refused(part: str, target: str) -> bool:
    """Whether a file of ``part`` may not import ``target``: imports go down (ComfyUI, ``nodes``, ``train`` and
    the tests' helpers stay out of the library; ComfyUI and the tests out of ``train``); train/'s benchmarks and
    tiny world use the trainer only through its public names and never each other; a test module never imports
    another (its tests would be collected twice)."""
    top, parts = target.split(".")[0], target.split(".")
    if part == "tests":
        return top.startswith("test_")
    if top in TEST_HELPERS or top == "bench":
        return True
    if part == "latent_clip":
        return top in COMFYUI_MODULES | {"train"}
    if part == "nodes":
        return top == "train"
    if top in COMFYUI_MODULES:
        return True
    if top != "train" or len(parts) < 2:
        return False
    if part == "train":
        return parts[1] in TRAIN_PARTS
    return parts[1] != part.removeprefix("train/") and parts[1] not in TRAINER_PUBLIC


def part_of(path: Path) -> str:
    """latent_clip, nodes, train (the trainer), train/benchmarks, train/tinyworld or tests."""
    top = path.relative_to(REPO).parts
    return f"train/{top[1]}" if top[0] == "train" and top[1] in TRAIN_PARTS else top[0]


@pytest.mark.parametrize("part", ["latent_clip", "nodes", "train", "train/benchmarks", "train/tinyworld", "tests"])
def test_parts_import_only_across_their_borders(part):
    files = sorted(f for f in (REPO / part).rglob("*.py") if part_of(f) == part)
    assert files
    leaks = {}
    for f in files:
        targets = imported_targets(f.read_text(), f.relative_to(REPO).parent.parts)
        leaks[str(f.relative_to(REPO))] = sorted(t for t in targets if refused(part, t))
    assert not {f: targets for f, targets in leaks.items() if targets}, f"{part} imports across its borders"


def test_boundary_check_sees_relative_and_local_imports():
    """The checker itself: an import inside a function, a relative import climbing out of the layer
    and ``from .. import`` are all found; the layer's own relative imports are not leaks."""
    source = "def f():\n    import comfy.model_management\nfrom ..nodes import reno\nfrom .. import train\n" \
             "from . import contract\nfrom .model import LatentCLIP\n"
    assert imported_modules(source, ("latent_clip",)) == {"comfy", "nodes", "train", "latent_clip"}
    assert imported_modules("from ..model import x", ("latent_clip", "sub")) == {"latent_clip"}
    internal = imported_targets("from ..data import write_tar\nfrom .. import fit\nfrom . import runner\n",
                                ("train", "benchmarks"))
    assert internal == {"train.data.write_tar", "train.fit", "train.benchmarks.runner"}
    assert [refused("train/benchmarks", t) for t in sorted(internal)] == [False, True, False]  # runner, data, fit
    assert refused("train/tinyworld", "train.benchmarks.runner") and refused("train", "train.tinyworld.study")
    assert refused("nodes", "train.fit") and refused("latent_clip", "synthetic") and refused("tests", "test_setup")


PARENTS = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?(?:\.parents\[(\d+)\]|((?:\.parent(?!s))+))")
OUTSIDE = re.compile(r"\.\./shared|/work/|\b(?:PAPER|PERF-ANCHORS|COMFYUI|STYLE)\.md\b")
MAY_NAME_SHARED = {".ci/run"}  # CI uses the reference material in ../shared/ when it lies beside the clone


def test_no_file_names_a_path_outside_the_checkout():
    """No tracked text file points outside the repository: no sibling folders (but CI's ../shared), no
    absolute machine paths, no documents that only exist beside it, and no ``Path(__file__)`` climb past the root."""
    problems = []
    for rel in tracked_files():
        path = REPO / rel
        if rel == "tests/test_repository.py" or path.suffix not in {".py", ".md", ".sh", ".toml", ".json", ".txt",
                                                                    ".js", ".yaml", ".cfg", ""}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        problems += [f"{rel}: {m.group(0)}" for m in OUTSIDE.finditer(text)
                     if not (rel in MAY_NAME_SHARED and m.group(0) == "../shared")]
        problems += [f"{rel}: {climb}" for climb in climbs_out(text, rel)]
    assert not problems, problems


def climbs_out(text: str, rel: str) -> list[str]:
    """``Path(__file__)`` expressions in the file at ``rel`` that climb above the repository root."""
    depth = len(rel.split("/")) - 1  # folders between the file and the root
    return [m.group(0) for m in PARENTS.finditer(text)
            if (int(m.group(1)) if m.group(1) else m.group(2).count(".parent") - 1) > depth]


def test_path_check_catches_a_climb_past_the_root():
    text = 'A = Path(__file__).resolve().parents[2] / "shared"\nB = Path(__file__).parent.parent.parent\n' \
           'C = Path(__file__).resolve().parents[1]\nD = Path(__file__).parent.parent\n'
    assert climbs_out(text, "tests/x.py") == ["Path(__file__).resolve().parents[2]",
                                              "Path(__file__).parent.parent.parent"]
    assert climbs_out(text, "train/tinyworld/x.py") == []  # two folders deep: parents[2] is the root
    assert OUTSIDE.search("see ../shared/benchmarks") and OUTSIDE.search("(PAPER.md 5.2)")


@pytest.mark.parametrize("folder", [DATA, REPO / "train" / "benchmarks" / "data"], ids=lambda p: p.name)
def test_bundled_data_matches_its_checksums(folder):
    """Every bundled data file is listed in the folder's SHA256SUMS with the upstream file's checksum
    (the folder's README names each source), and nothing unlisted hides beside them."""
    listed = dict(reversed(line.split(maxsplit=1)) for line in (folder / "SHA256SUMS").read_text().splitlines())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
               if p.is_file() and p.relative_to(folder).as_posix() not in {"SHA256SUMS", "README.md"}}
    assert set(listed) == on_disk
    bad = [name for name, digest in listed.items() if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest]
    assert not bad


THIRD_PARTY_ROOTS = ("LATENT_CLIP_EVALUATORS", "LATENT_CLIP_COMFYUI_DIR")  # other projects' code beside the checkout


def test_no_tracked_file_is_a_copy_of_another_projects_code():
    """No tracked file is byte for byte a code file of the official evaluators or of ComfyUI (the folders
    these variables name: CI sets them; other projects' code lives beside the repository, not in it). Their
    data with its licence (GenEval's object names, T2I-CompBench's prompts) may be bundled."""
    roots = [os.environ[v] for v in THIRD_PARTY_ROOTS if os.environ.get(v)]
    if not roots:
        pytest.skip(f"none of {', '.join(THIRD_PARTY_ROOTS)} is set: nothing to compare with")
    ours = {hashlib.sha256((REPO / f).read_bytes()).hexdigest(): f for f in tracked_files() if (REPO / f).is_file()
            and (REPO / f).stat().st_size > 64}  # short files (an empty __init__.py) are the same everywhere
    copies = [(ours[digest], str(theirs)) for root in roots for theirs in Path(root).rglob("*")
              if theirs.is_file() and theirs.suffix in {".py", ".js", ".sh"}
              and "custom_nodes" not in theirs.parts  # where a user may have linked this pack
              and (digest := hashlib.sha256(theirs.read_bytes()).hexdigest()) in ours]
    assert not copies


def test_every_bench_script_starts():
    """``python -m bench.<name> --help`` exits 0 for every script (all in parallel)."""
    scripts = sorted(p.stem for p in (REPO / "bench").glob("bench_*.py"))
    assert len(scripts) >= 7
    procs = {s: subprocess.Popen([sys.executable, "-m", f"bench.{s}", "--help"], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for s in scripts}
    outs = {name: proc.communicate(timeout=300)[0] for name, proc in procs.items()}
    assert not {name: out[-2000:] for name, out in outs.items() if procs[name].returncode or "usage:" not in out}


def requirement_names(lines) -> set[str]:
    return {canonical(Requirement(line).name) for line in lines if line.strip() and not line.startswith("#")}


def test_runtime_requirements_are_exactly_what_the_pack_imports():
    """requirements.txt (what ComfyUI-Manager installs) and [project].dependencies (what the Registry
    reads) both list exactly the distributions that the node pack's code imports, less torch, which
    ComfyUI brings (a re-declared torch can make a manager reinstall it)."""
    providers = metadata.packages_distributions()
    imported = {m for m in third_party_imports(("latent_clip", "nodes", "__init__.py")) if m not in COMFYUI_MODULES}
    assert "torch" in imported and "open_clip" in imported  # the scan sees the pack
    wanted = {canonical(d) for m in imported - {"torch"} for d in providers[m]}
    required = requirement_names((REPO / "requirements.txt").read_text().splitlines())
    assert required == wanted
    assert requirement_names(PYPROJECT["project"]["dependencies"]) == wanted


def test_registry_metadata():
    """pyproject.toml as comfy-cli's Registry parser reads it (comfy_cli/registry/config_parser.py:
    [project.urls] Homepage/Documentation/Repository/Issues, [tool.comfy] Icon, OS classifiers
    starting with one of its prefixes, requires-comfyui matching its version pattern)."""
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert all(project["urls"][key].startswith("https://") for key in ("Homepage", "Documentation", "Repository",
                                                                        "Issues"))
    assert comfy["Icon"].endswith("/docs/icon.png") and (REPO / "docs" / "icon.png").is_file()
    assert comfy["PublisherId"] and comfy["DisplayName"]
    os_classifiers = [c.removeprefix("Operating System :: ") for c in project["classifiers"]
                      if c.startswith("Operating System :: ")]
    assert os_classifiers and all(c.startswith(("Microsoft", "POSIX", "MacOS", "OS Independent"))
                                  for c in os_classifiers)
    version = r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$"
    assert all(re.match(version, part.strip()) for part in comfy["requires-comfyui"].split(","))
    tested = re.search(r"Install ComfyUI (\d+\.\d+\.\d+)", (REPO / "scripts" / "install_comfyui.sh").read_text())
    assert comfy["requires-comfyui"] == f">={tested.group(1)}"  # the oldest version the tests install


def shipped_files() -> set[str]:
    """What ``comfy node pack`` puts in the zip: git-tracked files not matched by .comfyignore, matched
    as comfy-cli's file_utils.zip_files does (stripped lines, '#' comments skipped, pathspec
    "gitwildmatch" on the repo-relative path)."""
    pathspec = pytest.importorskip("pathspec")
    lines = (REPO / ".comfyignore").read_text().splitlines()
    with warnings.catch_warnings():  # pathspec 1.x deprecates the name comfy-cli uses; same matching
        warnings.simplefilter("ignore", DeprecationWarning)
        spec = pathspec.PathSpec.from_lines("gitwildmatch", [line.strip() for line in lines
                                                             if line.strip() and not line.lstrip().startswith("#")])
    return {f for f in tracked_files() if not spec.match_file(f)}


def test_node_package_ships_what_the_nodes_load_and_nothing_else():
    shipped = shipped_files()
    assert {"__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md", "web/latent_clip.js",
            "latent_clip/assets/tinyworld/latent_clip.safetensors", "latent_clip/assets/tinyworld/latent_clip.json",
            "latent_clip/latent_families.json"} <= shipped
    assert {f for f in tracked_files() if f.startswith(("nodes/", "example_workflows/", "workflows/api/",
                                                        "latent_clip/model_configs/"))} <= shipped
    assert not {f for f in shipped if f.startswith(("tests/", "train/", "bench/", "docs/screenshots/"))}
    unused = {f for f in tracked_files() if f.startswith("latent_clip/assets/tinyworld/")
              and f.split("/")[3].split(".")[0] in ("pixel_clip", "generator", "vae")}
    assert unused and not unused & shipped


# Functions over MAX_FUNCTION_LINES that read as numbered steps, and which steps
LONG_BY_STEPS = {"latent_clip/reno.py:optimize_noise": "ReNO's loop as steps 1-4: leaf, generate and score, "
                                                        "track the best, regularise and step"}
MAX_FUNCTION_LINES = 60


def test_no_function_outside_tests_is_longer_than_sixty_lines():
    long = {}
    for f in (REPO / part for part in ("latent_clip", "nodes", "train", "bench", "workflows", "scripts")):
        for path in f.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long[f"{path.relative_to(REPO)}:{node.name}"] = lines
    assert set(long) == set(LONG_BY_STEPS), long
