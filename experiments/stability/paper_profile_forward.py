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
"""Which choice of the paper profile overflows: one forward of Hope tiny at init per variant.

``profile="paper"`` trained from step 1 gives non-finite values. This script runs one
forward at init on a 32 x 64-byte corpus batch (the trainer's batch shape) for the profile as it
is and with one choice moved back to the default, and prints whether the logits and every
aux statistic are finite (experiments/stability/README.md, "Long runs with the new gate").

  python experiments/stability/paper_profile_forward.py
"""

import os
import sys

import flax.nnx as nnx
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nl_jax.eval import fit  # noqa: E402
from nl_jax.models import registry  # noqa: E402

VARIANTS = {
    "paper": {},
    "paper, smt.alpha_bias_init=4": {"smt.alpha_bias_init": 4.0},
    "paper, cms.max_step_norm=1": {"cms.max_step_norm": 1.0},
    "paper, cms.objective=local": {"cms.objective": "local"},
    "paper, smt.value_norm=l2": {"smt.value_norm": "l2"},
    "paper, smt.rule=dgd": {"smt.rule": "dgd"},
    "paper, smt.anchored_step=mean": {"smt.anchored_step": "mean"},
    "paper, momentum=False": {"momentum": False},
}


def main():
  batch = fit.lm_batch(np.random.default_rng(0), 32, 64)
  x, y = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
  for name, overrides in VARIANTS.items():
    cfg = registry.model_config("hope", "tiny", profile="paper", **overrides)
    model = registry.build_model(cfg, rngs=nnx.Rngs(0))
    logits, _, aux = model(x, None, targets=y)
    bad = sorted(k for k, v in aux.items() if not np.isfinite(float(v)))
    print(f"{name:32s} logits finite: {bool(jnp.all(jnp.isfinite(logits)))}; "
          f"{len(bad)} of {len(aux)} aux non-finite {bad[:2]}", flush=True)


if __name__ == "__main__":
  main()
