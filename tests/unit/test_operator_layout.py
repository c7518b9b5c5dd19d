"""operator/ must never shadow the standard library's `operator` module."""

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_operator_folder_is_not_a_package():
    assert not (REPO / "operator" / "__init__.py").exists()


def test_python_dash_s_imports_the_stdlib_operator_from_the_repo_root():
    out = subprocess.run([sys.executable, "-S", "-c", "import operator; print(operator.__file__)"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out).parent == Path(sysconfig.get_paths()["stdlib"]), out


def test_stt_operator_entry_point_prints_the_crd():
    out = subprocess.run([sys.executable, "-m", "stt_operator", "crd"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "kind: CustomResourceDefinition" in out and "sttpools.voxfleet.io" in out
