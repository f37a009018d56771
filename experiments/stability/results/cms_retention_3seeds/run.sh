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
# Hope tiny, 300 steps, default vs cms.retention=(0.9,0.9), 3 seeds, then the stream probes
# (16 calls of 64 tokens, memory carried / fresh). Run from the repository root:
#   experiments/stability/results/cms_retention_3seeds/run.sh /tmp/ret
# then: python experiments/stability/results/cms_retention_3seeds/summarize.py /tmp/ret
set -euo pipefail
out=${1:?usage: run.sh <out_dir>}
py=${PYTHON:-python}
for seed in 0 1 2; do
  for v in default ret09; do
    wd=$out/wd_${v}_s${seed}
    extra=()
    [ $v = ret09 ] && extra=('--config.model.cms.retention=(0.9,0.9)')
    $py launch/train.py --config=experiments/configs/lm.py:hope,tiny --workdir=$wd \
      --config.train.seed=$seed --config.train.sample_tokens=0 "${extra[@]}"
    $py experiments/stability/probe_stream.py --workdir=$wd --calls 16 \
      --out=$out/probe_${v}_s${seed}.json
    $py experiments/stability/probe_stream.py --workdir=$wd --calls 16 --fresh \
      --out=$out/probe_${v}_s${seed}_fresh.json
  done
done
