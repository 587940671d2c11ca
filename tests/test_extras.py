"""A missing optional extra stops with one line naming the extra and the install command."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO_ROOT, repo_path, subprocess_env
from vlprompt.extras import MissingExtraError, require


def test_require_names_the_extra_and_the_install_command():
    assert require("json", "plots", "nothing").dumps([1]) == "[1]"
    with pytest.raises(MissingExtraError, match=r"needs no_such_module_x, from the optional 'plots' extra.*"
                                                r'pip install "vlprompt\[plots\]"'):
        require("no_such_module_x.sub", "plots", "a figure")


def test_disef_generation_without_the_generation_extra_is_one_line(tmp_path, data_root):
    """diffusers and transformers hidden: the generator stops before loading any model, with one line."""
    probe = ("import sys; sys.modules['diffusers'] = None; sys.modules['transformers'] = None; "
             "from vlprompt.trainers.disef.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["--root", data_root, "--dataset-config-file", repo_path("configs/datasets/synthetic.yaml"),
            "--num-shots", "1", "--output-dir", str(tmp_path / "syn"), "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-c", probe, *argv], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "'generation' extra" in errors[0] and 'pip install "vlprompt[generation]"' in errors[0]
    assert "Traceback" not in proc.stderr
