"""Every command the README and the `--help` epilogs show works as written."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_test_command_is_what_ci_runs_and_needs_no_activated_venv():
    first, second = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert "pip install -e" in first and second == ".venv/bin/python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    run = [line.split("#")[0].strip() for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert run[0] == second and "deactivate" in ci.split(second)[0]
