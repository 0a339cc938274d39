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
PLAIN_PYTHON = ("__init__", "commands", "progress", "job", "cases", "labels", "install", "interfaces", "review",
                "form", "demo_cases", "terminology", "recorded_engine")

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
    "NodeModify": ["node"],
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
    assert {"train", "segment", "suggest", "resume", "resumableTraining"} <= called
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
    assert source.count("stopFile = commands.stop_file_in(workFolder)") == 4  # in the job's temporary folder


def test_the_logic_runs_the_engine_with_the_one_runner_and_never_falls_back_to_slicer():
    source = open(os.path.join(LIB_DIR, "logic.py"), encoding="utf-8").read()
    assert "launchConsoleProcess" not in source  # it decodes the engine's UTF-8 with the Windows code page
    assert "jobs.SubprocessRunner(\n            base_env=slicer.util.startupEnvironment())" in source
    assert "find_python_slicer(inside_slicer=True)" in source
    assert "find_python_slicer()" not in source and "sys.executable" not in source


def test_a_scene_close_detaches_the_jobs_before_the_parameter_node_goes():
    close = next(f for f in ast.walk(_tree(os.path.join(LIB_DIR, "widget.py")))
                 if isinstance(f, ast.FunctionDef) and f.name == "onSceneStartClose")
    calls = [ast.unparse(n.func) for n in ast.walk(close) if isinstance(n, ast.Call)]
    assert calls.index("self.detachJobs") < calls.index("self.setParameterNode")


def test_the_cases_are_node_reference_fields_of_the_parameter_node():
    wrapper = _class(os.path.join(LIB_DIR, "parameter_node.py"), "SemiSupSegParameterNode")
    fields = {n.target.id: ast.unparse(n.annotation) for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert fields["caseVolumes"] == "List[vtkMRMLScalarVolumeNode]"
    assert fields["caseSegmentations"] == "List[vtkMRMLSegmentationNode]"
    widget = open(os.path.join(LIB_DIR, "widget.py"), encoding="utf-8").read()
    # no cached copy: the table is read from the parameter node each time and written back whole
    assert "return readCases(self._parameterNode)" in widget and "writeCases(self._parameterNode, cases)" in widget
    assert "self.cases =" not in widget
    assert "from_json" not in widget and ".cases = self.cases.to_json()" not in widget


def _torch_imports(path):
    found = []
    for node in ast.walk(_tree(path)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [n for n in names if n.split(".")[0] == "torch" or n.endswith("modelfile")
                  or n.startswith("SemiSupSegTraining.") and n.split(".")[1] not in ("manifest", "modelinfo", "layouts", "config", "phantoms")]
    return found


@pytest.mark.parametrize("path", MODULE_FILES, ids=os.path.basename)
def test_the_module_imports_no_torch_in_slicers_process(path):
    # model metadata comes from the model.json beside the model file (or the engine, as a process)
    assert _torch_imports(path) == []
    assert ".torchInstalled()" not in open(path, encoding="utf-8").read()  # PyTorchUtils' check imports torch


def test_the_module_and_the_engine_pieces_it_imports_load_no_torch(tmp_path, tiny_model_file):
    import subprocess
    import sys

    code = (f"import sys; sys.path.insert(0, {MODULE_DIR!r})\n"
            "from SemiSupSegLib import cases, commands, install, job, labels, progress, recorded_engine, review, "
            "terminology\n"
            "from SemiSupSegTraining.modelinfo import read_metadata_file\n"
            f"meta = read_metadata_file({tiny_model_file!r})\n"
            "assert [c['name'] for c in meta['classes']] == ['background', 'class 1'], meta['classes']\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_results_are_coded_and_placed_in_the_input_volumes_study():
    source = open(os.path.join(LIB_DIR, "nodes.py"), encoding="utf-8").read()
    assert "segment.SetTag(segment.GetTerminologyEntryTagName(), entry)" in source
    assert "shNode.SetItemParent(shNode.GetItemByDataNode(node), studyItem)" in source
    logic = open(os.path.join(LIB_DIR, "logic.py"), encoding="utf-8").read()
    assert "nodes.newSegmentationFor(volumeNode)" in logic and "DocumentsLocation" not in logic


def test_the_ctest_self_test_is_quick_unless_the_full_one_is_asked_for():
    source = open(os.path.join(MODULE_DIR, "SemiSupSeg.py"), encoding="utf-8").read()
    assert 'FULL = os.environ.get("SEMISUPSEG_FULL_SELFTEST", "") not in ("", "0")' in source
    assert "if not self.FULL:\n            logic.runner = ReplayRunner(" in source


# The MRML, segmentation and markups methods the module calls, each with the Slicer 5.8.1 header that declares
# it (read at tag v5.8.1); VTK's, Qt's and the project's own names are listed apart.
SLICER_581_METHODS = {
    "AddEmptySegment": "Libs/vtkSegmentationCore/vtkSegmentation.h",
    "AddNewNodeByClass": "Libs/MRML/Core/vtkMRMLScene.h",
    "Clear": "Libs/MRML/Core/vtkMRMLScene.h",
    "CreateDefaultDisplayNodes": "Libs/MRML/Core/vtkMRMLDisplayableNode.h",
    "ExportSegmentsToLabelmapNode": "Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.h",
    "GenerateUniqueName": "Libs/MRML/Core/vtkMRMLScene.h",
    "GetAttribute": "Libs/MRML/Core/vtkMRMLNode.h",
    "GetColor": "Libs/vtkSegmentationCore/vtkSegment.h",
    "GetColorNode": "Libs/MRML/Core/vtkMRMLDisplayNode.h",
    "GetDisplayNode": "Libs/MRML/Core/vtkMRMLDisplayableNode.h",
    "GetFileName": "Libs/MRML/Core/vtkMRMLStorageNode.h",
    "GetFirstNodeByClass": "Libs/MRML/Core/vtkMRMLScene.h",
    "GetID": "Libs/MRML/Core/vtkMRMLNode.h",
    "GetImageData": "Libs/MRML/Core/vtkMRMLVolumeNode.h",
    "GetItemByDataNode": "Libs/MRML/Core/vtkMRMLSubjectHierarchyNode.h",
    "GetItemParent": "Libs/MRML/Core/vtkMRMLSubjectHierarchyNode.h",
    "GetModifiedSinceRead": "Libs/MRML/Core/vtkMRMLStorableNode.h",
    "GetName": "Libs/MRML/Core/vtkMRMLNode.h, Libs/vtkSegmentationCore/vtkSegment.h",
    "GetNodeByID": "Libs/MRML/Core/vtkMRMLScene.h",
    "GetNodeReference": "Libs/MRML/Core/vtkMRMLNode.h",
    "GetNthSegmentID": "Libs/vtkSegmentationCore/vtkSegmentation.h",
    "GetNumberOfSegments": "Libs/vtkSegmentationCore/vtkSegmentation.h",
    "GetParentTransformNode": "Libs/MRML/Core/vtkMRMLTransformableNode.h",
    "GetRASBounds": "Modules/Loadable/Markups/MRML/vtkMRMLMarkupsROINode.h, Libs/MRML/Core/vtkMRMLDisplayableNode.h",
    "GetRASToIJKMatrix": "Libs/MRML/Core/vtkMRMLVolumeNode.h",
    "GetIJKToRASDirectionMatrix": "Libs/MRML/Core/vtkMRMLVolumeNode.h",
    "GetSpacing": "Libs/MRML/Core/vtkMRMLVolumeNode.h",
    "GetOrigin": "Libs/MRML/Core/vtkMRMLVolumeNode.h",
    "GetReferenceImageGeometryReferenceRole": "Libs/MRML/Core/vtkMRMLSegmentationNode.h",
    "GetRepresentation": "Libs/vtkSegmentationCore/vtkSegment.h",
    "GetSegment": "Libs/vtkSegmentationCore/vtkSegmentation.h",
    "GetSegmentation": "Libs/MRML/Core/vtkMRMLSegmentationNode.h",
    "GetSourceRepresentationName": "Libs/vtkSegmentationCore/vtkSegmentation.h",
    "GetStorageNode": "Libs/MRML/Core/vtkMRMLStorableNode.h",
    "GetSubjectHierarchyNode": "Libs/MRML/Core/vtkMRMLSubjectHierarchyNode.h",
    "GetTerminologyEntryTagName": "Libs/vtkSegmentationCore/vtkSegment.h",
    "GetTransformBetweenNodes": "Libs/MRML/Core/vtkMRMLTransformNode.h",
    "GetTransformNodeID": "Libs/MRML/Core/vtkMRMLTransformableNode.h",
    "ImportLabelmapToSegmentationNode": "Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.h",
    "IsNodePresent": "Libs/MRML/Core/vtkMRMLScene.h",
    "ReadData": "Libs/MRML/Core/vtkMRMLStorageNode.h",
    "RemoveNode": "Libs/MRML/Core/vtkMRMLScene.h",
    "SetAndObserveTransformNodeID": "Libs/MRML/Core/vtkMRMLTransformableNode.h",
    "SetAttribute": "Libs/MRML/Core/vtkMRMLNode.h",
    "SetCenter": "Modules/Loadable/Markups/MRML/vtkMRMLMarkupsROINode.h",
    "SetColor": "Libs/vtkSegmentationCore/vtkSegment.h",
    "SetFileName": "Libs/MRML/Core/vtkMRMLStorageNode.h",
    "SetItemParent": "Libs/MRML/Core/vtkMRMLSubjectHierarchyNode.h",
    "SetName": "Libs/MRML/Core/vtkMRMLNode.h, Libs/vtkSegmentationCore/vtkSegment.h",
    "SetNodeReferenceID": "Libs/MRML/Core/vtkMRMLNode.h",
    "SetReferenceImageGeometryParameterFromVolumeNode": "Libs/MRML/Core/vtkMRMLSegmentationNode.h",
    "SetSize": "Modules/Loadable/Markups/MRML/vtkMRMLMarkupsROINode.h",
    "SetTag": "Libs/vtkSegmentationCore/vtkSegment.h",
    "SetUseCompression": "Libs/MRML/Core/vtkMRMLStorageNode.h",
    "WriteData": "Libs/MRML/Core/vtkMRMLStorageNode.h",
}
VTK_QT_AND_OWN = {"QDesktopServices", "QUrl", "ImageFileReader", "ReadImageInformation", "GetSize", "GetDirection",
                  "GetDimension", "GetNumberOfComponents", "GetElement", "vtkMatrix4x4", "GetMTime", "GetDimensions", "InsertNextValue", "MultiplyPoint", "TransformPoint", "GetClassName",
                  "IsA", "QSettings", "QTableWidgetItem", "QTimer", "FormState", "NodeInfo", "Job", "SubprocessRunner",
                  "PyTorchUtilsLogic"}
SLICER_FILES = [os.path.join(MODULE_DIR, "SemiSupSeg.py")] + [os.path.join(LIB_DIR, name + ".py") for name in
                                                               ("nodes", "logic", "widget", "parameter_node")]


@pytest.mark.parametrize("path", SLICER_FILES, ids=os.path.basename)
def test_every_mrml_method_the_module_calls_was_checked_against_slicer_5_8_1(path):
    called = {n.func.attr for n in ast.walk(_tree(path)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
              and n.func.attr[:1].isupper() and not ast.unparse(n.func.value).startswith("slicer.util")}
    unchecked = called - set(SLICER_581_METHODS) - VTK_QT_AND_OWN
    assert not unchecked, f"check these against Slicer 5.8.1's headers and list them: {sorted(unchecked)}"
