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
"""The matmul FLOPs of a program, counted on its jaxpr, loops and recomputation included.

Why: a step's time on a machine that runs matmuls at a steady rate is its FLOPs divided by
that rate, so the FLOPs of two models' steps bound the ratio of their tokens/s whatever the
implementation does. XLA's own cost analysis counts a while loop's body once; this counts
each ``scan`` body ``length`` times, every ``jax.checkpoint`` recomputation where autodiff
placed it (the grad's jaxpr holds the rematerialised forward), and a custom VJP's backward
as written. Only ``dot_general`` and ``conv_general_dilated`` count (2 FLOPs per
multiply-add); elementwise work does not. A ``lax.cond`` counts one branch (``cond=``:
"min", the cheapest, or "max"): Hope's reset selects sit under conds whose costly branch runs
only in chunks that hold a document start. A ``while`` loop has no trip count in its jaxpr
and is refused with its source line rather than undercounted.

    flops = matmul_flops(jax.value_and_grad(loss_fn), params, tokens)   # an int
    by_line = matmul_flops_by_source(jaxpr)   # {"file.py:function:line": flops}
"""

import collections
import math

import jax
from jax.extend import core as jex_core

CONDS = ("min", "max")
_LIBRARIES = ("/jax/", "/jaxlib/", "/flax/", "/optax/")  # frames skipped by the by-line count


def _sub_jaxprs(value) -> list:
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _own_flops(eqn) -> int:
  """FLOPs of one dot / conv equation (0 for anything else)."""
  name = eqn.primitive.name
  if name == "dot_general":
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    free = math.prod(d for i, d in enumerate(rhs) if i not in rhs_contract + rhs_batch)
    return 2 * math.prod(lhs) * free
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    # Every output element takes one multiply-add per kernel entry of its feature group.
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // out_features
  return 0


def _source(eqn, frames: int) -> str:
  tb = eqn.source_info.traceback
  user = [f for f in (tb.frames if tb is not None else ())
          if not any(lib in f.file_name for lib in _LIBRARIES)]
  if not user:
    return "?"
  return " < ".join(f"{f.file_name.rsplit('/', 1)[-1]}:{f.function_name}:{f.line_num}"
                    for f in user[:frames])


def _walk(jaxpr, multiplier: int, cond: str, frames: int, out: collections.Counter) -> None:
  """Adds (source -> FLOPs) of every dot / conv in ``jaxpr`` to ``out``."""
  for eqn in jaxpr.eqns:
    own = _own_flops(eqn)
    if own:
      out[_source(eqn, frames)] += multiplier * own
      continue
    name = eqn.primitive.name
    if name == "while":
      raise ValueError(f"matmul_flops: a while loop ({_source(eqn, 1)}) has no static trip "
                       "count; write it as a lax.scan (or fori_loop with static bounds) to "
                       "count it")
    if name == "cond":
      branches = []
      for branch in eqn.params["branches"]:
        branches.append(collections.Counter())
        _walk(branch.jaxpr, multiplier, cond, frames, branches[-1])
      out.update((min if cond == "min" else max)(branches, key=lambda b: sum(b.values())))
      continue
    inner = multiplier * (eqn.params["length"] if name == "scan" else 1)
    for sub in (j for v in eqn.params.values() for j in _sub_jaxprs(v)):
      _walk(sub, inner, cond, frames, out)


def matmul_flops_by_source(jaxpr, cond: str = "min", frames: int = 1) -> dict[str, int]:
  """{source line (innermost ``frames`` user frames): matmul FLOPs} of a (Closed)Jaxpr."""
  if cond not in CONDS:
    raise ValueError(f"cond={cond!r} is not one of {CONDS}")
  out = collections.Counter()
  _walk(getattr(jaxpr, "jaxpr", jaxpr), 1, cond, frames, out)
  return dict(out)


def jaxpr_matmul_flops(jaxpr, cond: str = "min") -> int:
  """The matmul FLOPs of a (Closed)Jaxpr (module docstring)."""
  return sum(matmul_flops_by_source(jaxpr, cond=cond).values())


def matmul_flops(fn, *args, cond: str = "min", **kwargs) -> int:
  """The matmul FLOPs of one call ``fn(*args, **kwargs)`` (args may be ShapeDtypeStructs)."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args, **kwargs), cond=cond)
