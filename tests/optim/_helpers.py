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
"""Shared fixtures of the optimizer tests: the optimizer registry and tiny problems."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nl_jax import optim


@dataclasses.dataclass(frozen=True)
class OptSpec:
  """How to build and drive one optimizer alias in the shared battery."""
  name: str
  factory: Callable[..., Any]
  kwargs: dict[str, Any]
  lr: float
  static_args: tuple[str, ...] = ()
  needs_inputs: bool = False
  # False where the learning rate is an inner step and a retained memory still moves the
  # weights at learning_rate = 0 (deep_momentum_gd, eq. 50 literally).
  zero_lr_silences: bool = True
  # Why the auto-mode (slow) sharding check does not apply, or None.
  auto_sharding_skip: str | None = None

  def make(self, learning_rate=None, **overrides):
    kw = dict(self.kwargs, **overrides)
    return self.factory(self.lr if learning_rate is None else learning_rate, **kw)

  def make_injected(self, learning_rate=None):
    return optax.inject_hyperparams(self.factory, static_args=self.static_args)(
        learning_rate=self.lr if learning_rate is None else learning_rate, **self.kwargs)


SPECS = [
    OptSpec("m3_ema", optim.m3, dict(f=3, accumulator="ema"), 0.02, ("f", "ns_steps")),
    OptSpec("m3_sum", optim.m3, dict(f=3, accumulator="sum"), 0.02, ("f", "ns_steps")),
    OptSpec("dgd", optim.dgd, {}, 0.3, needs_inputs=True),
    OptSpec("delta_momentum", optim.delta_momentum, {}, 0.03),
    OptSpec("deep_momentum", optim.deep_momentum, {}, 0.03, ("hidden", "seed")),
    OptSpec("preconditioned_momentum", optim.preconditioned_momentum,
            dict(preconditioner=optim.LearnedDiagonal(inner_lr=0.1)), 0.01),
    OptSpec("preconditioned_momentum_low_rank", optim.preconditioned_momentum,
            dict(preconditioner=optim.LearnedLowRank(rank=2, inner_lr=0.1)), 0.01,
            auto_sharding_skip="the (in, rank) factors have no parameter to inherit a sharding "
            "from; in auto mode XLA reshards them after an update (pass out_shardings)"),
    OptSpec("feature_momentum_learned", optim.feature_momentum,
            dict(feature_map=optim.Polynomial((0.0, 1.0, 0.0), normalize=True,
                                              learned=True)), 0.03),
    OptSpec("delta_momentum_p", optim.delta_momentum_p,
            dict(preconditioner=optim.LearnedDiagonal(inner_lr=0.1)), 0.01),
    OptSpec("nonlinear_momentum", optim.nonlinear_momentum, {}, 0.02, ("ns_steps",)),
    OptSpec("deep_momentum_gd", optim.deep_momentum_gd, {}, 0.03, ("hidden", "seed"),
            zero_lr_silences=False),
]
SPEC_IDS = [s.name for s in SPECS]


def update(spec: OptSpec, tx, grads, state, params, inputs=None):
  """One optimizer update, passing the layer inputs to the optimizers that use them."""
  if spec.needs_inputs:
    return tx.update(grads, state, params, layer_inputs=inputs)
  return tx.update(grads, state, params)


# Toy quadratic: linear regression with a realisable teacher.
def quadratic_problem(seed: int = 0, d_in: int = 16, d_out: int = 8, n: int = 64):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k1, (n, d_in))
  w_star = jax.random.normal(k2, (d_in, d_out)) / jnp.sqrt(d_in)
  b_star = jax.random.normal(k3, (d_out,))
  y = x @ w_star + b_star
  params = {"w": jnp.zeros((d_in, d_out)), "b": jnp.zeros((d_out,))}

  def loss(p):
    return jnp.mean(jnp.sum(jnp.square(x @ p["w"] + p["b"] - y), axis=-1))

  inputs = {"w": x, "b": None}
  return params, loss, lambda p: inputs


# Small MLP regression (two layers, tanh) on a random teacher MLP.
def mlp_problem(seed: int = 0, d_in: int = 8, hidden: int = 32, n: int = 128):
  ks = jax.random.split(jax.random.key(seed), 6)
  x = jax.random.normal(ks[0], (n, d_in))
  teacher_w1 = jax.random.normal(ks[1], (d_in, 16)) / jnp.sqrt(d_in)
  teacher_w2 = jax.random.normal(ks[2], (16, 1))
  y = jnp.tanh(x @ teacher_w1) @ teacher_w2
  params = {
      "w1": jax.random.normal(ks[3], (d_in, hidden)) / jnp.sqrt(d_in),
      "b1": jnp.zeros((hidden,)),
      "w2": jax.random.normal(ks[4], (hidden, 1)) / jnp.sqrt(hidden),
      "b2": jnp.zeros((1,)),
  }

  def hidden_act(p):
    return jnp.tanh(x @ p["w1"] + p["b1"])

  def loss(p):
    return jnp.mean(jnp.square(hidden_act(p) @ p["w2"] + p["b2"] - y))

  def inputs(p):
    return {"w1": x, "b1": None, "w2": hidden_act(p), "b2": None}

  return params, loss, inputs


def train(spec: OptSpec, tx, params, loss, inputs_fn, steps: int):
  """Runs `steps` jitted optimizer steps; returns (initial loss, final loss, params, state)."""
  state = jax.jit(tx.init)(params)

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = update(spec, tx, g, s, p, inputs_fn(p))
    return optax.apply_updates(p, u), s

  loss_jit = jax.jit(loss)  # Eager evaluation would compile every primitive separately.
  l0 = float(loss_jit(params))
  for _ in range(steps):
    params, state = step(params, state)
  return l0, float(loss_jit(params)), params, state
