"""`nlcore train / eval / generate` end to end on the CPU, in temporary folders: exact resume,
the tiny preset learning the embedded corpus, eval and generate, crash-safe checkpoints,
DDP/FSDP2 under torchrun equal to one process, and bad input giving a clear message and a
non-zero exit status (never a traceback).

Runs are small (windows of 32 bytes, a few steps) so the whole file takes about two minutes
on two cores."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlcore import cli
from nlcore.train import checkpoint as ckpt_io
from nlcore.train.data import (WindowSampler, load_corpus, validation_windows)

SMALL = ["--seq-len", "32", "--batch-size", "4", "--eval-windows", "8", "--no-progress",
         "--no-plot"]


def train(out, *extra, steps=4):
    return cli.main(["train", "--out", str(out), "--steps", str(steps), *SMALL, *extra])


def records(run, event="train"):
    lines = (Path(run) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def weights(ckpt):
    d = Path(ckpt)
    if (d / "model.safetensors").is_file():
        from safetensors.torch import load_file
        return load_file(str(d / "model.safetensors"))
    return torch.load(d / "pytorch_model.bin", weights_only=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run shared by the eval/generate/bad-checkpoint tests (copy it to modify)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert train(out, "--save-every", "2", steps=4) == 0
    return out


def copy_run(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ training


def test_resume_continues_bit_identically(tmp_path, monkeypatch, capsys):
    """An interrupted run resumed from its checkpoint gives the same losses, validation and
    final weights as an uninterrupted run."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train(whole, "--save-every", "3", "--eval-every", "3", steps=6) == 0

    real_next = WindowSampler.next

    def interrupt(self):
        if self.drawn == 4:          # during step 5: step 4 was trained but never saved
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(WindowSampler, "next", interrupt)
    assert train(cut, "--save-every", "3", "--eval-every", "3", steps=6) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 4" in err and "checkpoint-3" in err and "--resume" in err
    assert (cut / "latest").read_text().strip() == "checkpoint-3"
    monkeypatch.setattr(WindowSampler, "next", real_next)

    assert train(cut, "--resume", "--save-every", "3", "--eval-every", "3", steps=6) == 0
    assert "resuming" in capsys.readouterr().out
    a, b = records(whole), records(cut)
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]          # bit-identical
    assert [r["val_bpb"] for r in records(whole, "eval")] == \
        [r["val_bpb"] for r in records(cut, "eval")]
    wa, wb = weights(whole / "checkpoint-6"), weights(cut / "checkpoint-6")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = json.loads((whole / "checkpoint-6" / "trainer_state.json").read_text())
    sb = json.loads((cut / "checkpoint-6" / "trainer_state.json").read_text())
    assert sa["sampler"] == sb["sampler"] and sa["rng"] == sb["rng"]


def test_tiny_preset_learns_the_embedded_corpus(tmp_path, capsys):
    out = tmp_path / "learn"
    rc = cli.main(["train", "--out", str(out), "--steps", "40", "--seq-len", "32",
                   "--batch-size", "16", "--lr", "0.01", "--adamw-lr", "3e-3",
                   "--eval-every", "20", "--eval-windows", "64", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    evals = records(out, "eval")
    assert [r["step"] for r in evals] == [0, 20, 40]
    first, last = evals[0]["val_bpb"], evals[-1]["val_bpb"]
    assert 7.5 < first < 8.5                                  # ≈ uniform over 256 bytes
    assert last < first - 1.5, evals                          # it learns
    assert f"{last:.4f} bits per byte" in text
    plots = [p for p in ("loss.png", "loss.svg") if (out / p).is_file()]
    assert plots and f"loss curve: {out / plots[0]}" in text
    if plots[0] == "loss.svg":
        assert "matplotlib is not installed" in text
    end = records(out, "end")[0]
    assert end["val_bpb"] == last and end["step"] == 40


def test_progress_and_log(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "p"), "--steps", "2", "--seq-len", "32",
                     "--batch-size", "2", "--eval-windows", "2", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "2/2" in out and "tok_s" in out                    # tqdm or the plain printer
    rec = records(tmp_path / "p")
    assert [r["step"] for r in rec] == [1, 2]
    assert all(r["tokens"] == r["step"] * 64 and r["tok_per_s"] > 0 for r in rec)
    start = records(tmp_path / "p", "start")[0]
    assert start["data"]["source"] == "embedded" and start["model_config"]["vocab_size"] == 256


def test_adamw_option_folder_corpus_and_overrides(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("alpha beta gamma delta " * 60)
    (docs / "sub" / "b.md").write_text("# heading\n" + "epsilon zeta eta theta " * 60)
    (docs / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)        # skipped: binary
    (docs / ".hidden").write_text("never read")
    c = load_corpus(str(docs))
    assert c.files == 2 and b"\x00" not in c.data and b"never" not in c.data
    assert c.data.startswith(b"alpha") and b"epsilon" in c.data   # sorted path order
    out = tmp_path / "run"
    assert train(out, "--data", str(docs), "--optimizer", "adamw", "--set",
                 "main_memory=mlp", "--set", "cms_chunk_sizes=[8]", steps=2) == 0
    cfg = json.loads((out / "checkpoint-2" / "config.json").read_text())
    assert cfg["main_memory"] == "mlp" and cfg["cms_chunk_sizes"] == [8]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["run"]["optimizer"] == "adamw" and state["data"]["files"] == 2
    assert torch.load(out / "checkpoint-2" / "optimizer.pt",
                      weights_only=True)["optimizer"] == "adamw"


def test_data_split_sampler_and_windows():
    c = load_corpus(None)
    train_ids, val_ids = c.split()
    assert len(train_ids) + len(val_ids) == len(c.data)
    assert abs(len(val_ids) - 0.05 * len(c.data)) <= 1
    assert bytes(val_ids[-50:].tolist()) == c.data[-50:]           # the last 5%
    s1, s2 = WindowSampler(train_ids, 16, 3, seed=5), WindowSampler(train_ids, 16, 3, seed=5)
    s1.next()
    s2.load_state_dict(s1.state_dict())
    assert torch.equal(s1.next(), s2.next()) and s1.drawn == 2
    w = validation_windows(val_ids, 100)
    assert w.shape == (len(val_ids) // 100, 100) and w.dtype == torch.int64
    assert torch.equal(w[1], val_ids[100:200].long())
    few = validation_windows(val_ids, 100, max_windows=5)
    assert few.shape[0] == 5 and torch.equal(few[0], w[0]) and torch.equal(few[-1], w[-1])


# ------------------------------------------------------------------ eval and generate


def test_eval_writes_bits_per_byte(trained, tmp_path, capsys):
    js = tmp_path / "e.json"
    assert cli.main(["eval", "--checkpoint", str(trained), "--json", str(js)]) == 0
    table = capsys.readouterr().out
    rec = json.loads(js.read_text())
    assert rec["step"] == 4 and rec["split"] == "val" and rec["seq_len"] == 32
    assert math.isclose(rec["bits_per_byte"], rec["loss"] / math.log(2))
    assert f"{rec['bits_per_byte']:.4f}" in table and "bits_per_byte" in table
    # the same number as the training run's last validation on the same windows
    assert cli.main(["eval", "--checkpoint", str(trained / "checkpoint-4"), "--max-windows",
                     "8", "--json", str(js)]) == 0
    assert math.isclose(json.loads(js.read_text())["bits_per_byte"],
                        records(trained, "eval")[-1]["val_bpb"], rel_tol=1e-9)
    # another corpus, all of it; default JSON next to the checkpoint
    text = tmp_path / "t.txt"
    text.write_text("Some other text to score. " * 20)
    run = copy_run(trained, tmp_path)
    assert cli.main(["eval", "--checkpoint", str(run), "--data", str(text), "--split", "all",
                     "--seq-len", "16"]) == 0
    rec = json.loads((run / "checkpoint-4" / "eval.json").read_text())
    assert rec["split"] == "all" and rec["windows"] == len(text.read_bytes()) // 16


def test_generate(trained, capsys):
    args = ["generate", "--checkpoint", str(trained), "--prompt", "The for statement",
            "--max-new-tokens", "24", "--seed", "3"]
    assert cli.main(args) == 0
    a = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == a and a.startswith("The for statement")
    assert cli.main(args[:-2] + ["--window", "0", "--temperature", "0"]) == 0  # recurrent
    assert capsys.readouterr().out.startswith("The for statement")


# ------------------------------------------------------------------ checkpoints are crash-safe


def test_interrupted_save_leaves_no_complete_looking_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        if Path(str(f)).name == "optimizer.pt" and ".tmp-checkpoint-4-" in str(f):
            real_save(obj, f, *a, **k)
            Path(str(f)).write_bytes(Path(str(f)).read_bytes()[:100])   # a partial write
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    assert train(out, "--save-every", "2", steps=4) == 130
    monkeypatch.setattr(torch, "save", real_save)
    assert "interrupted at step 4" in capsys.readouterr().err
    assert sorted(p.name for p in ckpt_io.checkpoints(out)) == ["checkpoint-2"]
    assert (out / "latest").read_text().strip() == "checkpoint-2"
    tmp = [p for p in out.iterdir() if p.name.startswith(".tmp-checkpoint-4-")]
    assert len(tmp) == 1 and not (tmp[0] / "trainer_state.json").exists()
    _fails(capsys, ["eval", "--checkpoint", str(tmp[0])], "an unfinished checkpoint")
    assert train(out, "--resume", "--save-every", "2", steps=4) == 0
    assert "checkpoint-2 at step 2" in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert (out / "latest").read_text().strip() == "checkpoint-4"


def test_checkpoint_save_is_atomic(tmp_path):
    def broken(folder):
        (folder / "optimizer.pt").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt_io.save(tmp_path, 7, broken, keep=None)
    assert ckpt_io.checkpoints(tmp_path) == [] and not (tmp_path / "latest").exists()
    assert ckpt_io.latest(tmp_path) is None
    path = ckpt_io.save(tmp_path, 8, lambda d: (d / "x.bin").write_bytes(b"123") and {"step": 8},
                        keep=None)
    assert ckpt_io.read_state(path)["files"] == {"x.bin": 3}
    assert ckpt_io.latest(tmp_path) == path


# ------------------------------------------------------------------ bad input


def _fails(capsys, argv, match, code=2):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == code, (rc, err)
    assert match in err, err
    assert "Traceback" not in err


def test_bad_input_before_training(tmp_path, capsys):
    out = str(tmp_path / "o")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "x.bin").write_bytes(b"\x00" * 10)
    small = tmp_path / "small.txt"
    small.write_text("too short")
    afile = tmp_path / "afile"
    afile.write_text("x")
    T = ["train", "--out", out, "--steps", "2", "--no-progress"]
    _fails(capsys, T + ["--data", str(tmp_path / "missing.txt")], "no such file or folder")
    _fails(capsys, T + ["--data", str(empty)], "the corpus is empty")
    _fails(capsys, T + ["--data", str(blank)], "the corpus is empty")
    _fails(capsys, T + ["--data", str(small)], "too few for --seq-len")
    _fails(capsys, T + ["--preset", "gigantic"], "unknown preset 'gigantic'")
    _fails(capsys, T + ["--set", "colour=3"], "--set colour: not a HopeConfig field")
    _fails(capsys, T + ["--set", "d_model=-1"], "d_model must be an int >= 1")
    _fails(capsys, T + ["--seq-len", "1"], "--seq-len must be an int >= 2")
    _fails(capsys, T + ["--lr", "-1"], "--lr must be a number > 0")
    _fails(capsys, ["train", "--out", str(afile / "sub"), "--steps", "2"], "cannot write there")
    _fails(capsys, T + ["--optimizer", "sgd"], "invalid choice")           # argparse
    _fails(capsys, ["train", "--steps", "2"], "--out")                     # argparse
    _fails(capsys, ["eval", "--checkpoint", str(tmp_path / "nope")], "no such folder")
    _fails(capsys, ["eval", "--checkpoint", str(tmp_path)], "neither a run folder")
    _fails(capsys, ["generate", "--checkpoint", str(tmp_path), "--prompt", "x"],
           "neither a run folder")


def test_bad_checkpoints(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    T = ["train", "--out", str(run), "--steps", "6", "--no-progress", "--no-plot"]
    _fails(capsys, T, "already holds a run")
    _fails(capsys, T + ["--resume", "--seq-len", "64"], "--seq-len 64 (the checkpoint has 32)")
    _fails(capsys, T + ["--resume", "--preset", "small"], "cannot resume")
    _fails(capsys, T + ["--resume", "--optimizer", "adamw"], "cannot resume")
    other = tmp_path / "other.txt"
    other.write_text("different data " * 400)
    _fails(capsys, T + ["--resume", "--data", str(other)], "cannot resume: the checkpoint was "
           "trained on")
    _fails(capsys, T[:4] + ["2", "--resume"], "past --steps 2")
    ck = run / "checkpoint-4"
    (ck / "optimizer.pt").unlink()                              # half-written / damaged
    _fails(capsys, T + ["--resume"], "is incomplete: optimizer.pt is missing")
    state = (ck / "trainer_state.json").read_text()
    (ck / "trainer_state.json").write_text(state[:len(state) // 2])
    _fails(capsys, T + ["--resume"], "half-written")
    _fails(capsys, ["eval", "--checkpoint", str(ck)], "half-written")
    (ck / "trainer_state.json").write_text(state)
    shutil.copy(trained / "checkpoint-4" / "optimizer.pt", ck / "optimizer.pt")
    weights_file = [p for p in ck.iterdir() if p.name.startswith(("model.", "pytorch_model"))][0]
    weights_file.write_bytes(weights_file.read_bytes()[:-10])
    _fails(capsys, T + ["--resume"], f"is damaged: {weights_file.name}")
    (run / "latest").write_text("checkpoint-99\n")
    _fails(capsys, T + ["--resume"], "not a checkpoint folder")
    # a model of another shape under the same name: the model check catches it
    shutil.rmtree(ck)
    (run / "latest").unlink()
    cfg = run / "checkpoint-2" / "config.json"
    cfg.write_text(cfg.read_text().replace('"d_model": 64', '"d_model": 32'))  # same size
    _fails(capsys, ["eval", "--checkpoint", str(run / "checkpoint-2")], "cannot load the model")
    # --overwrite starts over
    assert cli.main(T[:4] + ["1", "--overwrite", *SMALL]) == 0
    assert [p.name for p in ckpt_io.checkpoints(run)] == ["checkpoint-1"]


def test_diverging_run_stops_with_a_message(tmp_path, capsys):
    _fails(capsys, ["train", "--out", str(tmp_path / "d"), "--steps", "3", *SMALL,
                    "--lr", "1e30", "--adamw-lr", "1e30"], "training diverged", code=1)


# ------------------------------------------------------------------ torchrun


def _gloo_ok() -> bool:
    try:
        import torch.distributed as dist
        return dist.is_available() and dist.is_gloo_available()
    except Exception:
        return False


@pytest.mark.skipif(not _gloo_ok(), reason="torch.distributed with gloo unavailable")
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_torchrun_two_processes_equal_one(tmp_path, kind):
    """2 CPU processes (gloo) with the global batch split by rows follow the loss curve of
    one process with the whole batch; the checkpoint resumes in a single process."""
    args = ["--steps", "4", "--seq-len", "32", "--batch-size", "4", "--eval-every", "2",
            "--eval-windows", "6", "--no-progress", "--no-plot", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(["train", "--out", str(one), *args]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "nlcore.cli", "train", "--out", str(two), "--dist", kind, *args]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = records(one), records(two)
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert math.isclose(x["loss"], y["loss"], rel_tol=1e-4), (a, b)
    for x, y in zip(records(one, "eval"), records(two, "eval")):
        assert math.isclose(x["val_bpb"], y["val_bpb"], rel_tol=1e-4)
    wa, wb = weights(one / "checkpoint-4"), weights(two / "checkpoint-4")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-5), k
    state = json.loads((two / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["dist"] == kind
    assert cli.main(["train", "--out", str(two), "--resume", *args[:1], "5", *args[2:]]) == 0
    assert [x["step"] for x in records(two)] == [1, 2, 3, 4, 5]


def test_cli_model_transformer(tmp_path, capsys):
    """`nlcore train --model transformer`: the run folder holds a Transformer, which eval and
    generate load from it; --resume with the other model is refused."""
    from nlcore.models import TransformerForCausalLM
    from nlcore.train.evaluate import load_model
    out = tmp_path / "t"
    assert train(out, "--model", "transformer", steps=3) == 0
    start = records(out, "start")[0]
    assert start["model_config"]["vocab_size"] == 256
    assert isinstance(load_model(str(out), torch.device("cpu")).model, TransformerForCausalLM)
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "ab",
                     "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert train(out, "--model", "hope", "--resume", steps=4) != 0
    assert "transformer" in capsys.readouterr().err
