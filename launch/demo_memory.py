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
"""A first look at nl_jax: stream key->value pairs through fast memories and recall them.

Writes 48 random associations per head (4 heads, d=64) into each inner rule's matrix memory,
streaming the sequence three times in calls of 16 tokens that carry the per-sequence state, and
after each pass queries every key. The delta-style rules (dgd, paper_l2, gd) correct what a key
already stores, so re-reading the same context keeps lowering the recall error; the Hebbian
(linear-attention) rule only adds, so the associations interfere more with every pass. The last
column checks the chunk-parallel scan against the token-by-token reference.

    python launch/demo_memory.py
"""

import jax
import jax.numpy as jnp
from absl import app, flags

from nl_jax.memory import RULES, MatrixMemory, MemoryInputs

FLAGS = flags.FLAGS
flags.DEFINE_integer("pairs", 48, "associations written per head")
flags.DEFINE_integer("dim", 64, "key and value dimension")
flags.DEFINE_integer("heads", 4, "memory heads (independent memories)")
flags.DEFINE_integer("chunk", 16, "tokens per streamed call and chunk size of the scan")
flags.DEFINE_integer("passes", 3, "times the stream is re-read")

# Step sizes inside each rule's stable range (nl_jax.memory.gates): dgd is stable for any eta.
ETA = {"dgd": 4.0, "paper_l2": 0.45, "gd": 0.9, "hebbian": 0.5}


def main(argv):
  del argv
  n, d, h, c = FLAGS.pairs, FLAGS.dim, FLAGS.heads, FLAGS.chunk
  kk, kv = jax.random.split(jax.random.PRNGKey(0))
  keys_HxNxD = jax.random.normal(kk, (h, n, d))
  keys_HxNxD /= jnp.linalg.norm(keys_HxNxD, axis=-1, keepdims=True)
  values_HxNxD = jax.random.normal(kv, (h, n, d))
  print(f"{h} heads x {n} random key->value pairs, d={d}; the stream is read {FLAGS.passes} "
        f"times in calls of {c} tokens with the memory state carried")
  print(f"{'rule':<10}" + "".join(f"{'err pass ' + str(p + 1):>13}" for p in range(FLAGS.passes))
        + f"{'chunked==loop':>15}")
  for rule in RULES:
    mem = MatrixMemory(key_dim=d, value_dim=d, rule=rule, chunk_size=c)
    params = mem.init_params(jax.random.PRNGKey(1), head_shape=(h,))
    inputs = MemoryInputs(keys_HxNxD, values_HxNxD, jnp.full((h, n), ETA[rule]),
                          queries=keys_HxNxD)
    scan = jax.jit(mem.scan)
    state, errors = mem.init_state(params, (h,)), []
    for _ in range(FLAGS.passes):
      for lo in range(0, n, c):
        _, state = scan(params, state, jax.tree.map(lambda x, lo=lo: x[:, lo:lo + c], inputs))
      recalled_HxNxD = mem.read(params, state, keys_HxNxD)
      errors.append(float(jnp.linalg.norm(recalled_HxNxD - values_HxNxD)
                          / jnp.linalg.norm(values_HxNxD)))
    chunked, _ = mem.scan(params, mem.init_state(params, (h,)), inputs, implementation="chunked")
    loop, _ = mem.scan(params, mem.init_state(params, (h,)), inputs, implementation="sequential")
    same = bool(jnp.allclose(chunked, loop, rtol=1e-4, atol=1e-4))
    print(f"{rule:<10}" + "".join(f"{e:>13.3f}" for e in errors) + f"{str(same):>15}")
  print("err = ||read(keys) - values|| / ||values|| over all pairs (0 = perfect recall)")


if __name__ == "__main__":
  app.run(main)
