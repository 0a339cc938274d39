"""The exact pip arguments the module runs (SemiSupSegLib.install): torch and numpy held by constraints, a
monai range that supports the installed torch, one sentence when none does."""

import pytest
from SemiSupSegLib import commands, install

CONSTRAINTS = "c.txt"


@pytest.mark.parametrize("python, torch, numpy, expected", [
    # Slicer 5.8.1 (Python 3.9.10, numpy 1.26.4) with the torch the PyTorch extension installed
    ("3.9.10", "1.13.1+cu117", "1.26.4", "monai>=1.2,<1.5.0"),  # 1.5 needs torch >= 2.4.1
    ("3.9.10", "2.1.2", "1.26.4", "monai>=1.2,<1.5.0"),
    ("3.9.10", "2.4.1+cpu", "1.26.4", "monai>=1.2,<1.6.0"),     # 1.6 needs Python >= 3.10
    ("3.9.10", "2.8.0", "1.26.4", "monai>=1.2,<1.6.0"),         # 1.5.0 caps torch < 2.7, 1.5.1/1.5.2 do not
    # Slicer 5.10 (Python 3.12.10, numpy 2.0.2)
    ("3.12.10", "2.1.0", "2.0.2", "monai>=1.2,<1.4.0"),         # 1.4.0 needs numpy < 2.0
    ("3.12.10", "2.4.1", "2.0.2", "monai>=1.2,<1.6.0"),
    ("3.12.10", "2.8.0+cu128", "2.0.2", "monai>=1.2"),          # the newest release fits: no upper bound
])
def test_pip_arguments_for_installed_torch_versions(python, torch, numpy, expected):
    requirements, why_not = install.install_plan(commands.missing_requirements(find_spec=lambda name: None),
                                                 python, torch, numpy)
    assert why_not is None
    assert install.pip_arguments(requirements, CONSTRAINTS) == [expected, "scipy>=1.7", "psutil>=5.9",
                                                               "-c", CONSTRAINTS]
    assert install.constraints_text(torch, numpy) == f"torch=={torch}\nnumpy=={numpy}\n"


def test_a_torch_no_monai_supports_gets_one_sentence_and_no_install():
    requirements, why_not = install.install_plan(["monai>=1.2", "psutil>=5.9"], "3.9.10", "1.8.1", "1.26.4")
    assert requirements == []
    assert why_not.startswith("No MONAI release supports the installed PyTorch 1.8.1") and why_not.count(". ") == 0
    assert "'>=2.4.1'" in why_not


def test_only_what_is_missing_is_installed_and_monai_only_when_missing():
    assert install.install_plan(["psutil>=5.9"], "3.9.10", "2.1.2", "1.26.4") == (["psutil>=5.9"], None)
    assert install.install_plan([], "3.9.10", "2.1.2", "1.26.4") == ([], None)


def test_constraints_file_and_the_checks_after_installing(tmp_path):
    path = install.write_constraints(str(tmp_path / "pip"), "2.1.2+cu118", "1.26.4")
    assert open(path).read() == "torch==2.1.2+cu118\nnumpy==1.26.4\n"
    before = {"torch": "2.1.2+cu118", "numpy": "1.26.4"}
    assert install.check_unchanged(before, dict(before)) is None
    assert "torch 2.1.2+cu118 -> 2.8.0" in install.check_unchanged(before, {"torch": "2.8.0", "numpy": "1.26.4"})
    assert "Extensions Manager" in install.check_torch(None, commands.TORCH_REQUIREMENT)


def test_versions_are_read_without_importing():
    versions = install.installed_versions({"torch": "2.13.0", "numpy": "2.1.0"}.__getitem__)
    assert versions == {"torch": "2.13.0", "numpy": "2.1.0"}
    assert install.installed_versions(lambda name: (_ for _ in ()).throw(LookupError(name))) == \
        {"torch": None, "numpy": None}
    assert install.version_tuple("2.4.0a0+git") == (2, 4, 0) and install.version_tuple("1.13.1+cu117") == (1, 13, 1)


def test_the_release_table_is_newest_first_and_every_release_meets_the_engine_minimum():
    versions = [install.version_tuple(r.version) for r in install.MONAI_RELEASES]
    assert versions == sorted(versions, reverse=True)
    assert min(versions) >= install.version_tuple(install.MONAI_MINIMUM)
    assert commands.ENGINE_REQUIREMENTS["monai"] == f"monai>={install.MONAI_MINIMUM}"


#: torch APIs the engine calls that are newer than torch 1.13, with the release that brought them.
NEWER_TORCH_APIS = {"torch.amp.GradScaler(": "2.3"}


def _floor(requirement):
    return install.version_tuple(requirement.lstrip(">= "))


def test_the_torch_floor_covers_every_api_the_engine_calls_and_is_the_same_everywhere():
    import glob
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sources = "".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(root, "SemiSupSegTraining", "*.py")))
    needed = max(install.version_tuple(v) for api, v in NEWER_TORCH_APIS.items() if api in sources)
    assert _floor(commands.TORCH_REQUIREMENT) >= needed  # fp16 training on a GPU fails on an older torch
    pyproject = open(os.path.join(root, "pyproject.toml"), encoding="utf-8").read()
    assert re.search(r'"torch>=([\d.]+)"', pyproject).group(1) == commands.TORCH_REQUIREMENT.lstrip(">= ")
    assert install.check_torch("2.2.2", commands.TORCH_REQUIREMENT).startswith("PyTorch 2.2.2 is too old")
    assert install.check_torch("2.3.0+cu121", commands.TORCH_REQUIREMENT) is None


def test_intel_macs_get_one_sentence_before_any_download():
    message = install.platform_refusal("Darwin", "x86_64", None)
    assert message and "Intel Mac" in message and "2.2.2" in message and message.count(". ") == 0
    assert install.platform_refusal("Darwin", "arm64", None) is None
    assert install.platform_refusal("Windows", "AMD64", None) is None
    assert install.platform_refusal("Darwin", "x86_64", "2.2.2") is None  # installed: its version is checked


def test_a_failed_install_names_the_exact_packages_to_fetch():
    import subprocess

    error = subprocess.CalledProcessError(1, ["pip", "install"], output="ERROR: No matching distribution found")
    message = install.offline_message(["monai>=1.2,<1.6.0", "psutil>=5.9"], error)
    assert "pip download monai>=1.2,<1.6.0 psutil>=5.9" in message and "--no-index" in message
    assert "returned non-zero exit status 1" in message


def test_the_dependencies_section_lists_versions_without_importing():
    versions = {"torch": "2.4.1", "numpy": "1.26.4", "SimpleITK": "2.4.0"}

    def version_of(name):
        if name not in versions:
            raise LookupError(name)
        return versions[name]

    lines = install.dependency_lines(version_of)
    assert lines[:3] == ["torch 2.4.1", "numpy 1.26.4", "SimpleITK 2.4.0"]
    assert "monai: not installed (pip, on first use)" in lines and len(lines) == len(install.DEPENDENCIES)
