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
"""Optimizer and learning-rate schedule from ``config.optimizer``.

Any of `OPTIMIZERS` (the keys of the table below, the one list of names): optax's ``adamw``/``adam``/``sgd``/``lion``/
``adafactor``/``muon`` (``optax.contrib.muon``) and nl_jax's ``m3``, ``dgd``,
``delta_momentum``, ``deep_momentum``. Common fields (``b1``, ``b2``, ``eps``, ``momentum``,
``weight_decay``) are passed where the optimizer has them; ``optimizer.kwargs`` adds any
other keyword argument of the optimizer function. Weight decay applies to parameters of rank
>= 2 only (not to norms' scales, biases or 1-D initial states). Gradients are clipped by
global norm first when ``grad_clip > 0``.

Which rule gets which parameter (`rule_assignment`) comes from the parameters' logical axes
(`nl_jax.optim.partition`, the axes that shard them): for ``muon``, ``m3`` and ``m3_paper`` the
projections and the fast memories' initial-state matrices are orthogonalised on their matrix
view (attention ``wq`` [embed, heads, head_dim] as ``embed x heads*head_dim``) and the
embedding, unembedding, norms, biases, gates and convolutions go to AdamW; for ``dgd`` the
projections take the DGD step and everything else plain SGD (AdamW with
``optimizer.kwargs.adam_learning_rate``, at that peak rate on the same schedule). `describe_rules` is the table the
trainer prints at startup.

``m3_paper`` is Algorithm 1 literally: `nl_jax.optim.m3` with ``accumulator="sum"`` (running
sums, no bias correction), ``denominator_guard="none"`` (the element-wise division by
``sqrt(V) + eps``), ``width_scaling=False`` and the paper's Newton-Schulz (it defers to Muon:
the quintic (3.4445, -4.7750, 2.0315), 5 steps); ``m3`` is the tuned default (see the `m3`
docstring for every difference and why).

DGD needs the inputs of the projections: `needs_layer_inputs` tells the train step to record
them in the loss's own forward pass (`nl_jax.layers.projection`).
"""

import inspect
from typing import Any

import jax
import optax

from nl_jax import optim
from nl_jax.optim import partition


def _warmup(lr: float, warmup: int) -> optax.Schedule:
  return optax.linear_schedule(0.0, lr, max(warmup, 1))


def _warmup_rsqrt(lr: float, warmup: int, decay: int, end: float) -> optax.Schedule:
  del decay, end

  def rsqrt(step):
    step = jax.numpy.maximum(step, 1)
    return lr * jax.numpy.minimum(step / max(warmup, 1), (max(warmup, 1) / step) ** 0.5)
  return rsqrt


# name -> schedule(lr, warmup_steps, decay_steps, end_lr); the keys are `SCHEDULES`.
_SCHEDULES = {
    "constant": lambda lr, warmup, decay, end: optax.constant_schedule(lr),
    "warmup_constant": lambda lr, warmup, decay, end: optax.join_schedules(
        [_warmup(lr, warmup), optax.constant_schedule(lr)], [warmup]),
    "warmup_cosine": lambda lr, warmup, decay, end: optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(decay, warmup + 1), end),
    "warmup_linear": lambda lr, warmup, decay, end: optax.join_schedules(
        [_warmup(lr, warmup), optax.linear_schedule(lr, end, max(decay - warmup, 1))], [warmup]),
    "warmup_rsqrt": _warmup_rsqrt,
}
SCHEDULES = tuple(_SCHEDULES)


def make_schedule(opt_cfg: Any, total_steps: int, peak: float | None = None) -> optax.Schedule:
  """The learning-rate schedule (``optimizer.schedule``, one of `SCHEDULES`) of the step.

  ``peak`` replaces ``optimizer.learning_rate`` (the same shape for a second rate)."""
  lr = float(opt_cfg.learning_rate if peak is None else peak)
  warmup = int(opt_cfg.warmup_steps)
  decay = int(opt_cfg.decay_steps) or int(total_steps)
  end = lr * float(opt_cfg.end_lr_fraction)
  if opt_cfg.schedule not in _SCHEDULES:
    raise ValueError(f"optimizer.schedule: unknown schedule {opt_cfg.schedule!r}")
  return _SCHEDULES[opt_cfg.schedule](lr, warmup, decay, end)


def _decay_mask(params):
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


_FUNCTIONS = {
    "adamw": lambda: optax.adamw,
    "adam": lambda: optax.adam,
    "sgd": lambda: optax.sgd,
    "lion": lambda: optax.lion,
    "adafactor": lambda: optax.adafactor,
    "muon": lambda: optax.contrib.muon,
    "m3": lambda: optim.m3,
    "m3_paper": lambda: optim.m3,
    "dgd": lambda: optim.dgd,
    "delta_momentum": lambda: optim.delta_momentum,
    "deep_momentum": lambda: optim.deep_momentum,
}
# The valid ``optimizer.name`` values (`nl_jax.train.config` checks against this list).
OPTIMIZERS = tuple(_FUNCTIONS)

# config field -> the optimizer argument names it feeds (first one the signature has).
_COMMON = {
    "b1": ("b1",),
    "b2": ("b2",),
    "eps": ("eps",),
    "momentum": ("momentum",),
}


# The literal Algorithm 1 (see the module docstring); kwargs may still override each.
M3_PAPER = dict(accumulator="sum", denominator_guard="none", width_scaling=False,
                ns_coeffs="muon", ns_steps=5, nesterov=False, use_second_moment=True)
MATRIX_OPTIMIZERS = ("muon", "m3", "m3_paper")


def needs_layer_inputs(opt_cfg: Any) -> bool:
  return opt_cfg.name == "dgd"


def rule_names(name: str, kwargs: Any = None) -> dict[str, str]:
  """Assignment kind -> the rule ``name`` (with ``optimizer.kwargs``) gives it (module doc)."""
  if name in MATRIX_OPTIMIZERS:
    return {"projection": name, "initial_state": name, "other": "adamw"}
  if name == "dgd":
    rest = "adamw" if (kwargs or {}).get("adam_learning_rate") is not None else "sgd"
    return {"projection": "dgd", "initial_state": rest, "other": rest}
  return {"projection": name, "initial_state": name, "other": name}


def rule_assignment(abstract_params: Any, sharding_cfg: Any) -> Any:
  """Tree of `nl_jax.optim.partition.Assignment` from ``config.sharding.param_rules``."""
  return partition.assign(abstract_params, [tuple(r) for r in sharding_cfg.param_rules])


def describe_rules(opt_cfg: Any, assignments: Any) -> str:
  """The startup table: parameter path, shape -> rule -> matrix shape (or why not a matrix)."""
  return partition.describe(assignments, rule_names(opt_cfg.name, _kwargs(opt_cfg)))


def _kwargs(opt_cfg: Any) -> dict[str, Any]:
  return opt_cfg.kwargs.to_dict() if hasattr(opt_cfg.kwargs, "to_dict") else dict(opt_cfg.kwargs)


def dgd_paths(assignments: Any) -> list[str]:
  """Paths of the parameters DGD handles with layer inputs (the projections)."""
  return [a.path for a in jax.tree.leaves(assignments, is_leaf=partition.is_assignment)
          if a.kind == "projection"]


def make_optimizer(opt_cfg: Any, total_steps: int, *, assignments: Any = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``(optimizer, schedule)`` from ``config.optimizer``.

  Args:
    opt_cfg: ``config.optimizer``.
    total_steps: ``train.steps`` (for decaying schedules).
    assignments: `rule_assignment` of the parameters; for ``muon``/``m3``/``m3_paper``/``dgd``
      it chooses the matrices and their matrix views (None: the optimizers' own defaults,
      every 2-D leaf is a matrix).

  Raises:
    ValueError: unknown optimizer, or a ``kwargs`` key the optimizer does not accept.
  """
  if opt_cfg.name not in _FUNCTIONS:
    raise ValueError(f"optimizer.name: unknown optimizer {opt_cfg.name!r}; choose one of "
                     f"{sorted(_FUNCTIONS)}")
  fn = _FUNCTIONS[opt_cfg.name]()
  schedule = make_schedule(opt_cfg, total_steps)
  params = inspect.signature(fn).parameters
  kwargs: dict[str, Any] = {"learning_rate": schedule}
  for field, names in _COMMON.items():
    for n in names:
      if n in params:
        kwargs[n] = opt_cfg[field]
        break
  wd = float(opt_cfg.weight_decay)
  if "weight_decay" in params:
    kwargs["weight_decay"] = wd
    mask_name = "mask" if "mask" in params else "weight_decay_mask"
    if mask_name in params:
      kwargs[mask_name] = _decay_mask
  elif "weight_decay_rate" in params and wd:
    kwargs["weight_decay_rate"] = wd
    kwargs["weight_decay_mask"] = _decay_mask
  extra = _kwargs(opt_cfg)
  unknown = sorted(set(extra) - set(params))
  if unknown:
    raise ValueError(f"optimizer.kwargs: {unknown} are not arguments of {opt_cfg.name}; "
                     f"valid: {sorted(params)}")
  if opt_cfg.name == "m3_paper":
    kwargs.update(M3_PAPER)
  if assignments is not None:
    if opt_cfg.name == "muon":
      kwargs["muon_weight_dimension_numbers"] = partition.dimension_numbers(
          assignments, factory=optax.contrib.MuonDimensionNumbers)
    elif opt_cfg.name in ("m3", "m3_paper"):
      kwargs["weight_dimension_numbers"] = partition.dimension_numbers(assignments)
    elif opt_cfg.name == "dgd":
      kwargs["weight_dimension_numbers"] = partition.dimension_numbers(
          assignments, kinds=("projection",))
  if opt_cfg.name == "dgd" and isinstance(extra.get("adam_learning_rate"), (int, float)):
    # AdamW on the non-projections follows the same schedule shape (warmup, decay, end
    # fraction) with its own peak rate.
    extra["adam_learning_rate"] = make_schedule(opt_cfg, total_steps,
                                                peak=float(extra["adam_learning_rate"]))
    # ... and the config's AdamW moments (optimizer.b1, b2, eps), unless kwargs set them.
    for field in ("b1", "b2", "eps"):
      extra.setdefault(f"adam_{field}", float(opt_cfg[field]))
  kwargs.update(extra)
  tx = fn(**kwargs)
  if opt_cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(float(opt_cfg.grad_clip)), tx)
  return tx, schedule
