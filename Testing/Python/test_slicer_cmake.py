"""The extension's CMake files: every module script and resource is listed, the icons exist, and (when
cmake is installed) configuring the module with stand-ins for Slicer's two CMake macros ships the engine
package as qt-scripted-modules/SemiSupSegTraining/**/*.py beside the module, subpackages included."""

import os
import re
import shutil
import subprocess

import pytest

from source_tree import ENGINE, PROBE, copy_with_probe, python_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_DIR = os.path.join(ROOT, "SemiSupSeg")


def _cmake_list(text, variable):
    match = re.search(r"set\(" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, variable
    return [item.replace("${MODULE_NAME}", "SemiSupSeg") for item in match.group(1).split()]


def test_module_cmake_lists_every_script_and_resource():
    text = open(os.path.join(MODULE_DIR, "CMakeLists.txt"), encoding="utf-8").read()
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    on_disk = ["SemiSupSeg.py"] + ["SemiSupSegLib/" + p for p in python_files(os.path.join(MODULE_DIR, "SemiSupSegLib"))]
    assert sorted(scripts) == sorted(on_disk)
    for resource in _cmake_list(text, "MODULE_PYTHON_RESOURCES"):
        assert os.path.isfile(os.path.join(MODULE_DIR, resource)), resource
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_cmake_metadata():
    text = open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8").read()
    for needed in ['EXTENSION_DEPENDS "PyTorch"', 'EXTENSION_CATEGORY "Segmentation"', "find_package(Slicer REQUIRED)",
                   "include(${Slicer_USE_FILE})", "add_subdirectory(SemiSupSeg)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]:
        assert needed in text, needed
    for url in re.findall(r"https://raw\.githubusercontent\.com/semisupseg/SlicerSemiSupSeg/main/(\S+?)\"", text):
        assert os.path.isfile(os.path.join(ROOT, url)), url
    from PySide6.QtGui import QImage
    for icon in ("Resources/Icons/SemiSupSeg.png", "SemiSupSeg/Resources/Icons/SemiSupSeg.png"):
        image = QImage(os.path.join(ROOT, icon))
        assert (image.width(), image.height()) == (128, 128), icon


# Stand-ins that only record where each script would be copied (ctkMacroCompilePythonScript keeps a relative
# path, and makes an absolute one relative to the module's binary folder).
STUB_PROJECT = r"""
cmake_minimum_required(VERSION 3.16)
project(Check NONE)
set(BUILD_TESTING ON)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(value ${MY_SCRIPTS})
    if(IS_ABSOLUTE ${value})
      set(src ${value})
      file(RELATIVE_PATH tgt ${CMAKE_CURRENT_BINARY_DIR} ${value})
    else()
      set(src ${CMAKE_CURRENT_SOURCE_DIR}/${value})
      set(tgt ${value})
    endif()
    if(NOT EXISTS ${src})
      message(FATAL_ERROR "missing ${value}")
    endif()
    file(APPEND ${CMAKE_BINARY_DIR}/installed.txt "${tgt}\n")
  endforeach()
endmacro()
macro(slicer_add_python_unittest)
  string(JOIN " " args ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/installed.txt "test ${args}\n")
endmacro()
add_subdirectory(@MODULE_DIR@ SemiSupSeg)
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_engine_package_is_shipped_beside_the_module(tmp_path):
    """Configured from a copy of the module and the engine with one more subpackage (two levels deep): every
    engine file ships under its own folder, every module file too."""
    source = copy_with_probe(str(tmp_path / "src"), "SemiSupSeg", ENGINE)
    (tmp_path / "src" / "CMakeLists.txt").write_text(
        STUB_PROJECT.replace("@MODULE_DIR@", os.path.join(source, "SemiSupSeg").replace("\\", "/")))
    build = tmp_path / "build"
    build.mkdir()
    result = subprocess.run(["cmake", str(tmp_path / "src")], cwd=build, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    installed = (build / "installed.txt").read_text().split("\n")
    engine = python_files(os.path.join(source, ENGINE))
    assert f"{PROBE}/inner/step.py" in engine
    assert sorted(p.split("/", 1)[1] for p in installed if p.startswith(ENGINE + "/")) == engine
    module = ["SemiSupSegLib/" + p for p in python_files(os.path.join(MODULE_DIR, "SemiSupSegLib"))]
    assert set(module) <= set(installed) and "SemiSupSeg.py" in installed
    assert "test SCRIPT SemiSupSeg.py" in installed


def test_the_license_file_is_the_apache_license_that_pyproject_declares():
    text = open(os.path.join(ROOT, "LICENSE"), encoding="utf-8").read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000  # the full text, not a pointer
    assert 'license = { text = "Apache-2.0" }' in open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
