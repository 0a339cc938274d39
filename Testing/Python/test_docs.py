"""The documentation stays true: links and images resolve, every code file has its line in the layout, the
README's results table is the committed benchmarks' table, and the engine's imports run one way."""

import ast
import os
import re
import struct
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "Testing", "Benchmarks"))
import headline  # noqa: E402
from source_tree import python_files  # noqa: E402

DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
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
    assert ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && '
            'pip install -e ".[pictures]" && semisupseg demo --output demo-output') in readme
    assert "\nbash .ci/run\n" in readme


def test_the_readme_results_table_is_made_from_the_committed_results():
    assert headline.current_block(_read("README.md")) == headline.table(), \
        "run: python Testing/Benchmarks/headline.py --write README.md"


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
