#!/usr/bin/env bash
# One check of a fresh single-GPU machine, from the repository root, in at most 8 minutes (a short GPU lease):
#
#   scripts/gpu_check.sh [--dry-run] [--no-install] [OUT.json]      (default OUT: gpu_check.json)
#
# Stages, each under its own `timeout` and all within the 8-minute budget:
#   install      make install (.venv with torch and grn[test]; skipped with --no-install or GRN_PYTHON=<python>)
#   environment  torch / CUDA versions, the GPU, what precision=auto picks
#   flash_attn   pip install a prebuilt flash-attn ($FLASH_ATTN_WHEEL, else a binary wheel from the index);
#                never fatal: without it the flash-attn test skips
#   gpu_tests    pytest -m gpu tests/gpu (flash-attn vs SDPA, bf16 training, FSDP2 + NCCL, compile, the benches)
#   sampler      bench/sampler.py: GRN_B, batch 8, 50 steps, fp32 and bf16 against the reference sampler
#   train_step   bench/train_step.py: GRN_B at the experiment's batch (128), fp32 vs bf16, MFU of the bf16 step
# and writes ONE JSON with every figure, each stage's status, time and log tail. Exit status 0 when every stage
# passed. --dry-run runs the same stages on the CPU with tiny sizes, hides any GPU (the gpu tests report skipped)
# and installs nothing, so CI can check the script itself (tests/scripts/test_gpu_check.py). docs/cluster.md.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
INSTALL=1
OUT=gpu_check.json
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $arg (use --dry-run, --no-install, or an output path)" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done

BUDGET=480          # seconds for everything: the stages below are cut to what is left
RESERVE=15          # kept back for writing the JSON
START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
: > "$WORK/stages.tsv"

if [[ -n "${GRN_PYTHON:-}" ]]; then
  PY="$GRN_PYTHON"; INSTALL=0
elif [[ $DRY == 1 ]]; then
  PY=$([[ -x .venv/bin/python ]] && echo .venv/bin/python || command -v python3); INSTALL=0
else
  PY=.venv/bin/python
fi
if [[ $DRY == 1 ]]; then
  export CUDA_VISIBLE_DEVICES=""   # the CPU path, even on a GPU machine
  SAMPLER_ARGS=(--device cpu --size tiny --batch 2 --steps 2 --peak-n 512)
  STEP_ARGS=(--device cpu --size tiny --batch 2 --steps 1 --warmup 0)
else
  SAMPLER_ARGS=(--size grn_b --batch 8 --steps 50)
  STEP_ARGS=(--size grn_b --batch 128 --steps 10 --warmup 3)
fi

# stage NAME LIMIT_SECONDS COMMAND...: run it under timeout (the limit, or what the budget has left), log to
# $WORK/NAME.log, and append "name status seconds exit_code" to $WORK/stages.tsv
stage() {
  local name=$1 limit=$2; shift 2
  # a CPU dry run checks that every stage works, not its speed: a shared 2-core CPU takes several times longer
  (( DRY == 1 )) && limit=$(( limit * 3 ))
  local left=$(( BUDGET - RESERVE - (SECONDS - START) ))
  (( left < limit )) && limit=$left
  if (( limit < 5 )); then
    printf '%s\tskipped_budget\t0\t-1\n' "$name" >> "$WORK/stages.tsv"
    echo "== $name: skipped, the budget is spent"
    return
  fi
  echo "== $name (at most ${limit} s)"
  local t0=$SECONDS rc status
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( SECONDS - t0 ))" "$rc" >> "$WORK/stages.tsv"
  echo "   $status in $(( SECONDS - t0 )) s"
  tail -n 3 "$WORK/$name.log" | sed 's/^/   | /'
}

# flash-attn: already there, else a prebuilt wheel; writes its version (or nothing) to $WORK/flash_attn.txt
flash_attn() {
  local probe='import flash_attn, sys; open(sys.argv[1], "w").write(flash_attn.__version__)'
  "$PY" -c "$probe" "$WORK/flash_attn.txt" 2>/dev/null && { echo "flash-attn $(cat "$WORK/flash_attn.txt")"; return 0; }
  if [[ $DRY == 1 ]]; then
    echo "flash-attn not installed (a dry run installs nothing)"; return 0
  elif [[ -n "${FLASH_ATTN_WHEEL:-}" ]]; then
    "$PY" -m pip install -q "$FLASH_ATTN_WHEEL"
  else  # a source build takes far longer than this lease: binary wheels only
    "$PY" -m pip install -q --only-binary=:all: flash-attn
  fi
  "$PY" -c "$probe" "$WORK/flash_attn.txt" 2>/dev/null && echo "flash-attn $(cat "$WORK/flash_attn.txt")" \
    || echo "flash-attn not installed: the flash-attn test will skip"
  return 0
}
export -f flash_attn
export PY DRY WORK

if [[ $INSTALL == 1 ]]; then
  stage install 200 make install
else
  printf 'install\tskipped\t0\t0\n' >> "$WORK/stages.tsv"
fi
stage environment 60 "$PY" -c '
import json, sys, torch
from grn.precision import cpu_bf16_flag, resolve_precision
cuda = torch.cuda.is_available()
info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": cuda, "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_flag": cpu_bf16_flag(),
        "precision_auto": {"cpu": resolve_precision("auto", "cpu"), "cuda": resolve_precision("auto", "cuda")}}
open(sys.argv[1], "w").write(json.dumps(info))
print(info)
' "$WORK/environment.json"
stage flash_attn 60 bash -c flash_attn
stage gpu_tests 200 "$PY" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider --junitxml="$WORK/gpu_tests.xml"
stage sampler 90 "$PY" bench/sampler.py "${SAMPLER_ARGS[@]}" --precision compare --json "$WORK/sampler.json"
stage train_step 60 "$PY" bench/train_step.py "${STEP_ARGS[@]}" --precision compare --json "$WORK/train_step.json"

# the report: a plain python3 as a fallback, so a broken .venv still yields the JSON that says so
REPORT_PY="$PY"
"$REPORT_PY" -c "" 2>/dev/null || REPORT_PY=python3
GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
"$REPORT_PY" - "$WORK" "$OUT" "$DRY" "$BUDGET" "$(( SECONDS - START ))" "$GIT_COMMIT" <<'EOF'
import json
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

work, out, dry, budget, seconds, commit = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", *sys.argv[4:]


def load(name):
    path = work / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


stages = {}
for line in (work / "stages.tsv").read_text().splitlines():
    name, status, secs, rc = line.split("\t")
    log = work / f"{name}.log"
    stages[name] = {"status": status, "seconds": int(secs), "exit_code": int(rc),
                    "log_tail": log.read_text(errors="replace")[-1500:] if log.is_file() else ""}

tests = None
if (work / "gpu_tests.xml").is_file():
    cases = []
    for case in ET.parse(work / "gpu_tests.xml").getroot().iter("testcase"):
        outcome, message = "passed", None
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind], node.get("message")
        cases.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message})
    tests = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    tests["tests"] = cases

train_step = load("train_step.json")
sampler = load("sampler.json")
report = {
    "dry_run": dry,
    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "total_seconds": int(seconds),
    "budget_seconds": int(budget),
    "git_commit": commit,
    "environment": load("environment.json"),
    "stages": stages,
    "flash_attn": (work / "flash_attn.txt").read_text() if (work / "flash_attn.txt").is_file() else None,
    "gpu_tests": tests,
    "sampler": sampler,
    "train_step": train_step,
    "mfu": (train_step or {}).get("mfu"),
    "ok": all(s["status"] in ("ok", "skipped") for s in stages.values()),
}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report, indent=2) + "\n")
summary = {k: report[k] for k in ("ok", "total_seconds", "mfu")}
summary["stages"] = {k: v["status"] for k, v in stages.items()}
print(f"wrote {out}: {json.dumps(summary)}")
sys.exit(0 if report["ok"] else 1)
EOF
