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
r"""Levels you can declare: a nested system (paper Definitions 2-3) as plain data.

A nested system is a tuple of `Level`\ s. Each level owns a state (any pytree: weights, a
momentum, a fast memory), and declares

* its **context flow**: ``context(states, item) -> c``, what it learns from at one tick of the
  stream (``item``), computed from the other levels' states (e.g. a gradient of the task loss
  at the current weights, or another level's output);
* its **update frequency**: it updates once every ``every`` ticks, on the ``reduce`` (sum,
  mean or last) of the contexts gathered since its last update (eq. 71's chunk sum);
* its **objective and inner optimizer**: ``update(state, c) -> state``, one step of whatever
  solves the level's problem. `gradient_level` builds it from an objective and an optax
  transformation; a closed-form solver (Adam, appendix B) is an ``update`` too.

`NestedSystem` runs the levels in their declared order inside every tick. A level's context
sees the states as updated so far in the tick (Definition 2: a level that needs another's
state at time ``t`` comes after it), or, with ``reads="tick_start"``, the states at the start of
the tick (levels that share one forward pass, like the blocks of a CMS). Nothing is hidden:
`SystemState` is a pytree of every level's state, the pending contexts and the tick, and
`NestedSystem.step` is a pure function (jit it, scan it, vmap it).

Tested instances (``tests/levels/test_levels.py``): momentum as a one-level memory over
gradients under a weights level equals ``optax.sgd(momentum=...)``; Adam as the closed-form
optimum of an element-wise L2 memory over gradients equals ``optax.adam``; a two-level
CMS-style chain (chunk sizes 1 and 4) equals a plain loop of eq. 71; M3 (Algorithm 1, running
sums) equals ``nl_jax.optim.scale_by_m3``; a Hope-like block (a fast DGD matrix memory from
``nl_jax.memory`` whose keys, values, queries and learning rate come from a slow projection
level updated every 8 tokens, followed by a CMS MLP level updated every 4 tokens) equals a plain
loop with the DGD write spelled out. The Hope-like block is not the self-modifying Titans of
eqs. 83-88 (its projections are a slow level, not memories with self-generated values), and the
projection gradient is first order in time (through the read and the current token's write).

Example (heavy-ball momentum as a memory over gradients, a two-level system)::

    loss = lambda w, x: jnp.sum((x @ w) ** 2)
    mom = gradient_level(
        "momentum", zeros, objective=dot_product,
        optimizer=optax.chain(optax.add_decayed_weights((1 - beta) / eta), optax.sgd(eta)),
        context=lambda s, x: jax.grad(loss)(s["weights"].params, x))
    weights = gradient_level(
        "weights", w0, objective=dot_product, optimizer=optax.sgd(1.0),
        context=lambda s, x: jax.tree.map(jnp.negative, s["momentum"].params))
    system = NestedSystem((mom, weights))
    state = system.run(system.init(xs[0]), xs)          # == optax.sgd(eta, momentum=beta)
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

REDUCES = ("sum", "mean", "last")
READS = ("current", "tick_start")


@dataclasses.dataclass(frozen=True)
class Level:
  """One level of a nested system.

  Attributes:
    name: unique name; the key of this level's state in `SystemState.levels`.
    init: the level's initial state (a pytree).
    context: ``(states, item) -> c``: the level's context item at one tick, from the mapping
      of level names to states and the stream item.
    update: ``(state, c) -> state``: one step of the level's inner optimizer on its
      objective, given the reduced context.
    every: update period in ticks (>= 1); the level updates at ticks ``every - 1``,
      ``2 every - 1``, ... (0-indexed), i.e. after each complete chunk of ``every`` items.
    reduce: how the contexts of a chunk are combined: ``"sum"``, ``"mean"`` or ``"last"``.
    reads: ``"current"`` (states as updated so far in this tick) or ``"tick_start"``.
  """
  name: str
  init: Any
  context: Callable[[Mapping[str, Any], Any], Any]
  update: Callable[[Any, Any], Any]
  every: int = 1
  reduce: str = "sum"
  reads: str = "current"

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"Level.name must be a non-empty string, got name={self.name!r}.")
    if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
      raise ValueError(f"Level {self.name!r}: every must be a positive int, got "
                       f"every={self.every!r}.")
    if self.reduce not in REDUCES:
      raise ValueError(f"Level {self.name!r}: reduce={self.reduce!r} is not one of {REDUCES}.")
    if self.reads not in READS:
      raise ValueError(f"Level {self.name!r}: reads={self.reads!r} is not one of {READS}.")
    if not callable(self.context) or not callable(self.update):
      raise ValueError(f"Level {self.name!r}: context and update must be callables.")


class SystemState(NamedTuple):
  """State of a `NestedSystem`.

  Attributes:
    levels: level name -> that level's state.
    pending: level name -> the contexts gathered since its last update (their sum, or the last
      one), zeros after an update.
    tick: int32 number of stream items consumed.
  """
  levels: dict[str, Any]
  pending: dict[str, Any]
  tick: jax.Array


class GradientLevelState(NamedTuple):
  """State of a `gradient_level`: the level's parameters and its optimizer's state."""
  params: Any
  opt_state: Any


def dot_product(params: Any, c: Any) -> jax.Array:
  """``<params, c>`` over matching pytrees: the objective whose gradient is the context.

  Gradient descent on it with step ``eta`` is ``params <- params - eta c`` (eq. 9: GD is a
  memory with a dot-product objective on its local surprise signal).
  """
  leaves = jax.tree.leaves(jax.tree.map(lambda p, x: jnp.sum(p * x), params, c))
  return sum(leaves, jnp.zeros([], jnp.result_type(*leaves) if leaves else jnp.float32))


def gradient_level(name: str, params: Any, *, objective: Callable[[Any, Any], jax.Array],
                   optimizer: optax.GradientTransformation,
                   context: Callable[[Mapping[str, Any], Any], Any], every: int = 1,
                   reduce: str = "sum", reads: str = "current") -> Level:
  r"""A level whose update is one optimizer step on ``objective(params, c)``.

  .. math::
    g = \nabla_\theta \mathcal{L}(\theta; c), \qquad
    (u, s) = \mathrm{optimizer.update}(g, s, \theta), \qquad \theta \leftarrow \theta + u .

  The state is `GradientLevelState` ``(params, optimizer.init(params))``.

  Args:
    name: level name.
    params: initial parameters.
    objective: ``(params, c) -> scalar``.
    optimizer: the level's inner optimizer (any optax transformation).
    context: see `Level`.
    every, reduce, reads: see `Level`.

  Returns:
    A `Level`.
  """
  def update(state: GradientLevelState, c: Any) -> GradientLevelState:
    grads = jax.grad(objective)(state.params, c)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return GradientLevelState(optax.apply_updates(state.params, updates), opt_state)

  return Level(name=name, init=GradientLevelState(params, optimizer.init(params)),
               context=context, update=update, every=every, reduce=reduce, reads=reads)


@dataclasses.dataclass(frozen=True)
class NestedSystem:
  """Levels run in their declared order at every tick of a stream.

  Attributes:
    levels: the levels; names must be unique.
  """
  levels: tuple[Level, ...]

  def __post_init__(self):
    object.__setattr__(self, "levels", tuple(self.levels))
    if not self.levels:
      raise ValueError("NestedSystem.levels must hold at least one Level.")
    names = [lv.name for lv in self.levels]
    for lv in self.levels:
      if not isinstance(lv, Level):
        raise ValueError(f"NestedSystem.levels must hold Level objects, got {type(lv).__name__}.")
    if len(set(names)) != len(names):
      raise ValueError(f"NestedSystem: level names must be unique, got {names}.")

  def init(self, example_item: Any) -> SystemState:
    """Initial states; ``example_item`` (one stream item) fixes the contexts' shapes."""
    states = {lv.name: lv.init for lv in self.levels}
    pending = {}
    for lv in self.levels:
      shapes = jax.eval_shape(lv.context, states, example_item)
      pending[lv.name] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return SystemState(states, pending, jnp.zeros([], jnp.int32))

  def step(self, state: SystemState, item: Any) -> SystemState:
    """Consumes one stream item: every level gathers its context, due levels update."""
    start = dict(state.levels)
    states = dict(state.levels)
    pending = dict(state.pending)
    for lv in self.levels:
      c = lv.context(start if lv.reads == "tick_start" else states, item)
      if lv.reduce == "last":
        acc = c
      else:
        acc = jax.tree.map(jnp.add, pending[lv.name], c)
      if lv.every == 1:
        states[lv.name] = lv.update(states[lv.name], acc)  # The mean of one item is the item.
        pending[lv.name] = jax.tree.map(jnp.zeros_like, acc)
        continue
      due = (state.tick + 1) % lv.every == 0
      reduced = jax.tree.map(lambda a: a / lv.every, acc) if lv.reduce == "mean" else acc

      def fire(s, reduced=reduced, acc=acc, lv=lv):
        return lv.update(s, reduced), jax.tree.map(jnp.zeros_like, acc)

      def wait(s, acc=acc):
        return s, acc

      states[lv.name], pending[lv.name] = jax.lax.cond(due, fire, wait, states[lv.name])
    return SystemState(states, pending, state.tick + 1)

  def run(self, state: SystemState, stream: Any) -> SystemState:
    """`step` over the leading axis of ``stream`` (a pytree of stacked items) with lax.scan."""
    def body(s, item):
      return self.step(s, item), None

    state, _ = jax.lax.scan(body, state, stream)
    return state
