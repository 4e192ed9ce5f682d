"""`nlcore bench` (the current main job) runs end to end and writes its record."""
import json
import os
from pathlib import Path

import pytest

from nlcore import cli

REPO = Path(__file__).resolve().parent.parent


def test_bench_quick_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    rc = cli.main(["bench", "--quick", "--no-compile", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    files = list(tmp_path.glob("bench-*.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    rows = [r for r in rec["rows"] if r["op"] == "newton_schulz"]
    impls = {r["impl"] for r in rows}
    assert {"nlcore", "torch_eager"} <= impls
    assert all(r.get("error") in (None, "") and r["ms"] > 0 for r in rows)
    assert "newton_schulz" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "nlcore bench" in capsys.readouterr().out


def test_bench_outside_a_checkout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick"]) == 2
    assert "source tree" in capsys.readouterr().err
