"""docs/GPU.md: every module it runs exists and answers --help; its device commands fit the tool's limits."""

from __future__ import annotations

import importlib
import re

import pytest

from models import spec

DOC = spec.ROOT / "docs" / "GPU.md"
TEXT = DOC.read_text()
MODULES = sorted(set(re.findall(r"python3? -m (perf[\w.]*)", TEXT)))
DEVICE_COMMANDS = [c for c in re.findall(r"```bash\n(.*?)\n```", TEXT, re.S) if c.startswith("set -o pipefail")]


def test_the_doc_names_the_gpu_modules():
    assert {"perf.gpu_probe", "perf.gpu.serve", "perf.gpu.report", "perf.gpu.prepare_carry"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_the_doc_runs_answers_help(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_device_commands_fit_one_call_and_keep_their_output():
    assert len(DEVICE_COMMANDS) == 2
    for cmd in DEVICE_COMMANDS:
        assert "\n" not in cmd and len(cmd) <= 2000  # the device tool's command limit
        assert "$OUT/" in cmd and "PYTHONUNBUFFERED=1" in cmd
