"""nlcore.evals: the task generators (deterministic, answers where they claim), the scoring
(a perfect predictor scores 100%, a random guess chance), the continual-learning summary, a
smoke run of every task (Hope and a small stand-in model, a few steps, tiny sizes) writing
JSON and a heat map, `nlcore eval --task ...`, and bad options giving an error that names
the option.

The Transformer baseline is not needed here: where two models are compared, the second is
the stand-in `Bigram` below, registered under the name "bigram"."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlcore import cli
from nlcore.evals import (EvalArgs, EvalError, TaskBatch, answer_correct, continual_summary,
                          continual_tasks, mqar_batch, mqar_sample, niah_batch, niah_sample,
                          register_model, rng, run_task, score_logits, score_model)
from nlcore.evals import tasks as T
from nlcore.evals.runner import DEFAULT_STEPS

FILLER = bytes(range(32, 127)) * 20        # printable, no "The code for"


class Bigram(nn.Module):
    """A stand-in model with Hope's interface: logits from the current byte only."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(256, 256)

    def forward(self, input_ids, labels=None):
        logits = self.table(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return SimpleNamespace(logits=logits, loss=loss)


@pytest.fixture(autouse=True)
def bigram():
    register_model("bigram", lambda preset: Bigram())
    yield
    register_model("bigram", None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP's two threads wait on each
    other when another process takes a core, making these tiny steps many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ generators


def test_niah_is_deterministic_under_a_seed():
    a = niah_batch(4, 80, rng("t", 1), FILLER)
    b = niah_batch(4, 80, rng("t", 1), FILLER)
    c = niah_batch(4, 80, rng("t", 2), FILLER)
    assert torch.equal(a.input_ids, b.input_ids) and a.meta == b.meta
    assert torch.equal(a.answer_id, b.answer_id)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.input_ids.dtype == torch.long and int(a.input_ids.max()) < 256


@pytest.mark.parametrize("length", [57, 80, 200])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_niah_needle_at_the_claimed_depth(length, depth):
    s = niah_sample(length, depth, rng("d", length, depth), FILLER)
    m = s.meta
    assert len(s.data) == length
    needle = T.NIAH_NEEDLE.format(key=m["key"], value=m["value"]).encode()
    assert s.data[m["needle_start"]:m["needle_end"]] == needle
    assert s.data.count(needle) == 1
    n_fill = m["filler_bytes"]
    assert n_fill == length - T.niah_overhead()
    assert m["needle_start"] == round(depth * n_fill)
    if depth == 0:
        assert s.data.startswith(needle)
    # the filler around the needle is the corpus slice, the query and answer end the text
    fill = FILLER[m["filler_offset"]:m["filler_offset"] + n_fill]
    assert s.data[:m["needle_start"]] + s.data[m["needle_end"]:m["needle_end"] + n_fill
                                               - m["needle_start"]] == fill
    query = T.NIAH_QUERY.format(key=m["key"]).encode()
    assert s.data.endswith(query + m["value"].encode())
    if depth == 1:
        assert s.data[m["needle_end"]:] == query + m["value"].encode()
    (a, b), = s.answers
    assert s.data[a:b] == m["value"].encode() and b == length
    assert m["value"].isdigit() and m["key"].isupper()
    batch = TaskBatch.from_samples([s])
    assert (batch.answer_id[0] >= 0).nonzero().flatten().tolist() == list(range(a, b))


def test_mqar_is_deterministic_and_answers_are_the_queried_values():
    a = mqar_batch(3, 64, 4, rng("m", 0))
    assert torch.equal(a.input_ids, mqar_batch(3, 64, 4, rng("m", 0)).input_ids)
    assert not torch.equal(a.input_ids, mqar_batch(3, 64, 4, rng("m", 1)).input_ids)
    for pairs, length in [(1, 13), (4, 64), (8, 97), (8, 300)]:
        s = mqar_sample(length, pairs, rng("m", pairs, length))
        m = s.meta
        assert len(s.data) == length and len(set(m["keys"])) == pairs
        text = s.data.decode()
        context, _, queries = text.partition(T.MQAR_SEPARATOR)
        assert context == "".join(f"{k}:{v} " for k, v in zip(m["keys"], m["values"]))
        assert sorted(m["query_keys"]) == sorted(m["keys"])
        truth = dict(zip(m["keys"], m["values"]))
        assert len(s.answers) == pairs
        for (a, b), key in zip(s.answers, m["query_keys"]):
            assert text[a - 3:a] == f"{key}:" and text[a:b] == truth[key]
            assert a > len(context)
        assert set(queries) <= set("abcdefghijklmnopqrstuvwxyz0123456789:. ")
    assert T.mqar_min_length(8) == 97
    with pytest.raises(ValueError, match="length 96 is too short for 8 pairs"):
        mqar_sample(96, 8, rng(0))


def test_continual_streams_are_disjoint_and_deterministic():
    a = continual_tasks(3, "topics")
    b = continual_tasks(3, "topics", seed=5)
    assert [t.name for t in a] == [t.name for t in b]
    assert all(torch.equal(x.train, y.train) for x, y in zip(a, b))
    assert len({t.name for t in a}) == 3
    for t in a:
        assert len(t.val) > 0 and len(t.test) > 0
        assert abs(len(t.val) - len(t.test)) <= 1
    texts = [bytes(t.train[:256].numpy()) for t in a]
    assert len(set(texts)) == 3
    p1 = continual_tasks(2, "permuted", seed=1)
    p2 = continual_tasks(2, "permuted", seed=1)
    p3 = continual_tasks(2, "permuted", seed=2)
    assert torch.equal(p1[1].train, p2[1].train) and not torch.equal(p1[1].train, p3[1].train)
    assert torch.equal(p1[0].train, p3[0].train)          # task 0 is never permuted
    # the permutation maps letters to letters and leaves every other byte alone
    x, y = bytes(p1[1].train[:2000].numpy()), bytes(p3[1].train[:2000].numpy())
    assert [c for c in x if not chr(c).isalpha()] == [c for c in y if not chr(c).isalpha()]


# ------------------------------------------------------------------ scoring


def _perfect_logits(batch: TaskBatch) -> torch.Tensor:
    """Logits that put the next byte first everywhere (the last position: anything)."""
    ids = batch.input_ids
    nxt = torch.cat([ids[:, 1:], ids[:, :1]], 1)
    return F.one_hot(nxt, 256).float() * 30


def test_a_perfect_predictor_scores_100_percent():
    for batch in (mqar_batch(8, 64, 4, rng(1)), niah_batch(8, 90, rng(2), FILLER)):
        sc = score_logits(_perfect_logits(batch), batch)
        assert sc.accuracy == 1.0 and sc.byte_accuracy == 1.0
        assert sc.answers == int((batch.answer_id.max(1).values + 1).sum())
        assert sc.answer_nll < 1e-3


def test_one_wrong_byte_makes_the_answer_wrong():
    batch = mqar_batch(2, 64, 4, rng(3))                   # 8 answers of 2 bytes
    logits = _perfect_logits(batch)
    a, b = [i for i, v in enumerate(batch.answer_id[1].tolist()) if v == 2]
    logits[1, b - 1] = 0
    logits[1, b - 1, 0] = 10                              # the second byte of answer 2, row 1
    correct = answer_correct(logits, batch.input_ids, batch.answer_id)
    assert correct.tolist() == [True] * 4 + [True, True, False, True]
    sc = score_logits(logits, batch)
    assert sc.correct == 7 and sc.answers == 8 and sc.byte_hits == 15 and sc.bytes == 16


def test_a_random_guess_scores_chance():
    """Uniform random digits (the answers' alphabet) are right 1 time in 10 per byte; with
    one-digit answers that is the answer accuracy too. 4000 answers: 3 sigma is 1.4%."""
    g = torch.Generator().manual_seed(0)
    r = rng("chance")
    batch = TaskBatch.from_samples([mqar_sample(96, 8, r, key_len=2, value_len=1)
                                    for _ in range(500)])
    N, L = batch.input_ids.shape
    logits = torch.full((N, L, 256), -1e9)
    digits = torch.tensor([ord(c) for c in "0123456789"])
    guess = digits[torch.randint(0, 10, (N, L), generator=g)]
    logits.scatter_(2, guess[..., None], 1.0)
    sc = score_logits(logits, batch)
    assert sc.answers == 4000
    assert abs(sc.accuracy - 0.1) < 0.015 and abs(sc.byte_accuracy - 0.1) < 0.015
    # uniform logits over the whole vocabulary: argmax is byte 0, never an answer digit
    assert score_logits(torch.zeros(N, L, 256), batch).accuracy == 0.0
    # the answer cross-entropy of uniform logits is ln 256
    assert math.isclose(score_logits(torch.zeros(N, L, 256), batch).answer_nll,
                        math.log(256), rel_tol=1e-6)


def test_score_model_matches_score_logits_and_restores_the_mode():
    batch = mqar_batch(5, 40, 2, rng(4))
    model = Bigram().train()
    with torch.no_grad():
        direct = score_logits(model(batch.input_ids).logits, batch)
    chunked = score_model(model, batch, batch_size=2)
    assert (chunked.correct, chunked.answers, chunked.byte_hits) == \
        (direct.correct, direct.answers, direct.byte_hits)
    assert math.isclose(chunked.nll, direct.nll, rel_tol=1e-5)
    assert model.training


def test_labels_keep_only_the_answers():
    batch = mqar_batch(2, 40, 2, rng(5))
    lab = batch.labels("answer")
    assert torch.equal(lab >= 0, batch.answer_id >= 0)
    assert torch.equal(lab[lab >= 0], batch.input_ids[lab >= 0])
    assert torch.equal(batch.labels("all"), batch.input_ids)


def test_continual_summary_by_hand():
    R = [[2.0, 5.0, 5.0],
         [3.0, 2.5, 5.0],
         [3.5, 2.0, 3.0]]
    s = continual_summary(R)
    assert s["final_average"] == pytest.approx((3.5 + 2.0 + 3.0) / 3)
    assert s["seen_average"] == pytest.approx([2.0, 2.75, (3.5 + 2.0 + 3.0) / 3])
    assert s["plasticity"] == pytest.approx((2.0 + 2.5 + 3.0) / 3)
    # task 1: best 2.0 before the last stage, 3.5 at the end; task 2: improved (negative)
    assert s["forgetting"] == pytest.approx([1.5, -0.5])
    assert s["average_forgetting"] == pytest.approx(0.5)
    acc = continual_summary([[0.9, 0.1], [0.6, 0.8]], lower_is_better=False)
    assert acc["forgetting"] == pytest.approx([0.3])
    assert continual_summary([[1.0]])["average_forgetting"] is None
    with pytest.raises(ValueError, match="K x K"):
        continual_summary([[1.0, 2.0]])


# ------------------------------------------------------------------ runners


def _plot(out, task):
    files = [p for p in (out / f"{task}.png", out / f"{task}.svg") if p.is_file()]
    assert len(files) == 1
    if files[0].suffix == ".svg":
        import xml.etree.ElementTree as ET
        assert ET.parse(files[0]).getroot().tag.endswith("svg")
    return files[0]


def test_niah_smoke_writes_json_and_heatmap(tmp_path, capsys):
    rec = run_task(EvalArgs(task="niah", models="hope,bigram", steps=2, lrs=[1e-3, 3e-3],
                            lengths=[60, 72], depths=[0.0, 1.0], eval_examples=2,
                            batch_size=2, out=str(tmp_path), progress=False))
    out = capsys.readouterr().out
    assert "needle depth" in out and "hope" in out and "bigram" in out
    saved = json.loads((tmp_path / "niah.json").read_text())
    assert saved["task"] == "niah" and set(saved["models"]) == {"hope", "bigram"}
    for m in ("hope", "bigram"):
        r = saved["models"][m]
        assert [x["lr"] for x in r["lr_sweep"]] == [1e-3, 3e-3]
        assert r["best_lr"] in (1e-3, 3e-3)
        assert len(r["test"]["cells"]) == 4 and r["test"]["answers"] == 8
        assert 0 <= r["test"]["accuracy"] <= 1
    assert saved["chance"] == pytest.approx(0.01)
    assert _plot(tmp_path, "niah").stat().st_size > 500
    assert rec["models"]["hope"]["params"] > 0


def test_mqar_smoke_skips_cells_that_do_not_fit(tmp_path):
    run_task(EvalArgs(task="mqar", models=["bigram"], steps=3, lrs=[1e-2], lengths=[32, 64],
                      pairs=[2, 4], eval_examples=3, batch_size=4, out=str(tmp_path),
                      progress=False))
    saved = json.loads((tmp_path / "mqar.json").read_text())
    cells = saved["models"]["bigram"]["test"]["cells"]
    assert [(c["pairs"], c["length"]) for c in cells] == [(2, 32), (2, 64), (4, 64)]
    assert saved["settings"]["cells_skipped"] == [[4, 32]]
    assert _plot(tmp_path, "mqar").is_file()


def test_continual_smoke(tmp_path, capsys):
    rec = run_task(EvalArgs(task="continual", models="hope,bigram", steps=2, lrs=[1e-3],
                            n_tasks=2, seq_len=16, max_windows=2, batch_size=2,
                            out=str(tmp_path), progress=False))
    assert "average forgetting" in capsys.readouterr().out
    saved = json.loads((tmp_path / "continual.json").read_text())
    for m in ("hope", "bigram"):
        r = saved["models"][m]
        R = r["test_matrix_bpb"]
        assert len(R) == 2 and all(len(row) == 2 for row in R)
        assert all(0 < v < 20 for row in R for v in row)
        assert len(r["initial_test_bpb"]) == 2
        assert r["summary"]["final_average"] == pytest.approx(sum(R[1]) / 2)
    assert len(saved["tasks"]) == 2
    assert _plot(tmp_path, "continual").is_file()
    assert rec["json"] == str(tmp_path / "continual.json")


def test_steps_zero_scores_the_untrained_model(tmp_path):
    rec = run_task(EvalArgs(task="mqar", models="bigram", steps=0, lengths=[40], pairs=[2],
                            eval_examples=2, out=str(tmp_path), progress=False, plot=False))
    r = rec["models"]["bigram"]
    assert r["best_lr"] is None and r["lr_sweep"][0]["steps"] == 0
    assert not list(tmp_path.glob("mqar.*g"))               # --no-plot


def test_a_saved_checkpoint_is_scored_as_loaded(tmp_path):
    from nlcore.evals.training import build_model
    model = build_model("hope", "tiny", 0, torch.device("cpu"))
    model.save_pretrained(tmp_path / "saved")
    rec = run_task(EvalArgs(task="mqar", checkpoint=str(tmp_path / "saved"), lengths=[30],
                            pairs=[2], eval_examples=2, out=str(tmp_path / "out"),
                            progress=False, plot=False))
    assert list(rec["models"]) == ["hope"] and rec["settings"]["steps"] == 0
    assert rec["models"]["hope"]["source"].startswith("checkpoint")
    import nlcore.models as models
    if hasattr(models, "TransformerForCausalLM"):      # labelled by its config's model_type
        build_model("transformer", "tiny", 0, torch.device("cpu")).save_pretrained(
            tmp_path / "tf")
        rec = run_task(EvalArgs(task="mqar", checkpoint=str(tmp_path / "tf"), lengths=[30],
                                pairs=[2], eval_examples=2, out=str(tmp_path / "out"),
                                progress=False, plot=False))
        assert list(rec["models"]) == ["transformer"]


def test_cli_eval_task_mqar(tmp_path, capsys):
    rc = cli.main(["eval", "--task", "mqar", "--models", "hope,bigram", "--steps", "2",
                   "--lrs", "1e-3", "--lengths", "30", "--pairs", "2", "--eval-examples", "2",
                   "--batch-size", "2", "--optimizer", "m3", "--out", str(tmp_path),
                   "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "test accuracy" in out and "json:" in out
    saved = json.loads((tmp_path / "mqar.json").read_text())
    assert saved["settings"]["lengths"] == [30] and saved["settings"]["steps"] == 2
    assert set(saved["models"]) == {"hope", "bigram"}


def test_default_models_are_hope_and_transformer(tmp_path, monkeypatch):
    """With the Transformer in nlcore.models both are compared by default; without it the
    error names --models."""
    import nlcore.models as models
    kw = dict(task="mqar", steps=1, lrs=[1e-3], lengths=[30], pairs=[2], eval_examples=2,
              batch_size=2, out=str(tmp_path), progress=False, plot=False)
    if hasattr(models, "TransformerForCausalLM"):
        rec = run_task(EvalArgs(**kw))
        assert list(rec["models"]) == ["hope", "transformer"]
        p = rec["models"]
        assert abs(p["transformer"]["params"] / p["hope"]["params"] - 1) < 0.1   # same size
    monkeypatch.delattr(models, "TransformerForCausalLM", raising=False)
    with pytest.raises(EvalError, match="--models transformer: this nlcore has no"):
        run_task(EvalArgs(**kw))


class Diverging(Bigram):
    def forward(self, input_ids, labels=None):
        out = super().forward(input_ids, labels)
        if labels is not None:
            out.loss = out.loss * float("nan")
        return out


def test_a_diverging_model_is_reported_not_crashed(tmp_path, capsys):
    register_model("diverging", lambda preset: Diverging())
    try:
        rec = run_task(EvalArgs(task="mqar", models="diverging,bigram", steps=3,
                                lrs=[1e-3, 3e-3], lengths=[30], pairs=[2], eval_examples=2,
                                out=str(tmp_path), progress=False))
    finally:
        register_model("diverging", None)
    r = rec["models"]["diverging"]
    assert [x["diverged"] for x in r["lr_sweep"]] == [True, True]
    assert r["lr_sweep"][0]["steps"] == 1
    assert r["best_lr"] is None and r["test"] is None
    assert rec["models"]["bigram"]["test"] is not None
    assert "diverged at step 1" in capsys.readouterr().out
    def no_nan(c):
        raise AssertionError(f"{c} in the JSON")
    json.loads((tmp_path / "mqar.json").read_text(), parse_constant=no_nan)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("argv, needle", [
    (["--task", "sudoku"], "invalid choice: 'sudoku'"),
    (["--task", "niah", "--depths", "0,1.5"], "--depths"),
    (["--task", "niah", "--depths", "half"], "--depths"),
    (["--task", "niah", "--lengths", "20"], "--lengths"),
    (["--task", "mqar", "--lengths", "10", "--pairs", "2"], "--lengths"),
    (["--task", "mqar", "--lengths", "0"], "--lengths"),
    (["--task", "mqar", "--pairs", "0"], "--pairs"),
    (["--task", "mqar", "--models", "hope,gpt9"], "--models"),
    (["--task", "mqar", "--lrs", "0"], "--lrs"),
    (["--task", "mqar", "--steps", "-1"], "--steps"),
    (["--task", "continual", "--steps", "0"], "--steps"),
    (["--task", "continual", "--n-tasks", "5000"], "--n-tasks"),
    (["--task", "mqar", "--preset", "huge"], "--preset huge"),
    (["--task", "bpb"], "--checkpoint"),
    ([], "--checkpoint"),
])
def test_bad_options_name_the_option(argv, needle, tmp_path, capsys):
    rc = cli.main(["eval", *argv, "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_api_errors_are_eval_errors():
    with pytest.raises(EvalError, match="--task"):
        run_task(EvalArgs(task="bpb"))
    with pytest.raises(EvalError, match="--models and --checkpoint"):
        run_task(EvalArgs(task="mqar", models="hope", checkpoint="x"))
    with pytest.raises(ValueError, match="depth must be a number in"):
        niah_sample(80, -0.1, rng(0), FILLER)
    with pytest.raises(ValueError, match="length 40 is too short"):
        niah_sample(40, 0.5, rng(0), FILLER)
    assert DEFAULT_STEPS["continual"] >= 1
