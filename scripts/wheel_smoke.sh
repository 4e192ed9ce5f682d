#!/usr/bin/env bash
# Build the nlcore wheel with the CPU venv and smoke-test it installed in a fresh venv, run from
# outside the source tree:
#   bash scripts/wheel_smoke.sh [WHEEL_DIR]          (default build/wheels)
# The wheel build honours NLCORE_CUDA, NLCORE_CUDA_ARCHS, NLCORE_KERNEL_SET, NLCORE_CUDA_PREBUILT
# (pyproject.toml [tool.scikit-build.cmake.define]); with the CPU venv's torch, AUTO means CPU only.
#   NLCORE_WHEEL_BUILD_DIR   CMake build dir (default build/wheel-smoke/{wheel_tag}: its own, so
#                            it never reconfigures the dev build dir build/{wheel_tag} that
#                            scripts/build.sh and .ci/run stage (c) use with another torch)
#   NLCORE_WHEEL_KEEP=1      keep the fresh venv (its path is printed)
# The fresh venv gets torch (and numpy) from the CPU venv through a .pth line, not a second
# ~1 GB install: fast and offline, and it is exactly the torch the wheel was built against. The
# wheel itself goes in with pip into the fresh venv's own site-packages, which precedes the .pth
# path, and the smoke test asserts that `nlcore` is imported from there.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t0=$SECONDS
NLCORE_FLAVOR=cpu source scripts/env.sh
cache="${NLCORE_CACHE:-$HOME/.cache/nlcore}"
out="$(realpath -m "${1:-build/wheels}")"
build_dir="${NLCORE_WHEEL_BUILD_DIR:-build/wheel-smoke/{wheel_tag\}}"
mkdir -p "$out" build
rm -f "$out"/nlcore-*.whl
if command -v ccache >/dev/null 2>&1 && [ -z "${CMAKE_CXX_COMPILER_LAUNCHER:-}" ]; then
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_DIR="${CCACHE_DIR:-$cache/ccache}"
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
log=build/wheel-smoke.log
echo "[wheel] building into $out (build dir ${build_dir}, log $log)"
if ! python -m pip wheel . --no-deps --no-build-isolation -w "$out" \
       -C "build-dir=$build_dir" >"$log" 2>&1; then
  grep -v "Location 'file" "$log" | tail -60 >&2
  echo "[wheel] build failed; full log in $log" >&2
  exit 1
fi
grep -E "nlcore: (torch|CUDA)" "$log" | sed 's/^ *//; s/^/[wheel] /' || true
whl=$(ls "$out"/nlcore-*.whl)
echo "[wheel] built $(basename "$whl") ($(du -h "$whl" | cut -f1)) in $((SECONDS - t0))s"

tmp=$(mktemp -d /tmp/nlcore-wheel-smoke.XXXXXX)
if [ "${NLCORE_WHEEL_KEEP:-0}" != 1 ]; then trap 'rm -rf "$tmp"' EXIT; fi
python -m venv "$tmp/venv"
fresh="$tmp/venv/bin/python"
purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
fresh_site=$("$fresh" -c "$purelib")
# the wheel first: once the .pth line is in, pip would see the CPU venv's nlcore (installed by
# scripts/build.sh) as already satisfying the requirement and skip the install
"$fresh" -m pip install -q --no-deps --no-index "$whl"
[ -f "$fresh_site/nlcore/__init__.py" ] || { echo "[wheel] not installed into $fresh_site" >&2; exit 1; }
python -c "$purelib" >"$fresh_site/_nlcore_smoke_cpu_venv.pth"
echo "[wheel] installed into fresh venv $tmp/venv"

cd "$tmp"
env -u PYTHONPATH PYTHONNOUSERSITE=1 NLCORE_SRC="$root" "$fresh" - <<'PY'
import importlib.metadata as md
import math
import os
import sys

import torch
import nlcore
from nlcore import ops, reference as ref
from nlcore.optim import M3

src = os.path.realpath(os.environ["NLCORE_SRC"])
where = os.path.realpath(nlcore.__file__)
assert where.startswith(os.path.realpath(sys.prefix)), f"nlcore imported from {where}"
assert not where.startswith(src + os.sep), f"nlcore imported from the source tree: {where}"
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  nlcore {nlcore.__version__} "
      f"(dist {md.version('nlcore')})  from {os.path.dirname(where)}")
print(f"CUDA kernels in this build: {nlcore.cuda_kernels_available()}")
assert nlcore.__version__ == md.version("nlcore")


def rel(x, y):
    x, y = x.detach().double(), y.detach().double()
    return ((x - y).norm() / y.norm().clamp_min(1e-300)).item()


results = []


def check(name, err, tol):
    ok = math.isfinite(err) and err < tol
    results.append(ok)
    print(f"  {name:<22} rel err {err:.2e}  (tol {tol:.0e})  {'ok' if ok else 'FAIL'}")


torch.manual_seed(0)
f64 = torch.float64

# newton_schulz: a batch of matrices, float64 (exact path) against the reference
G = torch.randn(3, 12, 20, dtype=f64)
check("newton_schulz", rel(ops.newton_schulz(G, 5), ref.newton_schulz(G, 5)), 1e-10)

# dgd: the DGD / gated delta rule forward with GVA, gates, erase and an initial state
B, T, H, HV, K, V = 2, 37, 2, 4, 16, 8
q = torch.randn(B, T, H, K, dtype=f64)
k = torch.nn.functional.normalize(torch.randn(B, T, H, K, dtype=f64), dim=-1)
v = torch.randn(B, T, HV, V, dtype=f64)
beta = torch.rand(B, T, HV, dtype=f64) * 0.8 + 0.1
g = torch.nn.functional.logsigmoid(torch.randn(B, T, HV, dtype=f64) + 3)
s0 = 0.1 * torch.randn(B, HV, K, V, dtype=f64)
o, sT = ops.dgd(q, k, v, beta, g=g, erase=g.exp() * beta, initial_state=s0,
                output_final_state=True)
o_r, sT_r = ref.dgd(q, k, v, beta, g=g, erase=g.exp() * beta, initial_state=s0,
                    output_final_state=True)
check("dgd (o)", rel(o, o_r), 1e-10)
check("dgd (final state)", rel(sT, sT_r), 1e-10)

# memory_mlp_scan: the MLP memory, chunked updates with retention and momentum
B, T, H, D, F = 2, 23, 2, 8, 16
x = torch.randn(B, T, H, D, dtype=f64)
km = torch.nn.functional.normalize(torch.randn(B, T, H, D, dtype=f64), dim=-1)
vm = torch.randn(B, T, H, D, dtype=f64)
eta = torch.rand(B, T, H, dtype=f64) * 0.25 + 0.05
gm = torch.nn.functional.logsigmoid(torch.randn(B, T, H, dtype=f64) + 3)
w_in = torch.randn(H, F, D, dtype=f64) / math.sqrt(D)
w_out = torch.randn(H, D, F, dtype=f64) / math.sqrt(F)
y, _ = ops.memory_mlp_scan(x, km, vm, eta, w_in, w_out, 4, g=gm, momentum=0.5)
y_r, _ = ref.memory_mlp_scan(x, km, vm, eta, w_in, w_out, 4, g=gm, momentum=0.5)
check("memory_mlp_scan", rel(y, y_r), 1e-10)

# self_modifying_scan: Hope's four coupled self-modifying memories
w_in4 = torch.randn(4, H, F, D, dtype=f64) / math.sqrt(D)
w_out4 = torch.randn(4, H, D, F, dtype=f64) / math.sqrt(F)
w_eta, w_alpha = (torch.randn(H, D, dtype=f64) / math.sqrt(D) for _ in range(2))
b_eta, b_alpha = torch.randn(H, dtype=f64), torch.randn(H, dtype=f64) + 2
kw = dict(eta_max=0.05, b_eta=b_eta, b_alpha=b_alpha, momentum=0.5)
ours = ops.self_modifying_scan(x, w_in4, w_out4, w_eta, w_alpha, 4, **kw)
theirs = ref.self_modifying_scan(x, w_in4, w_out4, w_eta, w_alpha, 4, **kw)
for name, a, b in zip(("k", "v", "eta", "g"), ours[:4], theirs[:4]):
    check(f"self_modifying ({name})", rel(a, b), 1e-10)

# M3 (muon variant, alpha = 0): three steps against torch.optim.Muon with torch's (bf16) NS
# swapped for nlcore's fp32 one, so everything else is the same fp32 arithmetic
import torch.optim._muon as torch_muon
torch_muon._zeropower_via_newtonschulz = lambda grad, coefs, steps, eps: ops.newton_schulz(
    grad, steps, list(coefs), eps, compute_dtype=torch.float32)
p0 = [torch.randn(24, 16) * 0.1, torch.randn(16, 40) * 0.1]
grads = [[torch.randn_like(p) for p in p0] for _ in range(3)]
pa = [torch.nn.Parameter(p.clone()) for p in p0]
pb = [torch.nn.Parameter(p.clone()) for p in p0]
opt_a = M3(pa, lr=0.02, variant="muon", betas=(0.9, 0.999, 0.95), alpha=0.0, slow_every=4,
           weight_decay=0.0, nesterov=True, ns_steps=5, ns_coefficients="muon",
           ns_dtype=torch.float32, ns_eps=1e-7)
opt_b = torch.optim.Muon(pb, lr=0.02, weight_decay=0.0, momentum=0.9, nesterov=True,
                         ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5)
for gs in grads:
    for opt, ps in ((opt_a, pa), (opt_b, pb)):
        for p, gr in zip(ps, gs):
            p.grad = gr.clone()
        opt.step()
for i, (a, b, p) in enumerate(zip(pa, pb, p0)):
    check(f"M3 vs torch Muon [{i}]", rel(a.detach() - p, b.detach() - p), 1e-5)

if not all(results):
    sys.exit("wheel smoke test FAILED")
print("wheel smoke test passed")
PY
echo "[wheel] done in $((SECONDS - t0))s"
