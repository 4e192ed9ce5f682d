"""The `nlcore` command: its subcommands and help, a fast start, `nlcore bench` (the op
benchmarks) end to end. train / eval / generate are tested in test_train.py."""
import json
import subprocess
import sys
from pathlib import Path

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
    out = capsys.readouterr().out
    for cmd in ("nlcore train", "nlcore eval", "nlcore generate", "nlcore bench", "torchrun"):
        assert cmd in out


def test_help_of_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    assert "{train,eval,generate,bench}" in capsys.readouterr().out
    for cmd, flag in (("train", "--resume"), ("eval", "--checkpoint"),
                      ("generate", "--max-new-tokens")):
        assert cli.main([cmd, "--help"]) == 0
        assert flag in capsys.readouterr().out
    assert cli.main(["fly"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_is_fast_and_loads_no_training_code():
    """`nlcore --help` parses arguments only: the trainer, tqdm and matplotlib stay unloaded
    (importing the nlcore package itself loads torch)."""
    code = ("import sys; from nlcore import cli; rc = cli.main(['train', '--help']); "
            "heavy = [m for m in ('nlcore.train.trainer', 'nlcore.train.evaluate', 'tqdm', "
            "'matplotlib', 'torch.distributed.fsdp') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    r = subprocess.run([sys.executable, "-m", "nlcore.cli", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "nlcore train" in r.stdout


def test_bench_outside_a_checkout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick"]) == 2
    assert "source tree" in capsys.readouterr().err
