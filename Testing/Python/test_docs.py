"""The documentation stays true: links and images resolve, every code file has its line in the layout, the
README's results table, docs/benchmarks.md and the tutorial's timing table are made from the committed
results, every term the README uses is defined or linked, nothing names a file outside the repository or a
tracker's issue, and the engine's imports run one way."""

import ast
import os
import re
import struct
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "Testing", "Benchmarks"))
import bench_laptop  # noqa: E402
import benchmarks_doc  # noqa: E402
import headline  # noqa: E402
from source_tree import python_files  # noqa: E402

DOCS = ["README.md", "CHANGELOG.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def _without_code(text):
    return re.sub(r"```.*?```", "", text, flags=re.S)


def github_anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path):
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", _without_code(_read(path)), re.M)}


def test_github_anchor_follows_githubs_rule():
    assert github_anchor("Which case to label next: does *Suggest* help?") == "which-case-to-label-next-does-suggest-help"
    assert github_anchor("Preparing the paper's datasets") == "preparing-the-papers-datasets"


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_and_anchor_resolves(doc):
    broken = []
    for image, target in LINK.findall(_without_code(_read(doc))):
        if re.match(r"[a-z]+:", target):
            continue  # web links are not checked offline
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        if not os.path.exists(os.path.join(ROOT, resolved)):
            broken.append(target)
        elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
            broken.append(target)
        elif image and not resolved.endswith(".png"):
            broken.append(target + " (not a PNG)")
    assert not broken, f"{doc}: broken links {broken}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_image_is_a_readable_png(doc):
    for image, target in LINK.findall(_without_code(_read(doc))):
        if image:
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), target))
            with open(path, "rb") as f:
                head = f.read(24)
            assert head[:8] == b"\x89PNG\r\n\x1a\n", target
            width, height = struct.unpack(">II", head[16:24])
            assert width > 0 and height > 0, target


def test_the_readme_stays_short_and_keeps_both_quick_start_commands():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 250
    assert ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 --index-url '
            'https://download.pytorch.org/whl/cpu && pip install -e ".[pictures]" && semisupseg demo --output '
            'demo-output') in readme
    assert "\nbash .ci/run\n" in readme


def test_the_readme_results_table_is_made_from_the_committed_results():
    assert headline.current_block(_read("README.md")) == headline.table(), \
        "run: python Testing/Benchmarks/headline.py --write README.md"


def test_benchmarks_md_is_the_generated_page_and_stays_short():
    page = benchmarks_doc.page()
    assert _read(os.path.join("docs", "benchmarks.md")) == page, \
        "run: python Testing/Benchmarks/benchmarks_doc.py --write docs/benchmarks.md"
    assert len(page.splitlines()) <= 150


def test_the_benchmarks_page_shows_every_seed_and_the_rules_choice(tmp_path):
    import json
    import shutil
    for name in os.listdir(benchmarks_doc.RESULTS):
        shutil.copy(os.path.join(benchmarks_doc.RESULTS, name), tmp_path / name)
    path = tmp_path / "accuracy-phantoms.json"
    summary = json.loads(path.read_text(encoding="utf-8"))
    ours = summary["fractions"]["10pct"]["methods"]["ours"]
    ours["dice_gain_over_supervised"]["by_seed"] = {"0": 1.25, "1": -0.5, "2": 0.75}
    for seed, dice in (("0", 99.9), ("1", 99.8), ("2", 99.7)):
        ours["seeds"][seed]["dice"] = dice
    ours["dice"]["mean"] = 99.8
    path.write_text(json.dumps(summary), encoding="utf-8")
    page = benchmarks_doc.page(str(tmp_path))
    phantoms = page.split("### The phantoms")[1].split("###")[0]
    assert "(+1.2, −0.5, +0.8)" in phantoms or "(+1.3, −0.5, +0.8)" in phantoms
    assert "Ahead of every other method on every seed: ours (the paper's method)." in phantoms
    headroom = json.loads((tmp_path / "accuracy-headroom.json").read_text(encoding="utf-8"))["fractions"]["10pct"]["methods"]["ours"]
    expected = f"| ours | {headroom['dice']['mean']:.1f}, 1, {headroom['dice_gain_over_supervised']['mean']:+.1f} | 99.8, 1,"
    assert expected in page  # the rule re-ranks from the summaries it is given


def test_the_tutorials_timing_table_is_made_from_the_committed_measurement():
    import json
    with open(os.path.join(ROOT, "Testing", "Benchmarks", "results", "laptop.json"), encoding="utf-8") as f:
        results = json.load(f)
    tutorial = _read(os.path.join("docs", "tutorial-command-line.md"))
    assert bench_laptop.current_block(tutorial) == bench_laptop.table(results), \
        "run: python Testing/Benchmarks/bench_laptop.py --write docs/tutorial-command-line.md"
    assert "AMD EPYC" in tutorial and "bench_laptop.py" in tutorial  # the machine and the command


#: Words a newcomer meets in the README that need a definition where they first appear, or a link there.
GLOSSARY = ["labeled case", "unlabeled case", "semi-supervised", "pseudo label", "contrastive", "ours",
            "phantom", "Dice", "Jaccard", "HD95", "ASD", "preset", "checkpoint", "manifest", "nnU-Net",
            "Decathlon", "seed", "seeds' spread", "benchmark", "headroom", "Colin27", "Mean Teacher", "UA-MT",
            "CPS", "BCP", "ceiling", "torchrun", "method"]


def _first_block(text, term):
    """The paragraph (a table: the row) where ``term`` first appears in prose: not in code, not in a picture."""
    for block in re.split(r"\n\s*\n", _without_code(text)):
        if block.lstrip().startswith("!["):
            continue
        rows = block.split("\n") if block.lstrip().startswith("|") else [block]
        for row in rows:
            if re.search(r"(?<![\w-])" + re.escape(term), re.sub(r"`[^`]*`", "", row), re.I):
                return row
    return None


def defined_or_linked(block, term):
    """``term`` emphasised where it is introduced (``**term** (...)``, ``*term*: ...``: the definition beside
    it), or the block links to a page of this repository that uses the term, or names an outside page by it."""
    if re.search(r"(\*\*|\*|_)[^*_]*" + re.escape(term) + r"[^*_]*\1", block, re.I):
        return True
    for _, target in LINK.findall(block):
        path = target.partition("#")[0]
        if re.match(r"[a-z]+:", target):
            if term.lower() in block[:block.find(target)].lower():
                return True  # an outside page named by the term itself, e.g. [nnU-Net](https://...)
        elif path.endswith(".md") and os.path.exists(os.path.join(ROOT, path)):
            if term.lower() in _read(path).lower():
                return True
        elif not path and target.startswith("#") and term.lower() in _read("README.md").lower():
            return True
    return False


def test_every_glossary_term_in_the_readme_is_defined_or_linked_where_it_first_appears():
    readme = _read("README.md")
    undefined = [t for t in GLOSSARY if _first_block(readme, t) is not None
                 and not defined_or_linked(_first_block(readme, t), t)]
    assert not undefined, f"README terms with neither a definition nor a link where they first appear: {undefined}"


def test_the_glossary_check_catches_a_bare_term():
    assert not defined_or_linked("Train with a preset and go.", "preset")
    assert defined_or_linked("Pick a **preset** (a named set of settings).", "preset")
    assert defined_or_linked("See [the presets](docs/command-line.md).", "preset")


def _repository_text_files():
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in skip and not d.endswith(".egg-info")]
        for name in files:
            path = os.path.join(folder, name)
            if os.path.getsize(path) > 5_000_000:
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, ROOT), f.read()
            except (UnicodeDecodeError, OSError):
                continue  # pictures, model files


def test_nothing_names_a_file_outside_the_repository_or_an_issue_number():
    outside = ("REFERENCE" + ".md", ".." + "/shared")
    issue = re.compile(r"\bissues?[ _#-]+\d|\bissue-\d", re.I)
    found = [f"{path}: {m.group(0) if m else 'outside file'}" for path, text in _repository_text_files()
             for m in [issue.search(text)] if m or any(o in text for o in outside)]
    assert not found, "name no tracker issue and no file outside the repository: " + "; ".join(found)


def test_the_version_is_the_changelogs_newest():
    from SemiSupSegTraining import __version__
    pyproject = re.search(r'^version = "([^"]+)"', _read("pyproject.toml"), re.M).group(1)
    newest = re.search(r"^## (\d+\.\d+\.\d+)", _read("CHANGELOG.md"), re.M).group(1)
    assert __version__ == pyproject == newest


def test_the_headline_table_bolds_the_default_and_marks_missing_methods(tmp_path):
    import json
    summary = {"fractions": {"10pct": {"methods": {
        "supervised": {"dice": {"mean": 60.04, "std": 1.0}},
        "ours": {"dice": {"mean": 70.26, "std": 0.55}, "default": True},
        "cps": {"dice": {"mean": 65.0, "std": 0.0}, "seeds": {"0": {"dice": 65.0}}}}}}}
    (tmp_path / "accuracy-headroom.json").write_text(json.dumps(summary))
    lines = headline.table(str(tmp_path)).splitlines()
    assert lines[2] == "| supervised only | 60.0 ± 1.0 | – | – |"
    assert lines[3] == "| CPS | 65.0 (1 seed) | – | – |"  # one seed: no spread to show
    assert lines[4] == "| ours (the paper) | **70.3 ± 0.6** | – | – |"
    assert len(lines) == 5


@pytest.mark.parametrize("folder", ["SemiSupSegTraining", os.path.join("SemiSupSeg", "SemiSupSegLib")])
def test_the_layout_in_development_md_lists_exactly_the_code_files(folder):
    """Subpackages included: a file of SemiSupSegTraining/datasets/ is listed as `datasets/name.py`."""
    development = _read(os.path.join("docs", "development.md"))
    section = development.split(f"`{folder.replace(os.sep, '/')}/`")[1].split("\n### ")[0].split("\n## ")[0]
    listed = set(re.findall(r"`([\w/]+\.py)`", section))
    present = set(python_files(os.path.join(ROOT, folder)))
    assert present - listed == set(), "files missing from docs/development.md"
    assert listed - present == set(), "docs/development.md lists files that do not exist"


def _engine_imports():
    """{module: the engine modules it imports relatively}, modules named by their path in the package
    ('train', 'datasets.la', 'datasets' for datasets/__init__.py)."""
    folder = os.path.join(ROOT, "SemiSupSegTraining")
    files = python_files(folder)
    names = {f[:-3].replace("/", ".").replace(".__init__", "") for f in files}
    graph = {}
    for path in files:
        module = path[:-3].replace("/", ".").replace(".__init__", "")
        package = module if path.endswith("/__init__.py") else module.rpartition(".")[0]
        tree = ast.parse(_read(os.path.join("SemiSupSegTraining", path)))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if package else ""
                targets = ([node.module] if node.module else [a.name for a in node.names])
                for target in targets:
                    target = f"{base}.{target}" if base else target
                    while target and target not in names:      # 'config.X' is the module 'config'
                        target = target.rpartition(".")[0]
                    if target and target != module:
                        deps.add(target)
        graph[module] = deps
    return graph


def test_the_engine_imports_are_read_in_subpackages_too():
    graph = _engine_imports()
    assert {"datasets.convert", "datasets.folds", "fileio"} <= graph["datasets.la"]
    assert "datasets.la" in graph["prepare"] and "la" not in graph
    assert graph["cli"] >= {"prepare", "config"}


def test_the_engine_imports_run_one_way():
    graph = _engine_imports()
    state = {}

    def visit(module, path):
        if state.get(module) == "open":
            raise AssertionError("import circle: " + " -> ".join(path + [module]))
        if state.get(module) != "done":
            state[module] = "open"
            for dep in sorted(graph.get(module, ())):
                visit(dep, path + [module])
            state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
