#!/usr/bin/env bash
# Copyright 2026 The nl_jax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# Issue 17's long runs: every Hope option for 1,000 steps (`default`, the plain Hope tiny, is
# not in the list run without names: it runs for 3,000 with STEPS=3000).
# Usage: experiments/stability/run_options.sh <runs_dir> [name ...]
# Each run writes <runs_dir>/<name>/ (metrics.jsonl, checkpoints) and <runs_dir>/<name>.log;
# rerunning resumes. Pin to one core with `taskset -c 1` to run beside another job.
# EXTRA="--config.model.smt.alpha_bias_init=4.0" adds flags to every run (e.g. a candidate default
# measured against the current one); STEPS=3000 changes the schedule length.
set -euo pipefail
runs=${1:?usage: run_options.sh <runs_dir> [name ...]}
shift
py=${PYTHON:-python}
cfg=experiments/configs
declare -A args=(
  [default]="--config=$cfg/lm.py:hope,tiny"
  [readme_m3]="--config=$cfg/lm.py:hope,tiny --config.model.d_model=128 --config.optimizer.name=m3"
  [hope_attention]="--config=$cfg/lm.py:hope_attention,tiny"
  [paper_l2]="--config=$cfg/lm.py:hope,tiny --config.model.smt.rule=paper_l2"
  [gd]="--config=$cfg/lm.py:hope,tiny --config.model.smt.rule=gd"
  [ntp]="--config=$cfg/lm.py:hope,tiny --config.model.cms.objective=ntp"
  [momentum]="--config=$cfg/lm.py:hope,tiny --config.model.smt.momentum=True"
  [adaptive_q]="--config=$cfg/lm.py:hope,tiny --config.model.smt.adaptive_q=True"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(readme_m3 hope_attention paper_l2 ntp momentum adaptive_q gd)
for name in "${names[@]}"; do
  [ -n "${args[$name]+x}" ] || { echo "run_options.sh: unknown run '$name' (known: ${!args[*]})"; exit 2; }
  echo "== $name $(date -u +%H:%M:%S)"
  # shellcheck disable=SC2086
  $py launch/train.py ${args[$name]} --workdir="$runs/$name" --config.train.steps="${STEPS:-1000}" ${EXTRA:-} \
    --config.train.eval_every=250 --config.train.checkpoint_every=250 \
    > "$runs/$name.log" 2>&1 || echo "== $name failed: see $runs/$name.log"
done
