"""The pip package: the wheel built from the source holds every engine file, subpackages included (one made
for the test proves that a new subpackage ships without editing pyproject.toml), and its console script."""

import os
import subprocess
import sys
import zipfile

import pytest

from source_tree import ENGINE, PROBE, copy_with_probe, python_files


def test_the_wheel_holds_every_engine_file_and_any_new_subpackage(tmp_path):
    pytest.importorskip("setuptools")
    source = copy_with_probe(str(tmp_path / "src"), "pyproject.toml", "README.md", "LICENSE", ENGINE)
    out = tmp_path / "dist"
    out.mkdir()
    # setuptools' build API in the copy, offline (no isolated environment to download).
    result = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                             "print(build_meta.build_wheel(sys.argv[1]))", str(out)],
                            cwd=source, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    wheel = out / result.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n[len(ENGINE) + 1:] for n in names if n.startswith(ENGINE + "/") and n.endswith(".py"))
    assert shipped == python_files(os.path.join(source, ENGINE))
    assert f"{PROBE}/inner/step.py" in shipped and "cli.py" in shipped
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "semisupseg = SemiSupSegTraining.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
