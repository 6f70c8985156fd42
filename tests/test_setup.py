"""scripts/setup.sh is a no-op when nothing changed: its "already set up" check passes on a set-up machine (it once
always failed, importing the extension before torch, and every `make` re-installed everything) and fails when a
build input changes or the installed package is another checkout's."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = os.path.join(ROOT, ".setup-stamp")


def _check(root, **env) -> int:
    return subprocess.run(["bash", os.path.join(root, "scripts", "setup.sh"), "--check"], capture_output=True,
                          timeout=120, env={**os.environ, **env}).returncode


@pytest.mark.skipif(not os.path.isfile(STAMP), reason="run `make setup` first (make test does)")
def test_the_set_up_check_passes_here_and_fails_when_an_input_changes(tmp_path):
    assert _check(ROOT) == 0  # make test ran the set-up: a second run would install nothing
    for name in ("scripts", "csrc"):
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name)
    for name in ("setup.py", "pyproject.toml", "requirements.txt", ".setup-stamp"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    assert _check(tmp_path) == 1  # a copy whose package is not the one installed: it would install
    os.symlink(os.path.join(ROOT, "fastmoco"), tmp_path / "fastmoco")  # the installed package, seen from the copy
    assert _check(tmp_path) == 0
    cuda = os.environ.get("FASTMOCO_CUDA", "0")
    assert _check(tmp_path, FASTMOCO_CUDA="0" if cuda == "1" else "1") == 1  # another build (CUDA kernel or not)
    with open(tmp_path / "requirements.txt", "a") as fh:
        fh.write("# a changed pin\n")
    assert _check(tmp_path) == 1
    (tmp_path / ".setup-stamp").unlink()
    assert _check(tmp_path) == 1
