"""Methods are plug-ins: the registry is the one place that names them, and a new method is one file plus one
registry line (the example in docs/development.md trains as it stands)."""

import ast
import glob
import os
import re
import sys
import types

import helpers  # noqa: F401  (one torch thread)

from SemiSupSegTraining import methods
from SemiSupSegTraining.config import PRESETS, preset_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_no_engine_file_but_the_registry_and_the_presets_names_a_method():
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "SemiSupSegTraining", "**", "*.py"), recursive=True)):
        relative = os.path.relpath(path, ROOT).replace(os.sep, "/")
        if relative in ("SemiSupSegTraining/methods/__init__.py", "SemiSupSegTraining/config.py"):
            continue  # the registry; the default method and the presets, which name theirs
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in methods.REGISTRY:
                # evaluation.py's "reference" is the ground truth a segmentation is compared with
                if not (relative == "SemiSupSegTraining/evaluation.py" and node.value == "reference"):
                    found.append(f"{relative}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "method":
                found.append(f"{relative}:{node.lineno} compares .method")
    assert found == []


def test_every_registered_method_and_preset_resolves():
    for name in methods.REGISTRY:
        cls = methods.method_class(name)
        assert issubclass(cls, methods.base.Method) and len(cls.network_kinds) == 2
        assert set(cls.trained_networks) <= {0, 1}
    assert {p["method"] for p in PRESETS.values()} <= set(methods.REGISTRY)


def _development_example() -> str:
    with open(os.path.join(ROOT, "docs", "development.md"), encoding="utf-8") as f:
        section = f.read().split("## Adding a method")[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_new_method_is_one_file_and_one_registry_line(phantom_dataset, tmp_path, monkeypatch):
    from SemiSupSegTraining.modelfile import read_metadata
    from SemiSupSegTraining.train import train

    module = types.ModuleType("SemiSupSegTraining.methods.entropy_min")
    module.__package__ = "SemiSupSegTraining.methods"
    exec(compile(_development_example(), "entropy_min.py", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(methods.REGISTRY, "entropy-min", "entropy_min:EntropyMinimisation")
    config = preset_config("tiny", {"method": "entropy-min", "device": "cpu", "iterations": 2})
    seen = []
    model = train(phantom_dataset["train"], str(tmp_path / "run"), config, progress="none",
                  callback=lambda event: seen.append(event))
    assert read_metadata(model)["inference"] == "a"
    logged = [e["losses"] for e in seen if e.get("losses")]
    assert logged and set(logged[0]) == {"loss", "sup_a", "entropy"}
