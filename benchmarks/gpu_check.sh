#!/usr/bin/env bash
# The project's GPU check (docs/performance.md, "GPU check"): run from the repository root on a GPU host.
#   A  pytest -m gpu                                    the CUDA path's own tests
#   B  benchmarks/throughput.py, eager                  a/b, a/c, share of the bf16 matrix-product rate
#   E  benchmarks/throughput.py --compile reduce-overhead (CUDA graphs)
#   D  a CIFAR-shaped study slice through Snakemake (benchmarks/gpu_slice.yaml), nvidia-smi sampled every second,
#      then benchmarks/overhead.py: study wall, GPU busy fraction, each job's fixed cost
# and prints a summary. Every phase has its own time limit; its logs go to $OUT (default: a new temporary folder).
#
# Settings (environment):
#   PY=python3          the interpreter (default: .venv/bin/python when there is one)
#   NO_WHEELS=1         do not install .whl/*.whl (wheels for a host without a package registry, made with
#                       ../shared/gpu-check/make-wheels.sh); otherwise they are installed into $OUT/site when present
#   PHASES="A B D"      the phases to run (default: A B E D on a GPU, A B D on a CPU)
#   MODE=cpu            the reduced check on a CPU (tiny sizes, the test suite's config, one run's analyses): what
#                       CI runs to keep this script working; default: gpu when nvidia-smi lists a GPU, else cpu
#   SLICE=path.yaml     another study config for phase D;  TA TB TE TD: time limits (s) of the phases
set -u
root=$(pwd)
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
if [[ -z ${PY:-} ]]; then [[ -x .venv/bin/python ]] && PY=$root/.venv/bin/python || PY=python3; fi
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true GIT_PYTHON_REFRESH=quiet
phase() { echo "== $1 $(date +%T)"; }
wants() { [[ " $PHASES " == *" $1 "* ]]; }

if [[ -z ${MODE:-} ]]; then nvidia-smi -L >/dev/null 2>&1 && MODE=gpu || MODE=cpu; fi
if [[ $MODE == gpu ]]; then
  PHASES=${PHASES:-A B E D}
  slice=${SLICE:-benchmarks/gpu_slice.yaml}
  throughput=(--config config/config.yaml --train-size 50000 --workers 8 --repeats 3)
  study_args=(--cores all --resources gpu=4)
  targets=()
else
  PHASES=${PHASES:-A B D}
  slice=${SLICE:-$out/cpu_slice.yaml}
  [[ -n ${SLICE:-} ]] || $PY -c 'import sys, yaml  # the test suite config, untuned: no tuning job to wait for
config = yaml.safe_load(open(".test/config/config.yaml"))
yaml.safe_dump({**config, "tune": {"enabled": False}}, open(sys.argv[1], "w"))' "$slice" || exit 1
  throughput=(--config .test/config/config.yaml --train-size 256 --workers 0 --repeats 1 --cpu)
  study_args=(--cores 2)
fi
echo "GPU check, mode $MODE, phases $PHASES, output $out"

phase setup
if [[ $MODE == gpu ]]; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; fi
if [[ -z ${NO_WHEELS:-} ]] && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$out/site" .whl/*.whl || exit 1
  export PYTHONPATH=$out/site:$root/src
else
  export PYTHONPATH=$root/src${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import torch, snakemake, cnnablate; print('torch', torch.__version__, 'snakemake', snakemake.__version__, \
'cuda', torch.cuda.is_available())" || exit 1

if wants A; then
  phase "A pytest -m gpu"
  timeout "${TA:-150}" $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py > "$out/A_gpu_tests.log" 2>&1
  echo "A rc $?"; tail -n 3 "$out/A_gpu_tests.log"
fi
if wants B; then
  phase "B throughput, eager"
  timeout "${TB:-150}" $PY benchmarks/throughput.py "${throughput[@]}" --skip-overhead --json "$out/B_eager.json" \
    > "$out/B_eager.log" 2>&1
  echo "B rc $?"; tail -n 6 "$out/B_eager.log"
fi
if wants E; then
  phase "E throughput, CUDA graphs"
  timeout "${TE:-180}" $PY benchmarks/throughput.py "${throughput[@]}" --skip-overhead --compile reduce-overhead \
    --json "$out/E_graphs.json" > "$out/E_graphs.log" 2>&1
  echo "E rc $?"; tail -n 6 "$out/E_graphs.log"
fi
if wants D; then
  phase "D study slice $slice"
  study=$(sed -n 's/^study: *//p' "$slice")
  workdir=$out/study
  mkdir -p "$workdir"
  if [[ $MODE == gpu ]]; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv,noheader -l 1 \
      > "$out/D_smi.csv" 2>/dev/null &
    smi=$!
  else  # one run's training and analyses: the jobs the check measures, in under a minute
    run=results/$study/runs/base/seed0
    targets=("$run/shift.json" "$run/measures.json")
  fi
  SECONDS=0
  timeout "${TD:-420}" $PY -m snakemake -s "$root/Snakefile" -d "$workdir" --configfile "$(realpath "$slice")" \
    "${study_args[@]}" --keep-going "${targets[@]}" > "$out/D_snakemake.log" 2>&1
  echo "D rc $? wall ${SECONDS} s"
  [[ -n ${smi:-} ]] && kill "$smi" 2>/dev/null
  tail -n 3 "$out/D_snakemake.log"
  smk_log=$(ls -t "$workdir"/.snakemake/log/*.snakemake.log 2>/dev/null | head -1)
  timeout 120 $PY benchmarks/overhead.py "$workdir/results/$study" --workdir "$workdir" --cores "$(nproc)" \
    --snakemake-log "$smk_log" ${smi:+--smi "$out/D_smi.csv"} --json "$out/D_overhead.json" \
    > "$out/D_overhead.log" 2>&1
  echo "overhead rc $?"
fi

phase summary
$PY - "$out" <<'EOF'
"""The check's numbers, from the phases' logs and JSON files; 'not run' where a phase did not run or failed."""
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])


def read(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


tests = out / "A_gpu_tests.log"
if tests.exists():
    counts = dict((kind, int(n)) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error)", tests.read_text()))
    ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("error", 0)
    print(f"tests passed: {counts.get('passed', 0)}/{ran} (pytest -m gpu; {counts.get('skipped', 0)} skipped)")
else:
    print("tests passed: not run")
for name, label in (("B_eager.json", "eager"), ("E_graphs.json", "CUDA graphs")):
    numbers = read(name)
    if numbers is None:
        print(f"throughput ({label}): not run")
        continue
    measured_ms = 1e3 * sorted(numbers["seconds"]["a_project"])[len(numbers["seconds"]["a_project"]) // 2]
    share = numbers["floor"]["compute_floor_ms"] / measured_ms
    ratios = numbers["ratios"]
    print(
        f"throughput ({label}, {numbers['device']}): a/b {ratios['a/b']:.3f}, a/c {ratios['a/c']:.3f}, "
        f"{measured_ms:.1f} ms/epoch, share of the {'bf16 ' if 'cuda' in numbers['device'] else ''}matrix-product "
        f"rate {100 * share:.1f}%"
    )
study = read("D_overhead.json")
if study is None:
    print("study: not run")
else:
    busy = study["gpu_busy_fraction"]
    smi = study["smi_utilization_mean"]
    print(f"study wall: {study['wall_seconds']:.0f} s, {study['jobs']} jobs")
    print(
        f"GPU busy fraction: {'n/a (no job ran on a GPU)' if busy is None else f'{busy:.3f}'} "
        f"(GPU-seconds of work / wall x {study['gpus']} GPU(s))"
        + ("" if smi is None else f"; nvidia-smi utilisation {smi:.3f}")
    )
    parts = ", ".join(
        f"{key[len('train_job_fixed_'):-len('_median')]} {value:.2f}"
        for key, value in study.items()
        if key.startswith("train_job_fixed_") and key.endswith("_median") and key != "train_job_fixed_seconds_median"
    )
    print(f"fixed cost per job (median s): train {study['train_job_fixed_seconds_median']:.2f} ({parts})")
    for rule in ("measure", "shift", "interpret"):
        if f"{rule}_job_fixed_seconds_median" in study:
            print(
                f"  {rule} {study[f'{rule}_job_fixed_seconds_median']:.2f} (imports and exit "
                f"{study[f'{rule}_job_imports_and_exit_median']:.2f}, cuda_init {study[f'{rule}_job_cuda_init_median']:.2f}, "
                f"data {study[f'{rule}_job_data_median']:.2f}; work {study[f'{rule}_job_work_median']:.2f})"
            )
EOF
