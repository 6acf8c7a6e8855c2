#!/usr/bin/env bash
# One prepared check for a machine with CUDA, in under 8 minutes on one H100 (each part has its own timeout):
#   tests     the device tests (pytest -m device: the `device` fixture is CUDA there) at fp32, bf16 and fp16
#   reno_sdxl one ReNO iteration on SDXL-Turbo at 512 px, latent and both pixel paths, with peak memory
#   reno_e2e  one end-to-end ReNO image, 50 iterations, random weights at true size
# and one JSON with every part's status, time and figures: $OUT/gpu_check.json (OUT defaults to build/gpu_check).
# Without CUDA every GPU part prints "no CUDA: skipped <part>" and the script still runs to its end (exit 0).
# Exit status: 0 when every part that could run passed, else 1. What could not run is listed at the end.
#
#   bash scripts/gpu_check.sh            # PYTHON=... to use another interpreter than .venv/bin/python
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-build/gpu_check}
mkdir -p "$OUT"
PARTS="tests reno_sdxl reno_e2e"
declare -A TIMEOUT=([tests]=150 [reno_sdxl]=180 [reno_e2e]=120)  # 450 s in all
declare -A STATUS RC ELAPSED

part_tests() { "$PY" -m pytest -q -p no:cacheprovider -m device tests/library --junitxml "$OUT/tests.xml"; }
part_reno_sdxl() { "$PY" -m bench.bench_reno_sdxl --device cuda --size 512 --json "$OUT/reno_sdxl.json"; }
part_reno_e2e() { "$PY" -m bench.bench_reno_sdxl --device cuda --size 512 --end-to-end 50 --json "$OUT/reno_e2e.json"; }
export PY OUT
export -f part_tests part_reno_sdxl part_reno_e2e

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  CUDA=1
  DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0), '| torch', torch.__version__)")
  echo "CUDA: $DEVICE"
else
  CUDA=0 DEVICE=""
fi

for part in $PARTS; do
  if [ "$CUDA" = 0 ]; then
    echo "no CUDA: skipped $part"
    STATUS[$part]=skipped RC[$part]="" ELAPSED[$part]=0
    continue
  fi
  echo "== $part (timeout ${TIMEOUT[$part]} s): $(declare -f "part_$part" | sed -n 3p | sed 's/^ *//')"
  start=$(date +%s)
  timeout --kill-after=10 "${TIMEOUT[$part]}" bash -c "part_$part" > "$OUT/$part.log" 2>&1
  rc=$?
  ELAPSED[$part]=$(( $(date +%s) - start ))
  RC[$part]=$rc
  case $rc in
    0) STATUS[$part]=passed ;;
    124|137) STATUS[$part]=timeout ;;
    *) STATUS[$part]=failed ;;
  esac
  echo "   ${STATUS[$part]} (rc $rc, ${ELAPSED[$part]} s); log $OUT/$part.log"
  [ "$rc" = 0 ] || tail -n 15 "$OUT/$part.log"
done

export CUDA DEVICE
for part in $PARTS; do
  export "STATUS_$part=${STATUS[$part]}" "RC_$part=${RC[$part]}" "ELAPSED_$part=${ELAPSED[$part]}"
done
"$PY" - <<'EOF'
import json, os
from pathlib import Path

out = Path(os.environ["OUT"])
report = {"cuda": os.environ["CUDA"] == "1", "parts": {}}
if report["cuda"]:
    report["device"] = os.environ["DEVICE"]
for part in ("tests", "reno_sdxl", "reno_e2e"):
    entry = {"status": os.environ[f"STATUS_{part}"], "seconds": float(os.environ[f"ELAPSED_{part}"] or 0)}
    if os.environ[f"RC_{part}"]:
        entry["rc"] = int(os.environ[f"RC_{part}"])
    figures = out / f"{part}.json"
    if figures.is_file():
        entry["figures"] = json.loads(figures.read_text())
    log = out / f"{part}.log"
    if log.is_file():
        entry["log_tail"] = log.read_text(errors="replace").splitlines()[-15:]
    report["parts"][part] = entry
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
missing = [f"{p} ({e['status']})" for p, e in report["parts"].items() if e["status"] != "passed"]
print(f"wrote {out / 'gpu_check.json'}")
print("could not run: " + ", ".join(missing) if missing else "every part ran and passed")
EOF
for part in $PARTS; do
  case ${STATUS[$part]} in failed|timeout) exit 1 ;; esac
done
exit 0
