"""The Transformer baseline (nlcore.models.transformer): presets the size of Hope's (counted on
the meta device), causality, the loss, KV-cache decoding = full forward, generate, saved
folders that tell Hope and Transformer apart, and training / resuming / eval / generate
through nlcore.train with model="transformer". A few seconds on two cores."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from nlcore import models
from nlcore.models import (HopeConfig, HopeForCausalLM, TransformerCache, TransformerConfig,
                           TransformerForCausalLM)
from nlcore.optim import m3_param_groups
from nlcore.train import TrainError
from nlcore.train.data import WindowSampler
from nlcore.train.evaluate import load_model, run_eval, run_generate
from nlcore.train.trainer import TrainArgs, train

from conftest import rel_err

PRESETS = ["tiny", "small", "125m", "350m", "760m"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is as fast, and it keeps the matmuls from stalling
    (100x) when other processes load the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def model(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return TransformerForCausalLM(TransformerConfig.from_preset("tiny", **kw)).to(dtype)


def ids(B=2, T=37, seed=1, vocab=256):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ sizes


@pytest.mark.parametrize("vocab", [None, 256], ids=["preset-vocab", "bytes"])
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_sizes_match_hope(preset, vocab):
    """Same vocab / d_model / n_layers / heads as Hope's preset, and the parameter count within
    5% (as presets and with the byte vocabulary `nlcore train` uses), counted on the meta
    device: nothing of the 760m models is allocated."""
    kw = {} if vocab is None else {"vocab_size": vocab}
    h, t = HopeConfig.from_preset(preset, **kw), TransformerConfig.from_preset(preset, **kw)
    assert (t.vocab_size, t.d_model, t.n_layers, t.num_heads, t.head_dim,
            t.tie_embeddings) == (h.vocab_size, h.d_model, h.n_layers, h.num_heads,
                                  h.head_dim, h.tie_embeddings)
    assert t.mlp_hidden % 8 == 0
    n_hope = HopeForCausalLM.count_parameters(preset, **kw)
    n_tf = models.count_parameters("transformer", preset, **kw)
    assert n_hope == models.count_parameters("hope", h)
    assert abs(n_tf - n_hope) / n_hope < 0.05, (preset, n_hope, n_tf)
    if preset == "tiny":   # the meta count is the real one
        assert n_tf == sum(p.numel() for p in TransformerForCausalLM(t).parameters())
        assert n_hope == sum(p.numel() for p in HopeForCausalLM(h).parameters())


# ------------------------------------------------------------------ the model


def test_shapes_causality_and_gradients():
    m = model()
    x = ids()
    out = m(x)
    assert out.logits.shape == (2, 37, 256) and out.cache is None and out.loss is None
    y = x.clone()
    y[:, 20] = (y[:, 20] + 1) % 256                 # a later byte changes ...
    out2 = m(y)
    assert torch.equal(out.logits[:, :20], out2.logits[:, :20])   # ... no earlier logit
    assert rel_err(out2.logits[:, 20:], out.logits[:, 20:]) > 1e-6
    m32 = model(dtype=torch.float32)
    loss = m32(x, labels=x).loss
    assert abs(loss.item() - math.log(256)) < 0.5   # near uniform at init
    loss.backward()
    for n, p in m32.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def test_loss_is_the_shifted_cross_entropy():
    m = model()
    x = ids()
    labels = x.clone()
    labels[0, 5:9] = -100
    out = m(x, labels=labels)
    logp = torch.log_softmax(out.logits[:, :-1].double(), -1)
    tgt = labels[:, 1:]
    keep = tgt != -100
    manual = -logp.gather(-1, tgt.clamp_min(0)[..., None])[..., 0][keep].mean()
    assert abs(out.loss.item() - manual.item()) < 1e-6 * manual.item()   # loss in float32


def test_cached_decoding_equals_full_forward():
    """Prefill, then one token at a time; prefill in uneven pieces (a chunk after the cache
    sees it through an explicit mask); decode_step; reorder; detach; copy_."""
    m = model()
    x = ids(B=3, T=30)
    full = m(x).logits
    out = m(x[:, :5], use_cache=True)
    logits, cache = [out.logits], out.cache
    for t in range(5, 30):
        out = m(x[:, t:t + 1], cache=cache, use_cache=True)
        logits.append(out.logits)
        cache = out.cache
    assert cache.seen == 30 and cache.layers[0].k.shape == (3, 4, 30, 16)
    assert rel_err(torch.cat(logits, 1), full) < 1e-12
    cache, parts = None, []
    for a, b in ((0, 3), (3, 17), (17, 30)):
        out = m(x[:, a:b], cache=cache, use_cache=True)
        parts.append(out.logits)
        cache = out.cache
    assert rel_err(torch.cat(parts, 1), full) < 1e-12
    cache = m(x[:, :4], use_cache=True).cache
    steps = [m.decode_step(x[:, t:t + 1], cache) for t in range(4, 30)]
    assert cache.seen == 30 and rel_err(torch.cat(steps, 1), full[:, 4:]) < 1e-12
    cache = m(x[:, :17], use_cache=True).cache
    perm = torch.tensor([2, 0, 2])
    assert rel_err(m(x[perm, 17:], cache=cache.reorder(perm)).logits, full[perm, 17:]) < 1e-12
    det = cache.detach()
    assert isinstance(det, TransformerCache) and det.seen == 17
    blank = TransformerCache([type(lc)(torch.zeros_like(lc.k), torch.zeros_like(lc.v))
                              for lc in cache.layers])
    blank.copy_(cache)
    assert blank.seen == 17 and all(torch.equal(a, b) for a, b in
                                    zip(blank.tensors(), cache.tensors()))
    with pytest.raises(ValueError, match="different structure or length"):
        blank.copy_(m(x[:, :5], use_cache=True).cache)
    with pytest.raises(ValueError, match="cache has 2 layers, the model 3"):
        model(n_layers=3)(x[:, :1], cache=cache)


def test_generate_equals_full_recompute():
    m = model()
    x = ids(T=6)
    g = m.generate(x, 12, temperature=0)
    seq = x                                          # greedy without any cache
    for _ in range(12):
        seq = torch.cat([seq, m(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert g.shape == (2, 18) and torch.equal(g, seq)
    s1 = m.generate(x, 8, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(0))
    s2 = m.generate(x, 8, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and s1.shape == (2, 14) and int(s1.max()) < 256
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(x, -1)
    with pytest.raises(ValueError, match="top_k"):
        m.generate(x, 2, top_k=0)


def test_m3_groups_and_autocast():
    m = model(dtype=torch.float32)
    groups = m3_param_groups(m)
    m3_ids = {id(p) for g in groups if g["use_m3"] for p in g["params"]}
    blk = m.model.blocks[0]
    assert id(m.model.embed.weight) not in m3_ids and id(blk.attn_norm.weight) not in m3_ids
    for lin in (blk.attn.q_proj, blk.attn.o_proj, blk.mlp.gate_proj, blk.mlp.down_proj):
        assert id(lin.weight) in m3_ids
    x = ids(T=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, labels=x)
    assert torch.isfinite(out.loss)
    out.loss.backward()


# ------------------------------------------------------------------ saved folders


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_save_and_load_tell_the_models_apart(tmp_path, monkeypatch, fmt):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    else:
        import sys
        monkeypatch.setitem(sys.modules, "safetensors", None)
        monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    m = model(dtype=torch.float32, tie_embeddings=False)
    d = m.save_pretrained(tmp_path / "tf")
    assert json.loads((d / "config.json").read_text())["model_type"] == "transformer"
    x = ids()
    for m2 in (TransformerForCausalLM.from_pretrained(d), models.from_pretrained(d)):
        assert type(m2) is TransformerForCausalLM and m2.config == m.config
        assert torch.equal(m(x).logits, m2(x).logits)
    tied = model(dtype=torch.float32)
    m2 = models.from_pretrained(tied.save_pretrained(tmp_path / "tied"))
    assert m2.lm_head.weight is m2.model.embed.weight
    torch.manual_seed(0)
    hope = HopeForCausalLM(HopeConfig.from_preset("tiny"))
    h = hope.save_pretrained(tmp_path / "hope")
    assert json.loads((h / "config.json").read_text())["model_type"] == "hope"
    h2 = models.from_pretrained(h)
    assert type(h2) is HopeForCausalLM and torch.equal(h2(x).logits, hope(x).logits)
    with pytest.raises(ValueError, match="not a Hope config"):
        HopeForCausalLM.from_pretrained(d)
    with pytest.raises(ValueError, match="not a Transformer config"):
        TransformerForCausalLM.from_pretrained(h)
    raw = json.loads((h / "config.json").read_text())     # a folder without model_type: Hope
    del raw["model_type"]
    (h / "config.json").write_text(json.dumps(raw))
    assert type(models.from_pretrained(h)) is HopeForCausalLM
    (h / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="unknown model_type 'llama'"):
        models.from_pretrained(h)
    with pytest.raises(ValueError, match="checkpoint does not match the config"):
        TransformerForCausalLM.from_pretrained(d, mlp_hidden=64)


# ------------------------------------------------------------------ nlcore.train


def _args(out, **kw):
    base = dict(out=str(out), model="transformer", preset="tiny", steps=8, seq_len=32,
                batch_size=8, lr=0.02, adamw_lr=3e-3, eval_every=4, save_every=4,
                eval_windows=8, eval_batch_size=8, progress=False, plot=False)
    return TrainArgs(**{**base, **kw})


def _records(run, event):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
            if r["event"] == event]


def test_train_resume_eval_generate(tmp_path, monkeypatch, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(_args(whole))
    out = capsys.readouterr().out
    assert "model   Transformer tiny" in out
    losses = [r["loss"] for r in _records(whole, "train")]
    evals = [r["val_bpb"] for r in _records(whole, "eval")]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5, losses    # it learns
    assert evals[-1] < evals[0], evals
    ck = whole / "checkpoint-8"
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["run"]["model"] == "transformer"
    assert json.loads((ck / "config.json").read_text())["model_type"] == "transformer"

    real_next = WindowSampler.next

    def interrupt(self):
        if self.drawn == 6:                   # during step 7: the last checkpoint is 4
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(WindowSampler, "next", interrupt)
    with pytest.raises(TrainError, match="interrupted at step 6"):
        train(_args(cut))
    monkeypatch.setattr(WindowSampler, "next", real_next)
    with pytest.raises(TrainError, match=r"--model 'hope' \(the checkpoint has 'transformer'\)"):
        train(_args(cut, model="hope", resume=True))
    train(_args(cut, model=None, preset=None, resume=True))   # the checkpoint's settings
    assert "resuming" in capsys.readouterr().out
    assert [r["loss"] for r in _records(cut, "train")] == losses      # bit-identical
    a, b = models.from_pretrained(ck), models.from_pretrained(cut / "checkpoint-8")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values()))

    loaded = load_model(str(whole), torch.device("cpu"))
    assert type(loaded.model) is TransformerForCausalLM and loaded.path == ck
    rec = run_eval(str(whole), max_windows=4, json_path=str(tmp_path / "e.json"))
    assert rec["windows"] == 4 and 0 < rec["bits_per_byte"] < 8.5
    for window in (0, 16):
        text = run_generate(str(whole), "def ", max_new_tokens=10, temperature=0,
                            window=window)
        assert text.startswith("def ") and len(text.encode("utf-8", "replace")) >= 10


def test_bad_input():
    with pytest.raises(ValueError, match="unknown preset 'gigantic'"):
        TransformerConfig.from_preset("gigantic")
    with pytest.raises(ValueError, match="unknown fields"):
        TransformerConfig.from_dict({"d_model": 64, "colour": 1})
    for kw, match in ((dict(num_heads=3), "num_heads .* must divide d_model"),
                      (dict(d_model=20, num_heads=4), "head_dim must be even"),
                      (dict(mlp_hidden=0), "mlp_hidden must be an int >= 1"),
                      (dict(norm_eps=0.0), "norm_eps must be a finite number > 0"),
                      (dict(n_layers=1.5), "n_layers must be an int >= 1")):
        with pytest.raises(ValueError, match=match):
            TransformerConfig.from_preset("tiny", **kw)
    cfg = TransformerConfig.from_preset("small")
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    assert TransformerConfig(d_model=96, num_heads=3).mlp_hidden == 256
    m = model(dtype=torch.float32)
    with pytest.raises(ValueError, match="token ids must be in"):
        m(torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match="input_ids must be an int tensor"):
        m(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="labels must have"):
        m(ids(), labels=ids(T=5))
    with pytest.raises(TypeError, match="config must be a TransformerConfig"):
        TransformerForCausalLM(HopeConfig())
    with pytest.raises(ValueError, match="model type must be one of"):
        models.count_parameters("rnn", "tiny")
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerForCausalLM.count_parameters("gigantic")


def test_bad_train_settings(tmp_path):
    with pytest.raises(TrainError, match=r"--model must be one of \('hope', 'transformer'\), "
                                         r"got 'rnn'"):
        train(_args(tmp_path / "a", model="rnn"))
    with pytest.raises(TrainError, match="--set main_memory: not a TransformerConfig field"):
        train(_args(tmp_path / "b", overrides={"main_memory": "mlp"}))
    with pytest.raises(TrainError, match="--set mlp_hidden: not a HopeConfig field"):
        train(_args(tmp_path / "c", model=None, overrides={"mlp_hidden": 64}))
    with pytest.raises(TrainError, match="TransformerConfig.from_preset: unknown preset"):
        train(_args(tmp_path / "d", preset="gigantic"))
