"""`.ci/run` passes pytest's exit code through: 5 (no tests collected) must fail CI, not pass it."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("code", [0, 1, 5])
def test_ci_run_returns_pytests_exit_code(tmp_path, code):
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "setup.sh").write_text("#!/usr/bin/env bash\nexit 0\n")
    (tmp_path / ".ci" / "browser.sh").write_text("#!/usr/bin/env bash\nexit 0\n")  # the chromium install step
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/usr/bin/env bash\nexit {code}\n")  # a stand-in pytest with a chosen exit code
    for f in (tmp_path / ".ci" / "run", tmp_path / ".ci" / "browser.sh", tmp_path / "setup.sh", python):
        f.chmod(0o755)
    assert subprocess.run([str(tmp_path / ".ci" / "run")], capture_output=True).returncode == code
