"""Static checks of the Slicer module's files, without Slicer: Python 3.9 syntax, a short module file that
re-exports what scripts use, plain-Python pieces that import no slicer/qt/vtk, a logic that has every method
of the widget's interface, and calls of ``slicer.util`` that match Slicer 5.8.1's signatures."""

import ast
import glob
import os

import pytest
from SemiSupSegLib import interfaces

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_DIR = os.path.join(ROOT, "SemiSupSeg")
LIB_DIR = os.path.join(MODULE_DIR, "SemiSupSegLib")
MODULE_FILES = [os.path.join(MODULE_DIR, "SemiSupSeg.py")] + sorted(glob.glob(os.path.join(LIB_DIR, "*.py")))
PLAIN_PYTHON = ("__init__", "commands", "progress", "job", "cases", "labels", "install", "interfaces")

# The functions of slicer.util the module calls, with their parameters in Slicer 5.8.1 (read from
# Base/Python/slicer/util.py at tag v5.8.1; "**" marks functions that take further keyword arguments).
SLICER_581_UTIL = {
    "addVolumeFromArray": ["narray", "ijkToRAS", "name", "nodeClassName"],
    "arrayFromVolume": ["volumeNode"],
    "childWidgetVariables": ["widget"],
    "confirmOkCancelDisplay": ["text", "windowTitle", "parent", "**"],
    "errorDisplay": ["text", "windowTitle", "parent", "standardButtons", "**"],
    "getModuleWidget": ["module"],
    "getNodesByClass": ["className", "scene"],
    "launchConsoleProcess": ["args", "useStartupEnvironment", "updateEnvironment", "cwd"],
    "loadUI": ["path"],
    "loadVolume": ["filename", "properties", "returnNode"],
    "mainWindow": [],
    "pip_install": ["requirements"],
    "plot": ["narray", "xColumnIndex", "columnNames", "title", "show", "nodes"],
    "saveNode": ["node", "filename", "properties"],
    "selectModule": ["module"],
    "setSliceViewerLayers": ["background", "foreground", "label", "foregroundOpacity", "labelOpacity", "fit",
                             "rotateToVolumePlane"],
    "startupEnvironment": [],
    "tempDirectory": ["key", "tempDir", "includeDateTime"],
    "tryWithErrorDisplay": ["message", "show", "waitCursor"],
    "updateSegmentBinaryLabelmapFromArray": ["narray", "segmentationNode", "segmentId", "referenceVolumeNode"],
    "updateVolumeFromArray": ["volumeNode", "narray"],
}


def _tree(path):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


@pytest.mark.parametrize("path", MODULE_FILES, ids=os.path.basename)
def test_module_files_are_python_3_9(path):
    with open(path, encoding="utf-8") as f:
        ast.parse(f.read(), filename=path, feature_version=(3, 9))


def test_module_file_is_short_and_re_exports_what_scripts_use():
    path = os.path.join(MODULE_DIR, "SemiSupSeg.py")
    tree = _tree(path)
    assert len(open(path, encoding="utf-8").read().splitlines()) <= 150
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes == {"SemiSupSeg", "SemiSupSegTest"}  # registration and self-test only
    imported = {alias.asname or alias.name for n in tree.body if isinstance(n, ast.ImportFrom) for alias in n.names}
    assert {"SemiSupSegLogic", "SemiSupSegWidget", "SemiSupSegParameterNode"} <= imported


def _imports(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", PLAIN_PYTHON)
def test_plain_python_pieces_import_no_slicer(name):
    assert not _imports(_tree(os.path.join(LIB_DIR, name + ".py"))) & {"slicer", "qt", "vtk", "ctk"}


def _class(path, name):
    return next(n for n in _tree(path).body if isinstance(n, ast.ClassDef) and n.name == name)


def _signature(function):
    args = function.args
    positional = [a.arg for a in args.args]
    defaults = [ast.unparse(d) for d in args.defaults]
    return positional, dict(zip(positional[len(positional) - len(defaults):], defaults))


def test_logic_has_every_method_of_the_widget_interface_with_the_same_parameters():
    protocol = {f.name: f for f in _class(os.path.join(LIB_DIR, "interfaces.py"), "SemiSupSegLogicProtocol").body
                if isinstance(f, ast.FunctionDef)}
    logic = {f.name: f for f in _class(os.path.join(LIB_DIR, "logic.py"), "SemiSupSegLogic").body
             if isinstance(f, ast.FunctionDef)}
    assert sorted(protocol) == sorted(interfaces.LOGIC_METHODS)
    for name, method in protocol.items():
        assert name in logic, f"SemiSupSegLogic lacks {name}"
        wanted, implemented = _signature(method), _signature(logic[name])
        # static and class methods have no self / cls: compare the parameters after it
        skip = 0 if any(getattr(d, "id", "") in ("staticmethod",) for d in logic[name].decorator_list) else 1
        assert implemented[0][skip:] == wanted[0][1:], name
        assert set(implemented[1]) == set(wanted[1]), name


def test_widget_calls_only_the_interface():
    source = open(os.path.join(LIB_DIR, "widget.py"), encoding="utf-8").read()
    called = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "logic" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
            called.add(node.attr)
    assert {"train", "segment", "suggest"} <= called
    assert called <= set(interfaces.LOGIC_METHODS), sorted(called - set(interfaces.LOGIC_METHODS))


def _slicer_util_calls():
    for path in MODULE_FILES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and ast.unparse(node.func.value) == "slicer.util":
                yield os.path.basename(path), node


def test_slicer_util_calls_match_slicer_5_8_1():
    calls = list(_slicer_util_calls())
    assert len(calls) > 20
    for where, call in calls:
        name = call.func.attr
        assert name in SLICER_581_UTIL, f"{where}: slicer.util.{name} is not in Slicer 5.8.1"
        params = SLICER_581_UTIL[name]
        named = [p for p in params if p != "**"]
        assert len(call.args) <= len(named), f"{where}: slicer.util.{name} takes {len(named)} arguments"
        for keyword in call.keywords:
            assert keyword.arg in named or "**" in params, f"{where}: slicer.util.{name} has no {keyword.arg}"


def test_logic_gives_every_long_command_a_stop_file_and_the_job_too():
    tree = _tree(os.path.join(LIB_DIR, "logic.py"))
    builders = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and ast.unparse(node.func.value) == "commands" and node.func.attr.endswith("_command"):
            builders[node.func.attr] = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "jobs.Job":
            job_keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
    assert set(builders) == {"train_command", "segment_command", "suggest_command"}
    assert all(keywords.get("stop_file") == "stopFile" for keywords in builders.values())
    assert job_keywords["stop_file"] == "stopFile" and job_keywords["stop_grace_s"] == "self.stopGracePeriod"
    source = ast.unparse(tree)
    assert source.count("stopFile = commands.stop_file_in(workFolder)") == 3  # in the job's temporary folder
