"""`nlcore.optim.M3`: Multi-scale Momentum Muon (DESIGN §4).

One optimizer for a whole model: matrix parameters take the M3 step (fast momentum every
step and slow momentum every `slow_every` steps, both orthogonalized by Newton–Schulz),
the rest (biases, norms, embeddings, output head) take AdamW inside the same optimizer.

Structure of a step, chosen so that a fused CUDA kernel can replace the elementwise parts
without touching the rest:

1. `_m3_prepare` (per M3 group): state init, step counters, the elementwise work before NS
   (momentum updates, slow-sum accumulation) and the list of matrices to orthogonalize.
2. `_orthogonalize` (all groups together): the matrices are bucketed by (matrix shape,
   dtype, device, NS settings) and each bucket is stacked into one `[n, m, k]` batch and
   handed to `nlcore.ops.newton_schulz` once. Fast and slow momenta of the same shape share
   a bucket. Sharded (DTensor) matrices are gathered first (see "Distributed").
3. `_m3_apply` (per M3 group): decoupled weight decay and the parameter update, then the
   new slow update O2 is stored.

`foreach=True/None` does the elementwise parts with `torch._foreach_*` ops, `foreach=False`
with a per-tensor loop (identical results). `fused=True` (muon variant) does them with the two
multi-tensor ops `nlcore::m3_muon_pre_` / `nlcore::m3_muon_post_` (one CUDA kernel launch per
chunk of parameters; ATen on CPU); the paper variant has no fused form (NotImplementedError).

Distributed:
    * DDP: nothing special; parameters and gradients are replicated and every rank
      computes the same step.
    * FSDP2 (`fully_shard`, DTensor parameters): NS is not shard-local. Each sharded
      matrix is gathered whole (all-gather, `DTensor.full_tensor()`), matrices are assigned
      round-robin to the ranks of the (1-D) mesh, each rank orthogonalizes its own subset
      (batched by shape as above), the owner broadcasts each result, and every rank keeps
      its shard of it. On a mesh of more than one dimension every rank orthogonalizes every
      matrix (the same numbers, no broadcast). All elementwise work runs on the local
      shards. State tensors are DTensors like the parameters, so the state keys are the
      same on every rank. The result equals the single-process run.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.optim.optimizer import Optimizer

from .._coefficients import resolve
from ..ops import newton_schulz  # looked up here at call time (tests count the calls)

try:  # DTensor (FSDP2); absent or unusable builds simply never see DTensor parameters
    from torch.distributed.tensor import DTensor as _DTensor
except Exception:  # pragma: no cover
    _DTensor = None

__all__ = ["M3", "m3_param_groups"]

_VARIANTS = ("muon", "paper")
_ADJUST = (None, "original", "match_rms_adamw")
_NS_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_HEAD_NAMES = ("lm_head", "head", "output")


# ------------------------------------------------------------------ validation helpers


def _is_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, Tensor):
        return x.numel() == 1 and not x.is_complex()
    return isinstance(x, (int, float))


def _nonneg(name: str, x: Any, allow_none: bool = False) -> None:
    if x is None and allow_none:
        return
    if not _is_number(x) or not math.isfinite(float(x)) or float(x) < 0:
        raise ValueError(f"M3: {name} must be a finite number >= 0, got {x!r}")


def _betas(name: str, betas: Any, n: int) -> None:
    try:
        vals = tuple(betas)
    except TypeError:
        raise ValueError(f"M3: {name} must be a tuple of {n} numbers in [0, 1), got "
                         f"{betas!r}") from None
    if len(vals) != n:
        raise ValueError(f"M3: {name} must have {n} values, got {len(vals)}: {betas!r}")
    for i, b in enumerate(vals):
        if not _is_number(b) or not 0.0 <= float(b) < 1.0:
            raise ValueError(f"M3: {name}[{i}] must be in [0, 1), got {b!r}")


def _validate_group(g: Dict[str, Any]) -> None:
    _nonneg("lr", g["lr"])
    if g["variant"] not in _VARIANTS:
        raise ValueError(f"M3: variant must be one of {_VARIANTS}, got {g['variant']!r}")
    _betas("betas", g["betas"], 3)
    if not _is_number(g["alpha"]) or not math.isfinite(float(g["alpha"])):
        raise ValueError(f"M3: alpha must be a finite number, got {g['alpha']!r}")
    se = g["slow_every"]
    if isinstance(se, bool) or not isinstance(se, int) or se < 1:
        raise ValueError(f"M3: slow_every must be an int >= 1, got {se!r}")
    _nonneg("eps", g["eps"])
    _nonneg("weight_decay", g["weight_decay"])
    if not isinstance(g["nesterov"], bool):
        raise TypeError(f"M3: nesterov must be a bool, got {g['nesterov']!r}")
    if g["adjust_lr_fn"] not in _ADJUST:
        raise ValueError(f"M3: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', "
                         f"got {g['adjust_lr_fn']!r}")
    try:
        resolve(g["ns_coefficients"], g["ns_steps"])
    except ValueError as exc:
        raise ValueError(f"M3: ns_steps / ns_coefficients: {exc}") from None
    if g["ns_dtype"] not in _NS_DTYPES:
        raise TypeError(f"M3: ns_dtype must be torch.bfloat16, torch.float16 or torch.float32, "
                        f"got {g['ns_dtype']!r}")
    _nonneg("ns_eps", g["ns_eps"])
    _nonneg("adamw_lr", g["adamw_lr"], allow_none=True)
    _betas("adamw_betas", g["adamw_betas"], 2)
    _nonneg("adamw_eps", g["adamw_eps"])
    _nonneg("adamw_weight_decay", g["adamw_weight_decay"], allow_none=True)
    for flag in ("foreach", "fused"):
        if g[flag] is not None and not isinstance(g[flag], bool):
            raise TypeError(f"M3: {flag} must be None or a bool, got {g[flag]!r}")
    if g["foreach"] and g["fused"]:
        raise ValueError("M3: foreach and fused cannot both be True")
    if g["use_m3"] is not None and not isinstance(g["use_m3"], bool):
        raise TypeError(f"M3: use_m3 must be None or a bool, got {g['use_m3']!r}")


def _coef_key(c: Any) -> Any:
    if isinstance(c, str):
        return c
    try:
        return tuple(_coef_key(x) for x in c)
    except TypeError:
        return float(c)


def _matrix_shape(shape: torch.Size) -> Tuple[int, int]:
    """A parameter of ndim > 2 is the matrix [shape[0], prod(shape[1:])]."""
    return int(shape[0]), int(math.prod(shape[1:]))


def adjusted_lr(lr: float, adjust_lr_fn: Optional[str], shape: torch.Size) -> float:
    """torch.optim.Muon's lr adjustment on the matrix shape [A, B] of a parameter:
    "original" (default) lr·sqrt(max(1, A/B)); "match_rms_adamw" lr·0.2·sqrt(max(A, B))."""
    A, B = _matrix_shape(shape)
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, A / B))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(A, B))
    else:
        raise ValueError(f"M3: unknown adjust_lr_fn {adjust_lr_fn!r}")
    return lr * ratio


def _is_dtensor(t: Tensor) -> bool:
    return _DTensor is not None and isinstance(t, _DTensor)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if _is_dtensor(t) else t


# ------------------------------------------------------------------ the optimizer


class M3(Optimizer):
    r"""Multi-scale Momentum Muon (DESIGN §4), with AdamW for the non-matrix parameters.

    Args:
        params: an iterable of tensors (split automatically: ndim >= 2 → M3, else AdamW) or
            of dicts (param groups; a group's ``use_m3`` True/False overrides the split,
            e.g. from :func:`m3_param_groups`).
        lr: learning rate of the M3 parameters (and of AdamW where ``adamw_lr`` is None).
        variant: ``"muon"`` (practical form, default) or ``"paper"`` (Algorithm 1 exactly).
        betas: (β1 fast momentum, β2 second moment — paper variant only, β3 slow momentum).
        alpha: weight α of the slow term O2.
        slow_every: f, the slow-momentum period in steps.
        eps: the paper variant's denominator epsilon.
        weight_decay: decoupled, θ ← θ(1 − lr·wd) with the unadjusted lr, before the update.
        nesterov: Nesterov fast momentum (muon variant).
        adjust_lr_fn: muon variant: None/"original" or "match_rms_adamw", as
            torch.optim.Muon defines them (the paper variant uses lr as is).
        ns_steps, ns_coefficients, ns_dtype, ns_eps: Newton–Schulz settings
            (see :func:`nlcore.ops.newton_schulz`).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW groups' settings
            (adamw_lr / adamw_weight_decay None → the group's lr / weight_decay). The AdamW
            math is torch.optim.AdamW's (its functional implementation is called).
        foreach: elementwise parts with torch._foreach_* ops (True/None) or a per-tensor
            loop (False).
        fused: True: the muon variant's elementwise step by the multi-tensor ops
            ``nlcore::m3_muon_pre_`` / ``m3_muon_post_`` (CUDA kernel, ATen on CPU); the
            paper variant raises NotImplementedError. AdamW groups pass it to torch's AdamW.

    The muon variant, per matrix parameter θ with gradient g at step t::

        M1 ← lerp(M1, g, 1−β1);  U = lerp(g, M1, β1) if nesterov else M1;  S ← S + g
        θ ← θ(1 − lr·wd);  θ ← θ − adjust(lr)·(NS(U) + α·O2)
        if t % f == 0:  M2 ← lerp(M2, S, 1−β3);  S ← 0;  O2 ← NS(M2)

    The paper variant::

        M1 ← M1 + β1 g;  V ← V + β2 g²;  S ← S + g
        θ ← θ(1 − lr·wd);  θ ← θ − lr·(NS(M1) + α·O2) / (sqrt(V) + eps)
        if t % f == 0:  M2 ← M2 + β3 S;  S ← 0;  O2 ← NS(M2)

    O2 is zero until the first slow period ends. With α = 0 the muon variant equals
    torch.optim.Muon (up to the NS implementation's rounding).

    State per M3 parameter: ``step`` (a float32 scalar tensor), ``momentum_buffer`` (M1),
    ``exp_avg_sq`` (V, paper variant only), ``slow_momentum`` (M2), ``slow_sum`` (S),
    ``slow_update`` (O2); per AdamW parameter: ``step``, ``exp_avg``, ``exp_avg_sq``.

    Distributed: DDP needs nothing special (replicated parameters, every rank computes the
    same step). Under FSDP2 each sharded matrix is gathered whole for NS, matrices are
    orthogonalized round-robin across the ranks and broadcast back; see the module docs.
    """

    def __init__(self, params, lr: float = 0.02, variant: str = "muon",
                 betas: Tuple[float, float, float] = (0.95, 0.999, 0.95), alpha: float = 1.0,
                 slow_every: int = 8, eps: float = 1e-8, weight_decay: float = 0.0,
                 nesterov: bool = True, adjust_lr_fn: Optional[str] = None, ns_steps: int = 5,
                 ns_coefficients: Any = "muon", ns_dtype: torch.dtype = torch.bfloat16,
                 ns_eps: float = 1e-7, adamw_lr: Optional[float] = None,
                 adamw_betas: Tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 adamw_weight_decay: Optional[float] = None, foreach: Optional[bool] = None,
                 fused: Optional[bool] = None):
        defaults = dict(lr=lr, variant=variant, betas=tuple(betas) if _iterable(betas) else betas,
                        alpha=alpha, slow_every=slow_every, eps=eps, weight_decay=weight_decay,
                        nesterov=nesterov, adjust_lr_fn=adjust_lr_fn, ns_steps=ns_steps,
                        ns_coefficients=ns_coefficients, ns_dtype=ns_dtype, ns_eps=ns_eps,
                        adamw_lr=adamw_lr,
                        adamw_betas=tuple(adamw_betas) if _iterable(adamw_betas) else adamw_betas,
                        adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay,
                        foreach=foreach, fused=fused, use_m3=None)
        _validate_group(defaults)
        if isinstance(params, Tensor):
            raise TypeError("M3: params must be an iterable of tensors or dicts, got a Tensor")
        super().__init__(params, defaults)

    # -------------------------------------------------------------- groups and routing

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group; without ``use_m3`` it is split by ndim (>= 2 → M3, else AdamW)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"M3: a param group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if any(isinstance(p, tuple) for p in params):
            raise TypeError("M3: named parameters are not supported; pass tensors or dicts")
        use = param_group.get("use_m3")
        if use is None and params:
            matrices = [p for p in params if p.ndim >= 2]
            others = [p for p in params if p.ndim < 2]
            for ps, flag in ((matrices, True), (others, False)):
                if ps:
                    self.add_param_group({**param_group, "params": ps, "use_m3": flag})
            return
        super().add_param_group({**param_group, "params": params})
        group = self.param_groups[-1]
        _validate_group(group)
        for p in group["params"]:
            if p.is_complex():
                raise TypeError(f"M3: complex parameters are not supported (shape "
                                f"{tuple(p.shape)})")
            if group["use_m3"] and p.ndim < 2:
                raise ValueError(f"M3: use_m3=True needs parameters of ndim >= 2, got one of "
                                 f"shape {tuple(p.shape)}")
        if group["use_m3"] and group["fused"]:
            self._check_fused(group)

    @staticmethod
    def _check_fused(group: Dict[str, Any]) -> None:
        if group["variant"] == "paper":
            raise NotImplementedError(
                "M3: fused=True is implemented for variant='muon' only (the paper variant's "
                "elementwise step has no fused kernel); use fused=None or foreach=True")
        devices = {p.device.type for p in group["params"]}
        if not devices <= {"cpu", "cuda"}:
            raise ValueError(f"M3: fused=True needs CPU or CUDA parameters, got devices "
                             f"{sorted(devices)}")

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)

    # -------------------------------------------------------------- step

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step (closure: re-evaluates the model, returns the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = []
        jobs: List[Tuple[Tensor, Tensor, tuple]] = []   # (param, local NS input, key)
        for group in self.param_groups:
            if group["use_m3"]:
                plan = self._m3_prepare(group, jobs)
                if plan is not None:
                    plans.append(plan)
            else:
                self._adamw_step(group)
        outs = self._orthogonalize(jobs)
        for plan in plans:
            self._m3_apply(plan, outs)
        return loss

    # -------------------------------------------------------------- AdamW part

    def _adamw_step(self, group: Dict[str, Any]) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            _check_grad(p)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=_step_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        lr = group["adamw_lr"] if group["adamw_lr"] is not None else group["lr"]
        wd = (group["adamw_weight_decay"] if group["adamw_weight_decay"] is not None
              else group["weight_decay"])
        beta1, beta2 = group["adamw_betas"]
        from torch.optim.adam import adam as _adam  # torch.optim.AdamW's own math
        _adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=group["foreach"],
              fused=group["fused"], decoupled_weight_decay=True, amsgrad=False, beta1=beta1,
              beta2=beta2, lr=lr, weight_decay=wd, eps=group["adamw_eps"], maximize=False)

    # -------------------------------------------------------------- M3 part

    def _m3_init_state(self, p: Tensor, paper: bool) -> Dict[str, Any]:
        state = self.state[p]
        if len(state) == 0:
            z = lambda: torch.zeros_like(p, memory_format=torch.preserve_format)  # noqa: E731
            state["step"] = torch.tensor(0.0, dtype=_step_dtype())
            state["momentum_buffer"] = z()
            if paper:
                state["exp_avg_sq"] = z()
            state["slow_momentum"] = z()
            state["slow_sum"] = z()
            state["slow_update"] = z()
        elif paper and "exp_avg_sq" not in state:
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _m3_prepare(self, group: Dict[str, Any], jobs: list) -> Optional[Dict[str, Any]]:
        fused = bool(group["fused"])
        if fused:
            self._check_fused(group)
        paper = group["variant"] == "paper"
        ps, gs, m1, v, m2, s, o2, due = [], [], [], [], [], [], [], []
        f = group["slow_every"]
        for p in group["params"]:
            if p.grad is None:
                continue
            _check_grad(p)
            state = self._m3_init_state(p, paper)
            state["step"] += 1
            ps.append(p)
            gs.append(_local(p.grad))
            m1.append(_local(state["momentum_buffer"]))
            if paper:
                v.append(_local(state["exp_avg_sq"]))
            m2.append(_local(state["slow_momentum"]))
            s.append(_local(state["slow_sum"]))
            o2.append(_local(state["slow_update"]))
            due.append(int(state["step"].item()) % f == 0)
        if not ps:
            return None
        b1, b2, b3 = (float(b) for b in group["betas"])
        foreach = group["foreach"] is not False
        d = [i for i, x in enumerate(due) if x]
        if fused:  # muon variant (checked above): M1, S and the NS input in one op
            fast = [torch.empty_like(x) for x in m1]
            torch.ops.nlcore.m3_muon_pre_(m1, s, fast, gs, b1, bool(group["nesterov"]))
        m2d, sd = [m2[i] for i in d], [s[i] for i in d]
        if paper:
            fast = m1
            if foreach:
                torch._foreach_add_(m1, gs, alpha=b1)
                torch._foreach_addcmul_(v, gs, gs, value=b2)
                torch._foreach_add_(s, gs)
                if d:
                    torch._foreach_add_(m2d, sd, alpha=b3)
                    torch._foreach_zero_(sd)
            else:
                for i in range(len(ps)):
                    m1[i].add_(gs[i], alpha=b1)
                    v[i].addcmul_(gs[i], gs[i], value=b2)
                    s[i].add_(gs[i])
                for i in d:
                    m2[i].add_(s[i], alpha=b3)
                    s[i].zero_()
        elif fused:
            if d:
                torch._foreach_lerp_(m2d, sd, 1 - b3)
                torch._foreach_zero_(sd)
        else:
            if foreach:
                torch._foreach_lerp_(m1, gs, 1 - b1)
                fast = torch._foreach_lerp(gs, m1, b1) if group["nesterov"] else m1
                torch._foreach_add_(s, gs)
                if d:
                    torch._foreach_lerp_(m2d, sd, 1 - b3)
                    torch._foreach_zero_(sd)
            else:
                fast = []
                for i in range(len(ps)):
                    m1[i].lerp_(gs[i], 1 - b1)
                    fast.append(gs[i].lerp(m1[i], b1) if group["nesterov"] else m1[i])
                    s[i].add_(gs[i])
                for i in d:
                    m2[i].lerp_(s[i], 1 - b3)
                    s[i].zero_()
        key = (group["ns_steps"], _coef_key(group["ns_coefficients"]), group["ns_dtype"],
               float(group["ns_eps"]))
        fast_idx = []
        for p, x in zip(ps, fast):
            fast_idx.append(len(jobs))
            jobs.append((p, x, key))
        slow_idx = {}
        for i in d:
            slow_idx[i] = len(jobs)
            jobs.append((ps[i], m2[i], key))
        return dict(group=group, params=ps, v=v, o2=o2, fast_idx=fast_idx, slow_idx=slow_idx,
                    paper=paper, foreach=foreach, fused=fused)

    def _m3_apply(self, plan: Dict[str, Any], outs: List[Tensor]) -> None:
        g = plan["group"]
        ps = plan["params"]
        pl = [_local(p) for p in ps]
        upd = [outs[j] for j in plan["fast_idx"]]
        o2 = plan["o2"]
        lr, wd, alpha = float(g["lr"]), float(g["weight_decay"]), float(g["alpha"])
        foreach = plan["foreach"]
        if plan["fused"]:  # muon variant: decay and update in one op
            lrs = [adjusted_lr(lr, g["adjust_lr_fn"], p.shape) for p in ps]
            torch.ops.nlcore.m3_muon_post_(pl, upd, o2, lrs, 1 - lr * wd, alpha)
            for i, j in plan["slow_idx"].items():
                o2[i].copy_(outs[j])
            return
        if foreach:
            if wd != 0:
                torch._foreach_mul_(pl, 1 - lr * wd)
            if alpha != 0:
                torch._foreach_add_(upd, o2, alpha=alpha)
        else:
            for i in range(len(pl)):
                if wd != 0:
                    pl[i].mul_(1 - lr * wd)
                if alpha != 0:
                    upd[i].add_(o2[i], alpha=alpha)
        if plan["paper"]:
            eps = float(g["eps"])
            if foreach:
                denom = torch._foreach_sqrt(plan["v"])
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(pl, upd, denom, value=-lr)
            else:
                for i in range(len(pl)):
                    pl[i].addcdiv_(upd[i], plan["v"][i].sqrt().add_(eps), value=-lr)
        else:
            # bucket by adjusted lr (one per matrix shape) so both paths compute θ + (−a)·U
            # with the same op as torch.optim.Muon
            buckets: "OrderedDict[float, List[int]]" = OrderedDict()
            for i, p in enumerate(ps):
                buckets.setdefault(adjusted_lr(lr, g["adjust_lr_fn"], p.shape), []).append(i)
            for a, idx in buckets.items():
                if foreach:
                    torch._foreach_add_([pl[i] for i in idx], [upd[i] for i in idx], alpha=-a)
                else:
                    for i in idx:
                        pl[i].add_(upd[i], alpha=-a)
        for i, j in plan["slow_idx"].items():
            o2[i].copy_(outs[j])

    # -------------------------------------------------------------- batched NS

    def _orthogonalize(self, jobs: List[Tuple[Tensor, Tensor, tuple]]) -> List[Tensor]:
        """NS of every job's matrix, returned local-shaped (the shard for DTensor params).

        Jobs are bucketed by (matrix shape, dtype, device, NS settings); each bucket is one
        `newton_schulz` call on the stacked batch. Sharded matrices are gathered whole
        first; on a 1-D mesh each is orthogonalized by one owner rank (round-robin) and
        broadcast; otherwise by every rank.
        """
        n = len(jobs)
        if n == 0:
            return []
        full: List[Optional[Tensor]] = [None] * n
        compute = [True] * n
        owners: Dict[int, Tuple[Any, int]] = {}
        rr: Dict[int, int] = {}
        for j, (p, x, _key) in enumerate(jobs):
            if _is_dtensor(p):
                mesh = p.device_mesh
                xd = _DTensor.from_local(x, mesh, p.placements, run_check=False,
                                         shape=p.shape, stride=p.stride())
                full[j] = xd.full_tensor()
                if mesh.ndim == 1 and mesh.size() > 1:
                    k = rr.get(id(mesh), 0)
                    rr[id(mesh)] = k + 1
                    owner = k % mesh.size()
                    owners[j] = (mesh, owner)
                    compute[j] = owner == mesh.get_local_rank()
            else:
                full[j] = x
        buckets: "OrderedDict[tuple, List[int]]" = OrderedDict()
        for j in range(n):
            if not compute[j]:
                continue
            t = full[j]
            bkey = (_matrix_shape(t.shape), t.dtype, t.device) + jobs[j][2]
            buckets.setdefault(bkey, []).append(j)
        result: List[Optional[Tensor]] = [None] * n
        for bkey, idx in buckets.items():
            (m, k), _dt, _dev, steps, coefs, ns_dtype, ns_eps = bkey
            stacked = torch.stack([full[j].reshape(m, k) for j in idx])
            coefficients = coefs if isinstance(coefs, str) else _untuple(coefs)
            out = newton_schulz(stacked, steps, coefficients, ns_eps, compute_dtype=ns_dtype)
            for r, j in enumerate(idx):
                result[j] = out[r].view(full[j].shape)
        for j in range(n):
            p = jobs[j][0]
            if not _is_dtensor(p):
                continue
            if j in owners:
                mesh, owner = owners[j]
                buf = result[j] if result[j] is not None else torch.empty_like(full[j])
                buf = buf.contiguous()
                src = int(mesh.mesh.reshape(-1)[owner].item())
                torch.distributed.broadcast(buf, src=src, group=mesh.get_group())
                result[j] = buf
            result[j] = _shard_of(result[j], p)
        return result  # type: ignore[return-value]


# ------------------------------------------------------------------ helpers


def _iterable(x: Any) -> bool:
    try:
        iter(x)
        return True
    except TypeError:
        return False


def _untuple(c: Any) -> Any:
    return [list(t) for t in c] if c and isinstance(c[0], tuple) else list(c)


def _step_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _check_grad(p: Tensor) -> None:
    g = p.grad
    if g.is_sparse:
        raise ValueError(f"M3: sparse gradients are not supported (param of shape "
                         f"{tuple(p.shape)})")
    if g.is_complex():
        raise TypeError(f"M3: complex gradients are not supported (param of shape "
                        f"{tuple(p.shape)})")


def _shard_of(full: Tensor, p: Tensor) -> Tensor:
    """This rank's shard of `full` (a whole matrix laid out like DTensor p), no communication."""
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()


# ------------------------------------------------------------------ routing helper


def m3_param_groups(model: nn.Module, **group_overrides) -> List[Dict[str, Any]]:
    """Param groups for :class:`M3`: ``[{"params": matrices, "use_m3": True, ...},
    {"params": others, "use_m3": False, ...}]`` (empty groups left out).

    AdamW gets every parameter of ndim < 2, the weights of nn.Embedding modules, the
    output head (``model.get_output_embeddings()`` if the model has it and it returns a
    module, else a top-level child named ``lm_head``, ``head`` or ``output``) and any
    parameter tied to those (the same tensor object); M3 gets the rest. ``group_overrides``
    (e.g. ``lr=0.02, adamw_lr=3e-4``) are set on both groups.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"m3_param_groups: model must be an nn.Module, got "
                        f"{type(model).__name__}")
    adamw_ids = set()
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            adamw_ids.add(id(mod.weight))
    head = None
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            head = get()
        except Exception:
            head = None
    if not isinstance(head, nn.Module):
        head = None
        for name in _HEAD_NAMES:
            cand = getattr(model, name, None)
            if isinstance(cand, nn.Module):
                head = cand
                break
    if head is not None:
        adamw_ids.update(id(p) for p in head.parameters())
    m3, other = [], []
    for p in model.parameters():  # deduplicated: a tied tensor appears once
        if not p.requires_grad:
            continue
        (other if p.ndim < 2 or id(p) in adamw_ids else m3).append(p)
    groups = []
    if m3:
        groups.append({**group_overrides, "params": m3, "use_m3": True})
    if other:
        groups.append({**group_overrides, "params": other, "use_m3": False})
    return groups
