#!/usr/bin/env bash
# The one staged script for a lent GPU machine (DESIGN §7).
#
#   bash scripts/gpu.sh STAGE OUTDIR        STAGE: build | test | sanitize | bench | all | summary
#
# Run from the repository root, one stage per device call (each stage stays under 8 minutes;
# `all` runs the four in order and fits only where a command may run longer than 10 minutes).
# Before a GPU session, on the development machine: scripts/fetch_wheels.sh (nvidia-cutlass
# into ./wheels/, git-ignored, so the call carries it), then e.g.
#   run(command="NLCORE_GIT_COMMIT=<sha> bash scripts/gpu.sh build $OUT", carry=["wheels"])
#   run(command="NLCORE_GIT_COMMIT=<sha> bash scripts/gpu.sh test $OUT")     (same warm machine)
#   run(command="NLCORE_GIT_COMMIT=<sha> bash scripts/gpu.sh sanitize $OUT")
#   run(command="NLCORE_GIT_COMMIT=<sha> bash scripts/gpu.sh bench $OUT")
# The machine gets the working tree without .git: NLCORE_GIT_COMMIT (and NLCORE_GIT_DIRTY=1)
# name the commit in the records. Copy what comes back under bench/results/<date>-<card>/.
#
# Each stage appends one JSON line to OUTDIR/stages.jsonl, writes its log (OUTDIR/<stage>.log;
# test adds junit.xml, bench its bench-*.json record) and rewrites OUTDIR/summary.txt; at most
# 8 files in all, the most a device call brings back. The summary table is printed last.
# Exit status: 0 when the stage passed (sanitize "unavailable" counts as passed), else 1.
#
# Environment: NLCORE_PYTHON (python3), NLCORE_STAGE_TIMEOUT (seconds per stage, 450),
# NLCORE_DEADLINE (epoch seconds: every stage's timeout is cut to end 20 s before it, so one
# device call can run several stages, e.g. `all`, inside its limit), NLCORE_TEST_ARGS (pytest
# arguments of the test stage, default -x; on a first run of new kernels rather
# "--maxfail=80 -n 8 --timeout=120 --timeout-method=thread -v -rfE": every failing test named as
# it happens, and a kernel that hangs ends its worker instead of the stage; a SIGALRM timeout
# cannot interrupt a thread blocked in C code; both test runs of 2026-11-26 stalled silently),
# NLCORE_CUDA_ARCHS (90a-real), NLCORE_KERNEL_SET (full), NLCORE_BENCH_ARGS (extra args to
# bench/run.py), NLCORE_SANITIZE_KERNELS (a compute-sanitizer --kernel-name filter, e.g.
# kns=nlcore; default: every kernel), NLCORE_SANITIZE_ARGS (extra args to
# bench/sanitize_all.py, e.g. "--ops memory_mlp,self_modifying --quick": racecheck over every
# op's full case list did not finish in 40 s on 2026-11-26), NLCORE_GPU_SH_DEVICE (cuda; cpu
# dry-runs the script).
set -uo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2; }
[ $# -eq 2 ] || usage
STAGE=$1
OUTDIR=$2
case "$STAGE" in build|test|sanitize|bench|all|summary) ;; *) usage ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
mkdir -p "$OUTDIR" || exit 1
OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="${NLCORE_PYTHON:-python3}"
DEV="${NLCORE_GPU_SH_DEVICE:-cuda}"   # cpu only to dry-run this script without a GPU
T0="${NLCORE_STAGE_TIMEOUT:-450}"
T=$T0
# set_budget: T = the stage timeout, cut to the deadline (NLCORE_DEADLINE) less 20 s
set_budget() {
  T=$T0
  if [ -n "${NLCORE_DEADLINE:-}" ]; then
    local left=$(( ${NLCORE_DEADLINE%.*} - $(date +%s) - 20 ))
    [ "$left" -lt "$T" ] && T=$left
  fi
  [ "$T" -gt 1 ] || T=1
}
export PYTHONUNBUFFERED=1

# ------------------------------------------------------------------ helper (python)
# record STAGE STATUS RC SECONDS DETAIL_JSON | junit FILE | sanitizer LOG RC | benchrec DIR
# | summary
read -r -d '' HELPER <<'PYEOF'
import datetime, glob, json, os, re, socket, subprocess, sys
out = os.environ["OUTDIR"]
cmd, args = sys.argv[1], sys.argv[2:]

def gpu_name():
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout else None
    except Exception:
        return None

if cmd == "record":
    stage, status, rc, secs, detail = args
    rec = {"stage": stage, "status": status, "rc": int(rc), "seconds": float(secs),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "hostname": socket.gethostname(), "gpu": gpu_name(),
           "git_commit": os.environ.get("NLCORE_GIT_COMMIT", "unknown"),
           "detail": json.loads(detail or "{}")}
    with open(os.path.join(out, "stages.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
elif cmd == "junit":
    import xml.etree.ElementTree as ET
    try:
        root = ET.parse(args[0]).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        d = {k: sum(int(s.get(k, 0)) for s in suites)
             for k in ("tests", "failures", "errors", "skipped")}
        d["time_s"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
        d["failed"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites
                       for c in s.iter("testcase")
                       if c.find("failure") is not None or c.find("error") is not None][:20]
    except Exception as exc:
        d = {"junit_error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(d))
elif cmd == "sanitizer":
    text = open(args[0], errors="replace").read()
    d = {}
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    if m:
        d["errors"] = int(m[-1])
    m = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warn", text)
    if m:
        d["hazards"], d["errors"], d["warnings"] = (int(x) for x in m[-1])
    cases = re.findall(r"sanitize cases done: (\d+) failed", text)
    d["cases_failed"] = int(cases[-1]) if cases else None
    d["cuda_error_case"] = "CUDA-ERROR" in text
    d["rc"] = int(args[1])
    print(json.dumps(d))
elif cmd == "benchrec":
    files = sorted(glob.glob(os.path.join(args[0], "bench-*.json")), key=os.path.getmtime)
    if not files:
        print(json.dumps({"record": None})); sys.exit()
    r = json.load(open(files[-1]))
    rows = r.get("rows", [])
    bad = [x for x in rows if x.get("error") and not x["error"].startswith("skipped")]
    best = {}
    for x in rows:
        if x.get("impl") == "nlcore" and x.get("speedup_vs_ref"):
            best[f"{x['mode']} {'x'.join(map(str, x['shape']))}"] = round(x["speedup_vs_ref"], 2)
    print(json.dumps({"record": os.path.basename(files[-1]), "rows": len(rows),
                      "failed": len(bad), "device_name": r.get("device_name"),
                      "ceilings": {k: r.get("ceilings", {}).get(k)
                                   for k in ("copy_gbps", "matmul_tflops")},
                      "nlcore_speedup_vs_eager": best}))
elif cmd == "summary":
    path = os.path.join(out, "stages.jsonl")
    recs = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    lines = [f"# nlcore GPU stages in {out}",
             f"{'stage':<9} {'status':<12} {'rc':>4} {'sec':>7}  {'gpu / commit':<44} detail",
             "-" * 110]
    for r in recs:
        det = r.get("detail", {})
        if r["stage"] == "bench":
            det = {k: det.get(k) for k in ("record", "rows", "failed", "reason")}
        elif r["stage"] == "sanitize" and "memcheck" in det:
            det = {t: "/".join(f"{k}={v}" for k, v in det[t].items() if k != "cuda_error_case")
                   for t in ("memcheck", "racecheck") if t in det}
        elif r["stage"] == "build":
            det = {k: det.get(k) for k in ("torch", "nvcc", "cuda_kernels", "wheels")}
        text = ", ".join(f"{k}={v}" for k, v in det.items() if v not in (None, [], {}))
        who = f"{(r.get('gpu') or '?')[:30]} / {str(r.get('git_commit'))[:10]}"
        lines.append(f"{r['stage']:<9} {r['status']:<12} {r['rc']:>4} {r['seconds']:>7.1f}  "
                     f"{who:<44} {text[:200]}")
    table = "\n".join(lines)
    open(os.path.join(out, "summary.txt"), "w").write(table + "\n")
    print(table)
PYEOF
export OUTDIR
helper() { "$PY" -c "$HELPER" "$@"; }
now() { date +%s.%N; }
elapsed() { "$PY" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$(now)"; }
jstr() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
have_device() {
  [ "$DEV" = cpu ] && return 0
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1
}

# ------------------------------------------------------------------ stages

stage_build() {
  local log="$OUTDIR/build.log" t0 rc status wheels=() kernels nvcc_v torch_v
  t0=$(now)
  {
    echo "== $(date -u +%FT%TZ) build on $(hostname)"
    echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "nvidia-smi: unavailable"
    echo "== nvcc --version"; nvcc --version 2>&1 || echo "nvcc: not on PATH"
    echo "== cmake --version"; cmake --version 2>&1 | head -1
    echo "== python / torch"
    "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'available', torch.cuda.is_available());
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1
  } >>"$log"
  # CMake finds nvcc through CUDACXX when it is not on PATH
  if [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null; then
    for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-13.0/bin/nvcc; do
      [ -x "$c" ] && export CUDACXX="$c" && break
    done
  fi
  shopt -s nullglob
  wheels=(wheels/*.whl)
  shopt -u nullglob
  if [ ${#wheels[@]} -gt 0 ]; then
    echo "== pip install --no-deps ${wheels[*]}" >>"$log"
    "$PY" -m pip install --no-deps --no-index --disable-pip-version-check "${wheels[@]}" \
      >>"$log" 2>&1 || echo "WARNING: wheel install failed" | tee -a "$log"
  else
    echo "== no wheels in ./wheels (run scripts/fetch_wheels.sh here, carry wheels)" >>"$log"
  fi
  echo "== pip install --no-build-isolation --no-deps . (timeout ${T}s)" >>"$log"
  NLCORE_CUDA=ON NLCORE_CUDA_ARCHS="${NLCORE_CUDA_ARCHS:-90a-real}" \
  NLCORE_KERNEL_SET="${NLCORE_KERNEL_SET:-full}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    timeout "$T" "$PY" -m pip install --no-build-isolation --no-deps --disable-pip-version-check \
      -v . >>"$log" 2>&1
  rc=$?
  kernels=false
  if [ $rc -eq 0 ]; then
    "$PY" -c "import nlcore, sys; print('nlcore at', nlcore.__file__);
sys.exit(0 if nlcore.cuda_kernels_available() else 3)" >>"$log" 2>&1 && kernels=true
  fi
  if [ $rc -eq 124 ]; then status=timeout
  elif [ $rc -ne 0 ]; then status=fail
  elif [ $kernels != true ]; then status=fail; rc=3; echo "no CUDA kernels registered" >>"$log"
  else status=ok; fi
  if [ $rc -ne 0 ]; then tail -n 40 "$log"; else tail -n 3 "$log"; fi
  nvcc_v=$("${CUDACXX:-nvcc}" --version 2>/dev/null | grep -o 'release [0-9.]*' | head -1)
  torch_v=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null)
  helper record build "$status" "$rc" "$(elapsed "$t0")" \
    "{\"torch\": $(jstr "$torch_v"), \"nvcc\": $(jstr "$nvcc_v"), \"cuda_kernels\": $kernels,
      \"archs\": $(jstr "${NLCORE_CUDA_ARCHS:-90a-real}"),
      \"kernel_set\": $(jstr "${NLCORE_KERNEL_SET:-full}"), \"wheels\": ${#wheels[@]}}"
  [ "$status" = ok ]
}

stage_test() {
  local log="$OUTDIR/test.log" t0 rc status detail
  t0=$(now)
  # pytest-xdist workers each with torch's default thread count (every core) oversubscribe
  # the CPU references the tests compare against
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
  # shellcheck disable=SC2086
  # SIGINT first: pytest then stops like ^C, prints its summary and still writes junit.xml
  timeout -s INT -k 20 "$T" "$PY" -m pytest -m cuda ${NLCORE_TEST_ARGS:--x -p no:cacheprovider} --durations=20 \
    --junitxml="$OUTDIR/junit.xml" tests 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  case $rc in 0) status=ok ;; 5) status=no-tests ;; 124) status=timeout ;; *) status=fail ;; esac
  detail=$(helper junit "$OUTDIR/junit.xml")
  # every cuda test skipped on a GPU machine means the kernels or the device went missing
  if [ $status = ok ] && "$PY" -c "import json, sys; d = json.loads(sys.argv[1]);
sys.exit(0 if d.get('tests') and d.get('skipped') == d.get('tests') else 1)" "$detail"; then
    status=all-skipped
  fi
  helper record test "$status" "$rc" "$(elapsed "$t0")" "$detail"
  [ "$status" = ok ] || [ "$status" = no-tests ] || { [ "$status" = all-skipped ] && [ "$DEV" = cpu ]; }
}

stage_sanitize() {
  local log="$OUTDIR/sanitize.log" t0 cs="" rc status tool per filter=() reason detail="{"
  local all_ok=true sep=""
  t0=$(now)
  cs=$(command -v compute-sanitizer || true)
  for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [ -z "$cs" ] && [ -x "$c" ] && cs=$c
  done
  if [ -z "$cs" ]; then
    echo "unavailable: compute-sanitizer not found" | tee -a "$log"
    helper record sanitize unavailable 0 "$(elapsed "$t0")" \
      '{"reason": "compute-sanitizer not found"}'
    return 0
  fi
  # does the runtime let the sanitizer drive this device at all? (some refuse: error 999)
  echo "== probe: $cs --tool memcheck on a one-kernel torch program" >>"$log"
  local probe="$OUTDIR/.sanitize-probe.tmp"
  timeout 120 "$cs" --tool memcheck --error-exitcode 3 "$PY" -c \
    "import torch; x = torch.ones(4096, device='$DEV'); print('probe ok', float(x.sum()))" \
    >"$probe" 2>&1
  rc=$?
  cat "$probe" >>"$log"
  if [ $rc -ne 0 ] || ! grep -q "probe ok" "$probe"; then
    reason=$(grep -i -m3 -E "not supported|error|unable|fail" "$probe" | tr '\n' ' ')
    reason="probe rc=$rc: ${reason:-$(tail -n 2 "$probe" | tr '\n' ' ')}"
    rm -f "$probe"
    echo "unavailable: $reason" | tee -a "$log"
    helper record sanitize unavailable 0 "$(elapsed "$t0")" "{\"reason\": $(jstr "$reason")}"
    return 0
  fi
  rm -f "$probe"
  [ -n "${NLCORE_SANITIZE_KERNELS:-}" ] && filter=(--kernel-name "$NLCORE_SANITIZE_KERNELS")
  per=$(( (T - 120) / 2 ))
  [ "$per" -gt 30 ] || per=30
  for tool in memcheck racecheck; do
    local tlog="$OUTDIR/.sanitize-$tool.tmp"
    echo "== $tool (timeout ${per}s)" | tee -a "$log"
    # without the caching allocator every tensor is its own allocation: memcheck sees
    # out-of-bounds accesses that would otherwise land inside a pooled block
    local envs=()
    [ $tool = memcheck ] && envs=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    env "${envs[@]}" timeout "$per" "$cs" --tool "$tool" --error-exitcode 3 "${filter[@]}" \
      "$PY" bench/sanitize_all.py --device "$DEV" ${NLCORE_SANITIZE_ARGS:-} >"$tlog" 2>&1
    rc=$?
    cat "$tlog" >>"$log"
    grep -E "SUMMARY|cases done|CUDA-ERROR|ERROR  " "$tlog" | tail -n 8
    detail+="$sep\"$tool\": $(helper sanitizer "$tlog" "$rc")"
    sep=", "
    rm -f "$tlog"
    [ $rc -eq 0 ] || all_ok=false
  done
  detail+="}"
  if $all_ok; then status=ok; else status=fail; fi
  helper record sanitize "$status" "$([ $status = ok ] && echo 0 || echo 1)" \
    "$(elapsed "$t0")" "$detail"
  [ "$status" = ok ]
}

stage_bench() {
  local log="$OUTDIR/bench.log" t0 rc status
  t0=$(now)
  if ! have_device; then
    echo "bench: torch sees no CUDA device" | tee -a "$log"
    helper record bench fail 1 "$(elapsed "$t0")" '{"reason": "no CUDA device"}'
    return 1
  fi
  # --max-seconds leaves the run time to write its record before `timeout` would strike
  # shellcheck disable=SC2086
  timeout "$T" "$PY" bench/run.py --out "$OUTDIR" --device "$DEV" --no-progress \
    --max-seconds $(( T > 120 ? T - 90 : T / 2 )) ${NLCORE_BENCH_ARGS:-} 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  case $rc in 0) status=ok ;; 124) status=timeout ;; *) status=fail ;; esac
  helper record bench "$status" "$rc" "$(elapsed "$t0")" "$(helper benchrec "$OUTDIR")"
  [ "$status" = ok ]
}

# ------------------------------------------------------------------ main

result=0
case "$STAGE" in
  all)
    for s in build test sanitize bench; do
      echo "######## $s"
      set_budget
      "stage_$s" || result=1
      [ $s = build ] && [ $result -ne 0 ] && break
    done ;;
  summary) ;;
  *) set_budget; "stage_$STAGE" || result=1 ;;
esac
echo
helper summary
exit $result
