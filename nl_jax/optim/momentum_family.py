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
"""The momentum family of paper section 4.4 (eqs. 46-52) as optax transformations.

Every member is a memory over gradients (spec 1.3): a state trained, one step per optimizer
step, on an inner objective whose keys are the gradients.

* `scale_by_expressive_momentum`: the common core,
  ``mu_t = alpha mu_{t-1} - beta E_t mu_{t-1} + P_t(phi_t(g_t))`` (eqs. 47, 49, 51).
* `preconditioned_momentum` (eq. 46-47), `feature_momentum` (eq. 51) and `delta_momentum_p`
  (eq. 48-49 with ``P_i`` and the unnormalised literal option): aliases of the core.
* `scale_by_nonlinear_momentum` / `nonlinear_momentum` (eq. 52): ``W <- W - lr sigma(mu)``;
  ``sigma`` = Newton-Schulz is Muon.
* `scale_by_deep_momentum_gd` / `deep_momentum_gd` (eq. 50 literally): an MLP memory over
  gradients trained by gradient descent on its dot-product inner objective; the weights move by
  the memory's output.

Learned pieces (the diagonal preconditioner, the polynomial feature map) are themselves small
memories with an L2 inner objective that maps the gradient to a chosen target (eqs. 39-41);
they are part of the optimizer state.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nl_jax.optim import _common
from nl_jax.optim import newton_schulz

_TARGETS = ("sign", "identity")


def _target(name_or_fn: Any, x: jax.Array) -> jax.Array:
  if callable(name_or_fn):
    return name_or_fn(x)
  if name_or_fn == "sign":
    return jnp.sign(x)
  return x


def _check_target(owner: str, target: Any) -> None:
  if not callable(target) and target not in _TARGETS:
    raise ValueError(f"{owner}: target={target!r} must be a callable or one of {_TARGETS}.")


@dataclasses.dataclass(frozen=True)
class LearnedDiagonal:
  r"""A learned element-wise preconditioner ``P_t(x) = d_t * x`` (a memory, eqs. 39-41).

  Before it is applied at step ``t`` the diagonal ``d`` takes one proximal gradient step (the
  DGD closed form of eq. 56, element-wise, stable for every gradient scale) on the element-wise
  L2 objective that maps the incoming features ``x`` to ``target(x)``:

  .. math::
    d_t = \arg\min_d \tfrac12 (d\,x_t - \tau(x_t))^2 + \tfrac{1}{2\zeta}(d - d_{t-1})^2
        = d_{t-1} - \frac{\zeta\,(d_{t-1} x_t - \tau(x_t))\,x_t}{1 + \zeta x_t^2}.

  With ``target="sign"`` the memory learns ``d ~ sum |x| / sum x^2`` per entry (a 1/scale
  preconditioner in the spirit of appendix B); ``"identity"`` keeps ``d`` near 1.

  Attributes:
    inner_lr: the step ``zeta`` (>= 0); 0 freezes ``d`` at ``init``.
    init: initial value of every entry of ``d``.
    target: ``"sign"``, ``"identity"`` or a callable ``x -> target``.
  """
  inner_lr: float = 0.1
  init: float = 1.0
  target: Any = "sign"

  def __post_init__(self):
    _common.check_range("LearnedDiagonal.inner_lr", self.inner_lr, low=0.0)
    _check_target("LearnedDiagonal", self.target)


@dataclasses.dataclass(frozen=True)
class Polynomial:
  r"""Element-wise polynomial feature map (eq. 51), fixed or learned.

  .. math::
    \phi_c(x) = s \sum_{k=0}^{K} c_k (x / s)^k, \qquad
    s = \mathrm{rms}(x) + \epsilon \text{ if normalize else } 1.

  With ``learned=True`` the coefficients are a memory: before use at step ``t`` they take one
  normalised gradient step on ``L(c) = 1/2 mean_j (sum_k c_k xhat_j^k - target(xhat)_j)^2``
  (``xhat = x / s``), of size ``inner_lr / (mean_j sum_k xhat_j^{2k} + eps)`` (normalised LMS:
  stable for ``inner_lr`` in (0, 2)). Caution: a least-squares fit of ``sign`` by an odd
  polynomial of degree >= 3 has a negative leading coefficient, so beyond its last root the
  features point against the gradient; with ``(0, 1, 0, 0.1)`` learned, the optimizer battery's
  quadratic diverged (loss 14.0 -> 2.7e3 in 150 steps at lr 0.03), while the learned affine
  map ``(0, 1, 0)`` converged. Use degree <= 2 with ``"sign"``, or a target of your own.

  Attributes:
    coeffs: ``(c_0, ..., c_K)``; ``(0, 1)`` is the identity map.
    normalize: apply the polynomial to ``x / s`` and rescale by ``s`` (scale-equivariant).
    learned: learn the coefficients in-context (see above).
    inner_lr: the normalised step (>= 0).
    target: ``"sign"``, ``"identity"`` or a callable.
    eps: added to the rms (> 0).
  """
  coeffs: tuple[float, ...] = (0.0, 1.0)
  normalize: bool = False
  learned: bool = False
  inner_lr: float = 0.1
  target: Any = "sign"
  eps: float = 1e-8

  def __post_init__(self):
    c = np.asarray(self.coeffs, dtype=np.float64)
    if c.ndim != 1 or c.size < 1 or not np.all(np.isfinite(c)):
      raise ValueError(f"Polynomial: coeffs must be a non-empty 1-D sequence of finite numbers, "
                       f"got coeffs={self.coeffs!r}.")
    _common.check_range("Polynomial.inner_lr", self.inner_lr, low=0.0)
    _common.check_range("Polynomial.eps", self.eps, low=0.0, low_inclusive=False)
    _check_target("Polynomial", self.target)

  def scale(self, x: jax.Array) -> jax.Array:
    if not self.normalize:
      return jnp.ones([], x.dtype)
    return jnp.sqrt(jnp.mean(jnp.square(x))) + self.eps

  def apply(self, c: jax.Array, x: jax.Array) -> jax.Array:
    s = self.scale(x)
    xh = x / s
    powers = jnp.stack([xh**k for k in range(c.shape[0])], axis=-1)
    return s * (powers @ c)

  def learn(self, c: jax.Array, x: jax.Array) -> jax.Array:
    xh = x / self.scale(x)
    powers = [xh**k for k in range(c.shape[0])]
    resid = sum(ck * p for ck, p in zip(c, powers)) - _target(self.target, xh)
    grad = jnp.stack([jnp.mean(resid * p) for p in powers])
    norm = jnp.mean(sum(jnp.square(p) for p in powers))
    return c - self.inner_lr * grad / (norm + self.eps)


@dataclasses.dataclass(frozen=True)
class LearnedLowRank:
  r"""A learned identity-plus-low-rank preconditioner on the input side (a memory, eqs. 39-41).

  For a matrix leaf ``x`` of shape ``(in, out)``, ``P_t(x) = x + U_t V_t^T x`` with
  ``U, V`` of shape ``(in, rank)``; other leaves use ``P = I``. Before it is applied at step
  ``t``, ``(U, V)`` take one simultaneous gradient step on

  .. math::
    \mathcal{L}(U, V) = \tfrac12 \|x + U V^\top x - \tau(x)\|_F^2, \qquad
    U \leftarrow U - s R (V^\top x)^\top, \quad V \leftarrow V - s\, x R^\top U,

  with ``R = x + U V^T x - tau(x)`` and the normalised step ``s = zeta / (||x||_F^2 + eps)``.
  ``target="sign"`` is ``tau(x) = rms(x) sign(x)`` (the sign pattern at the scale of ``x``),
  ``"identity"`` keeps ``P`` at ``I``. ``U`` starts at 0 (so ``P_0 = I``) and ``V`` at
  ``init_scale * N(0, 1/in)``. On a mesh in explicit mode the factors stay replicated; in auto
  mode XLA may reshard them after an update (they have no parameter to inherit a sharding
  from), so pass ``out_shardings`` for the state.

  Attributes:
    rank: the rank (>= 1).
    inner_lr: the normalised step ``zeta`` (>= 0).
    init_scale: scale of ``V`` at init (>= 0).
    target: ``"sign"``, ``"identity"`` or a callable.
    seed: seed of ``V``.
    eps: added to ``||x||_F^2`` (> 0).
  """
  rank: int = 2
  inner_lr: float = 0.1
  init_scale: float = 1.0
  target: Any = "sign"
  seed: int = 0
  eps: float = 1e-12

  def __post_init__(self):
    _common.static_int("LearnedLowRank.rank", self.rank)
    _common.static_int("LearnedLowRank.seed", self.seed, low=0)
    _common.check_range("LearnedLowRank.inner_lr", self.inner_lr, low=0.0)
    _common.check_range("LearnedLowRank.init_scale", self.init_scale, low=0.0)
    _common.check_range("LearnedLowRank.eps", self.eps, low=0.0, low_inclusive=False)
    _check_target("LearnedLowRank", self.target)

  def init(self, p: Any, key: jax.Array) -> Any:
    if len(p.shape) != 2:
      return ()
    dt = _state_dtype(p)
    v = self.init_scale * jax.random.normal(key, (p.shape[0], self.rank), dt)
    return (jnp.zeros((p.shape[0], self.rank), dt), v / jnp.sqrt(p.shape[0]).astype(dt))

  def learn_and_apply(self, uv: Any, x: jax.Array) -> tuple[Any, jax.Array]:
    if x.ndim != 2:
      return uv, x
    u, v = uv
    rep = _common.replicated_like(x)
    if callable(self.target) or self.target == "identity":
      tau = _target(self.target, x)
    else:
      tau = jnp.sqrt(jnp.mean(jnp.square(x))) * jnp.sign(x)
    vx = v.T @ x  # (rank, out)
    resid = x + u @ vx - tau
    s = self.inner_lr / (jnp.sum(jnp.square(x)) + self.eps)
    grad_u = jnp.matmul(resid, vx.T, out_sharding=rep)
    grad_v = jnp.matmul(x, jnp.matmul(resid.T, u), out_sharding=rep)
    u, v = u - s * grad_u, v - s * grad_v
    return (u, v), x + u @ (v.T @ x)


def _check_preconditioner(p: Any) -> None:
  if p is None or callable(p) or isinstance(p, (LearnedDiagonal, LearnedLowRank)):
    return
  raise ValueError(f"preconditioner must be None, a callable x -> P(x), a LearnedDiagonal or a "
                   f"LearnedLowRank, got preconditioner={p!r}.")


def _check_feature_map(f: Any) -> None:
  if f is None or callable(f) or isinstance(f, Polynomial):
    return
  raise ValueError(f"feature_map must be None, a callable g -> phi(g) or a Polynomial, got "
                   f"feature_map={f!r}.")


class ScaleByExpressiveMomentumState(NamedTuple):
  """State of `scale_by_expressive_momentum`.

  Attributes:
    count: step count (int32).
    mu: the momentum memory (float32 unless ``mu_dtype``).
    precond: per-leaf diagonal ``d`` of a `LearnedDiagonal` (float32, or float64 for float64
      parameters), ``(U, V)`` of a `LearnedLowRank` (``()`` for non-matrix leaves), else
      ``()`` per leaf.
    features: per-leaf coefficients of a learned `Polynomial` (same dtype rule), else ``()``.
  """
  count: jax.Array
  mu: optax.Updates
  precond: Any
  features: Any


def _state_dtype(p: Any) -> Any:
  """Float32 state for bf16/f16/f32 parameters; float64 for float64 ones."""
  return jnp.promote_types(p.dtype, jnp.float32)


def _erase(mu: jax.Array, g: jax.Array, beta: Any, normalize: bool, eps: Any) -> jax.Array:
  """``beta k k^T mu`` on the input side of a (in, out) kernel, ``k = g`` or ``g / ||g||``."""
  k = g / (jnp.sqrt(jnp.sum(jnp.square(g))) + eps) if normalize else g
  if g.ndim == 2:
    small = jnp.matmul(k.T, mu, out_sharding=_common.replicated_like(mu))  # (out, out)
    return beta * (k @ small)
  return beta * k * jnp.sum(k * mu)


def scale_by_expressive_momentum(alpha: float = 0.9, beta: float = 0.0, *,
                                 preconditioner: Any = None, feature_map: Any = None,
                                 normalize_erase: bool = True, eps: float = 1e-8,
                                 mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Momentum as a memory over gradients with value ``P_t``, features ``phi`` and an erase.

  For every leaf (a ``(in, out)`` kernel, or any other array seen as a flat vector):

  .. math::
    \mu_t = \alpha \mu_{t-1} - \beta\, k_t k_t^\top \mu_{t-1} + P_t\big(\phi_t(g_t)\big),
    \qquad k_t = g_t / (\|g_t\|_F + \epsilon) \text{ (or } g_t \text{ unnormalised)},

  and the output is ``mu_t`` (the aliases multiply it by ``-learning_rate``, so with a
  constant rate ``eta`` the paper's ``m_t = -eta mu_t`` and ``W_{t+1} = W_t + m_{t+1}``).

  * ``beta = 0``: eq. 47 (``m = alpha m - eta P g``: the memory of eq. 46 maps gradients to
    ``P_i`` under a dot-product objective) and, with ``phi``, eq. 51.
  * ``beta > 0``: eq. 49 (Delta Momentum, the L2 objective of eq. 48). The erase acts on the
    input side, i.e. the paper's right-multiplication ``m (alpha - g^T g)`` of an
    ``(out, in)`` matrix. ``normalize_erase=False, beta=1`` is eq. 49 exactly as printed
    (no step size on ``g^T g``, unnormalised gradient); the default normalises the key
    (spec section 3, the project's reading).

  ``P_t`` is the identity (None), a stateless callable ``x -> P(x)`` applied per leaf (e.g. a
  fixed low-rank or diagonal matrix), or a `LearnedDiagonal` / `LearnedLowRank` memory;
  ``phi`` is the identity, a callable, or a `Polynomial` (fixed or learned). Under
  `optax.inject_hyperparams` name a callable ``preconditioner`` / ``feature_map`` in
  ``static_args``. Learned pieces take their inner step on the current gradient before they
  are applied.

  Args:
    alpha: retention in [0, 1].
    beta: erase step in [0, 1] (0: no erase).
    preconditioner: None, a callable, a `LearnedDiagonal` or a `LearnedLowRank`.
    feature_map: None, a callable, or a `Polynomial`.
    normalize_erase: normalise the erase key (True) or use the raw gradient (eq. 49 as printed).
    eps: added to ``||g||_F`` in the normalised erase (> 0).
    mu_dtype: dtype of the momentum (default: the parameter dtype).

  Returns:
    An `optax.GradientTransformation` whose state is a `ScaleByExpressiveMomentumState`.

  Raises:
    ValueError: hyperparameters out of range, unknown preconditioner or feature map.
  """
  _common.check_range("alpha", alpha, low=0.0, high=1.0)
  _common.check_range("beta", beta, low=0.0, high=1.0)
  _common.check_range("eps", eps, low=0.0, low_inclusive=False)
  _check_preconditioner(preconditioner)
  _check_feature_map(feature_map)
  learned_p = isinstance(preconditioner, LearnedDiagonal)
  low_rank = isinstance(preconditioner, LearnedLowRank)
  learned_f = isinstance(feature_map, Polynomial) and feature_map.learned

  def init_fn(params):
    mu = jax.tree.map(lambda p: _common.zeros_like(p, mu_dtype), params)
    if learned_p:
      precond = jax.tree.map(
          lambda p: _common.zeros_like(p, _state_dtype(p)) + preconditioner.init, params)
    elif low_rank:
      leaves, treedef = jax.tree.flatten(params)
      keys = jax.random.split(jax.random.key(preconditioner.seed), max(len(leaves), 1))
      precond = jax.tree.unflatten(
          treedef, [preconditioner.init(p, k) for p, k in zip(leaves, keys, strict=False)])
    else:
      precond = jax.tree.map(lambda _: (), params)
    if learned_f:
      features = jax.tree.map(
          lambda p: jnp.asarray(feature_map.coeffs, _state_dtype(p)), params)
    else:
      features = jax.tree.map(lambda _: (), params)
    return ScaleByExpressiveMomentumState(jnp.zeros([], jnp.int32), mu, precond, features)

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    mus = treedef.flatten_up_to(state.mu)
    ds = treedef.flatten_up_to(state.precond)
    cs = treedef.flatten_up_to(state.features)
    new_mu, new_d, new_c, out = [], [], [], []
    for g, mu, d, c in zip(leaves, mus, ds, cs, strict=True):
      old_d, old_c = d, c
      dtype = jnp.promote_types(g.dtype, jnp.float32)
      g32 = g.astype(dtype)
      if isinstance(feature_map, Polynomial):
        if learned_f:
          c = feature_map.learn(c.astype(dtype), g32)
          x = feature_map.apply(c, g32)
        else:
          x = feature_map.apply(jnp.asarray(feature_map.coeffs, dtype), g32)
      elif feature_map is not None:
        x = feature_map(g32).astype(dtype)
      else:
        x = g32
      if learned_p:
        d = d.astype(dtype)
        zeta = preconditioner.inner_lr
        d = d - zeta * (d * x - _target(preconditioner.target, x)) * x / (1.0 + zeta * x * x)
        write = d * x
      elif low_rank:
        d, write = preconditioner.learn_and_apply(
            jax.tree.map(lambda w: w.astype(dtype), d), x)
        d = jax.tree.map(lambda w, o: w.astype(o.dtype), d, old_d)
      elif preconditioner is not None:
        write = preconditioner(x).astype(dtype)
      else:
        write = x
      m = mu.astype(dtype)
      m_new = alpha * m + write
      if not (isinstance(beta, (int, float)) and beta == 0):
        m_new = m_new - _erase(m, g32, beta, normalize_erase, eps)
      new_mu.append(m_new.astype(mu.dtype))
      new_d.append(d.astype(old_d.dtype) if learned_p else d)
      new_c.append(c.astype(old_c.dtype) if learned_f else c)
      out.append(m_new.astype(g.dtype))
    def unflat(xs):
      return jax.tree.unflatten(treedef, xs)
    return unflat(out), ScaleByExpressiveMomentumState(
        optax.safe_increment(state.count), unflat(new_mu), unflat(new_d), unflat(new_c))

  return optax.GradientTransformation(init_fn, update_fn)


def _alias(core: optax.GradientTransformation, learning_rate: Any, weight_decay: float,
           weight_decay_mask: Any) -> optax.GradientTransformation:
  _common.check_learning_rate(learning_rate)
  _common.check_range("weight_decay", weight_decay, low=0.0)
  return optax.chain(core, optax.add_decayed_weights(weight_decay, weight_decay_mask),
                     optax.scale_by_learning_rate(learning_rate))


def preconditioned_momentum(learning_rate: optax.ScalarOrSchedule, alpha: float = 0.9,
                            preconditioner: Any = None, weight_decay: float = 0.0,
                            weight_decay_mask: Any = None,
                            mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Preconditioned momentum, eqs. 46-47.

  .. math::
    \mu_t = \alpha \mu_{t-1} + P_t(g_t), \qquad W_t = W_{t-1} - \eta_t(\mu_t + \lambda W_{t-1}),

  i.e. ``m_{i+1} = alpha m_i - eta P_i grad`` with ``m = -eta mu``: the momentum memory of
  eq. 46 maps each gradient to the value ``P_i``. ``preconditioner`` is None (heavy ball), a
  callable ``g -> P(g)`` or a `LearnedDiagonal`; see `scale_by_expressive_momentum`.

  Args:
    learning_rate: scalar or schedule (>= 0).
    alpha: retention in [0, 1].
    preconditioner: None, a callable, a `LearnedDiagonal` or a `LearnedLowRank`.
    weight_decay: decoupled weight decay (multiplied by the learning rate).
    weight_decay_mask: optional mask for the weight decay.
    mu_dtype: dtype of the momentum.

  Returns:
    An `optax.GradientTransformation`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nl_jax.optim import LearnedDiagonal, preconditioned_momentum
    >>> tx = preconditioned_momentum(0.1, preconditioner=LearnedDiagonal(inner_lr=0.5))
    >>> params = {'w': jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> u, state = tx.update({'w': jnp.array([2.0, -1.0, 0.0])}, state, params)
    >>> [round(float(v), 4) for v in u['w']]
    [-0.1333, 0.1, -0.0]
  """
  return _alias(scale_by_expressive_momentum(alpha, 0.0, preconditioner=preconditioner,
                                             mu_dtype=mu_dtype),
                learning_rate, weight_decay, weight_decay_mask)


def feature_momentum(learning_rate: optax.ScalarOrSchedule, alpha: float = 0.9,
                     feature_map: Any = Polynomial((0.0, 1.0, 0.0, 0.1), normalize=True),
                     preconditioner: Any = None, weight_decay: float = 0.0,
                     weight_decay_mask: Any = None,
                     mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Momentum over higher-order gradient features, eq. 51.

  .. math::
    \mu_t = \alpha \mu_{t-1} + P_t\big(\phi(g_t)\big), \qquad
    W_t = W_{t-1} - \eta_t(\mu_t + \lambda W_{t-1}),

  with ``phi`` a `Polynomial` (default ``xhat + 0.1 xhat^3`` on rms-normalised entries,
  rescaled), a learned `Polynomial`, or any callable.

  Args:
    learning_rate: scalar or schedule (>= 0).
    alpha: retention in [0, 1].
    feature_map: a `Polynomial` or a callable.
    preconditioner: None, a callable, a `LearnedDiagonal` or a `LearnedLowRank`.
    weight_decay: decoupled weight decay (multiplied by the learning rate).
    weight_decay_mask: optional mask for the weight decay.
    mu_dtype: dtype of the momentum.

  Returns:
    An `optax.GradientTransformation`.
  """
  return _alias(scale_by_expressive_momentum(alpha, 0.0, preconditioner=preconditioner,
                                             feature_map=feature_map, mu_dtype=mu_dtype),
                learning_rate, weight_decay, weight_decay_mask)


def delta_momentum_p(learning_rate: optax.ScalarOrSchedule, alpha: float = 0.9,
                     beta: float = 0.5, preconditioner: Any = None, normalize: bool = True,
                     eps: float = 1e-8, weight_decay: float = 0.0, weight_decay_mask: Any = None,
                     mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Delta Momentum with a value ``P_i`` (eqs. 48-49).

  .. math::
    \mu_t = (\alpha I - \beta k_t k_t^\top)\,\mu_{t-1} + P_t(g_t), \qquad
    W_t = W_{t-1} - \eta_t(\mu_t + \lambda W_{t-1}),

  ``k_t = g_t / ||g_t||`` (``normalize=True``) or ``k_t = g_t``; ``normalize=False, beta=1`` is
  eq. 49 as printed, ``m_{i+1} = m_i(alpha - g^T g) - eta P_i g``. With ``P = None`` and
  ``normalize=True`` this is `delta_momentum`.

  Args:
    learning_rate: scalar or schedule (>= 0).
    alpha: retention in [0, 1].
    beta: erase step in [0, 1].
    preconditioner: None, a callable, a `LearnedDiagonal` or a `LearnedLowRank`.
    normalize: normalise the erase key.
    eps: added to ``||g||`` (> 0).
    weight_decay: decoupled weight decay (multiplied by the learning rate).
    weight_decay_mask: optional mask for the weight decay.
    mu_dtype: dtype of the momentum.

  Returns:
    An `optax.GradientTransformation`.
  """
  return _alias(scale_by_expressive_momentum(alpha, beta, preconditioner=preconditioner,
                                             normalize_erase=normalize, eps=eps,
                                             mu_dtype=mu_dtype),
                learning_rate, weight_decay, weight_decay_mask)


# ----- eq. 52: non-linear outputs -----


class ScaleByNonlinearMomentumState(NamedTuple):
  """State of `scale_by_nonlinear_momentum`: step count and the linear momentum ``mu``."""
  count: jax.Array
  mu: optax.Updates


def scale_by_nonlinear_momentum(beta: float = 0.95, sigma: Any = "newton_schulz", *,
                                ns_coeffs: Any = "muon", ns_steps: int = 5,
                                ns_eps: float = 1e-7, width_scaling: bool = True,
                                mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""A linear momentum memory read out through a non-linearity, eq. 52.

  .. math::
    \mu_t = \beta \mu_{t-1} + g_t, \qquad u_t = \sigma(\mu_t),

  (the paper's ``m_{i+1} = alpha m_i - eta grad``, ``W_{i+1} = W_i + sigma(m_{i+1})``, with
  the learning rate applied after ``sigma`` by the alias). ``sigma="newton_schulz"``
  orthogonalises every matrix leaf (`nl_jax.optim.orthogonalize`) and, with
  ``width_scaling``, multiplies by ``sqrt(max(1, fan_out / fan_in))``: this is Muon
  (`optax.contrib.muon` with ``nesterov=False``; its EMA normalisation ``(1 - beta)`` and bias
  correction are positive scalars that the Frobenius normalisation of Newton-Schulz removes,
  up to its ``eps``). Leaves of rank < 2 pass through unchanged (``sigma = id``), as Muon
  hands them to another optimizer. A callable ``sigma`` is applied to every leaf.

  Args:
    beta: momentum retention in [0, 1).
    sigma: ``"newton_schulz"`` or a callable ``mu -> update``.
    ns_coeffs, ns_steps, ns_eps: Newton-Schulz settings (see `orthogonalize`).
    width_scaling: Muon's ``sqrt(max(1, fan_out / fan_in))`` factor (Newton-Schulz only).
    mu_dtype: dtype of the momentum.

  Returns:
    An `optax.GradientTransformation`.
  """
  _common.check_range("beta", beta, low=0.0, high=1.0, high_inclusive=False)
  if not callable(sigma) and sigma != "newton_schulz":
    raise ValueError(f"sigma must be 'newton_schulz' or a callable, got sigma={sigma!r}.")
  ns_steps = _common.static_int("ns_steps", ns_steps)
  newton_schulz.resolve_coeffs(ns_coeffs, ns_steps)

  def init_fn(params):
    return ScaleByNonlinearMomentumState(
        jnp.zeros([], jnp.int32), jax.tree.map(lambda p: _common.zeros_like(p, mu_dtype), params))

  def read(m):
    if callable(sigma):
      return sigma(m)
    if m.ndim < 2:
      return m
    o = newton_schulz.orthogonalize(m, ns_coeffs, ns_steps, ns_eps)
    if width_scaling:
      fan_in, fan_out = m.shape[-2], m.shape[-1]
      o = o * jnp.sqrt(jnp.maximum(1.0, fan_out / fan_in)).astype(o.dtype)
    return o

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: beta * m.astype(jnp.float32) + g.astype(jnp.float32),
                      updates, state.mu)
    out = jax.tree.map(lambda m, g: read(m).astype(g.dtype), mu, updates)
    mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu, state.mu)
    return out, ScaleByNonlinearMomentumState(optax.safe_increment(state.count), mu)

  return optax.GradientTransformation(init_fn, update_fn)


def nonlinear_momentum(learning_rate: optax.ScalarOrSchedule, beta: float = 0.95,
                       sigma: Any = "newton_schulz", ns_coeffs: Any = "muon", ns_steps: int = 5,
                       ns_eps: float = 1e-7, width_scaling: bool = True,
                       weight_decay: float = 0.0, weight_decay_mask: Any = None,
                       mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Momentum with a non-linear output (eq. 52); Newton-Schulz makes it Muon.

  .. math::
    \mu_t = \beta \mu_{t-1} + g_t, \qquad W_t = W_{t-1} - \eta_t(\sigma(\mu_t) + \lambda W_{t-1}).

  Args:
    learning_rate: scalar or schedule (>= 0).
    beta, sigma, ns_coeffs, ns_steps, ns_eps, width_scaling, mu_dtype: see
      `scale_by_nonlinear_momentum`.
    weight_decay: decoupled weight decay (multiplied by the learning rate).
    weight_decay_mask: optional mask for the weight decay.

  Returns:
    An `optax.GradientTransformation`.
  """
  return _alias(scale_by_nonlinear_momentum(beta, sigma, ns_coeffs=ns_coeffs, ns_steps=ns_steps,
                                            ns_eps=ns_eps, width_scaling=width_scaling,
                                            mu_dtype=mu_dtype),
                learning_rate, weight_decay, weight_decay_mask)


# ----- eq. 50 literally: Deep Momentum GD -----


class DeepMomentumMemory(NamedTuple):
  """Per-leaf parameters of the MLP memory over gradients.

  ``m(u)_j = w0_j + sum_h w2_jh act(w1_jh u_j + b1_jh)`` for every entry ``j`` of the leaf:
  ``w0`` has the leaf's shape (the linear memory of eqs. 10-13), ``w1, b1, w2`` have the leaf's
  shape plus ``(hidden,)``: each entry owns a one-input MLP (memory cost ``1 + 3 hidden`` times
  the parameters). Parameters shared across entries would sum the unbounded dot-product
  objective over every entry of the leaf, a step that grows with the leaf's size. Float32
  (float64 for float64 parameters).
  """
  w0: jax.Array
  w1: jax.Array
  b1: jax.Array
  w2: jax.Array


class ScaleByDeepMomentumGDState(NamedTuple):
  """State of `scale_by_deep_momentum_gd`: step count and per-leaf `DeepMomentumMemory`."""
  count: jax.Array
  memory: Any


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh, "silu": jax.nn.silu, "gelu": jax.nn.gelu, "relu": jax.nn.relu}


def deep_memory_apply(phi: DeepMomentumMemory, u: jax.Array,
                      activation: str = "tanh") -> jax.Array:
  """``m_phi(u)`` of `DeepMomentumMemory`, element-wise over ``u``."""
  hidden = _ACTIVATIONS[activation](u[..., None] * phi.w1 + phi.b1)
  return phi.w0 + jnp.sum(hidden * phi.w2, axis=-1)


def scale_by_deep_momentum_gd(learning_rate: Any = 0.1, alpha: float = 0.9, hidden: int = 4,
                              init_scale: float = 1.0, seed: int = 0,
                              activation: str = "tanh") -> optax.GradientTransformation:
  r"""Deep Momentum Gradient Descent, eq. 50 taken literally.

  The momentum is a memory ``m_phi`` (an MLP over gradients, see `DeepMomentumMemory`) trained
  by one step of gradient descent with retention on its inner objective, and the weights move by
  the memory's output at the current gradient ``u_t = grad L(W_t)``:

  .. math::
    \phi_{t+1} = \alpha \phi_t - \eta \nabla_\phi \mathcal{L}^{(2)}(\phi_t; u_t), \qquad
    \mathcal{L}^{(2)}(\phi; u) = \langle m_\phi(u), u \rangle, \qquad
    W_{t+1} = W_t + m_{\phi_{t+1}}(u_t).

  The dot-product objective is the one of eqs. 10-13 and 46 with ``P = I`` (each gradient is
  mapped to the constant value, spec 1.3): for the linear memory ``m_phi(u) = w0`` its
  gradient is ``u`` and the rule is ``w0 <- alpha w0 - eta u; W <- W + w0``, heavy-ball
  momentum (``hidden=0`` gives exactly that). The output is the update itself (it already
  contains ``eta``), so the alias `deep_momentum_gd` does not rescale it. The MLP part learns a
  non-linear function of each gradient entry anti-aligned with it (with ``tanh``, a learned
  sign-like step); ``alpha < 1`` bounds it.

  Args:
    learning_rate: the memory's step ``eta`` (scalar or schedule, >= 0).
    alpha: retention of every memory parameter in [0, 1].
    hidden: hidden units of the MLP (>= 0; 0 is the linear memory; static).
    init_scale: std of the first-layer weights ``w1`` at init (``w2 = 0``, ``b1 = 0``); the
      MLP sees raw gradient entries, so ``init_scale`` sets the gradient scale at which
      ``act`` bends.
    seed: seed of ``w1``.
    activation: the hidden non-linearity, one of ``"tanh"``, ``"silu"``, ``"gelu"``,
      ``"relu"`` (a name, so that `optax.inject_hyperparams` does not take it for a schedule).

  Returns:
    An `optax.GradientTransformation`.
  """
  if activation not in _ACTIVATIONS:
    raise ValueError(f"activation={activation!r} is not one of {sorted(_ACTIVATIONS)}.")
  _common.check_learning_rate(learning_rate)
  _common.check_range("alpha", alpha, low=0.0, high=1.0)
  _common.check_range("init_scale", init_scale, low=0.0)
  hidden = _common.static_int("hidden", hidden, low=0)
  seed = _common.static_int("seed", seed, low=0)

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    def memory(p, k):
      w0 = _common.zeros_like(p, _state_dtype(p))
      zeros = w0[..., None] + jnp.zeros((hidden,), w0.dtype)  # Keeps the leaf's sharding.
      w1 = zeros + init_scale * jax.random.normal(k, zeros.shape, w0.dtype)
      return DeepMomentumMemory(w0=w0, w1=w1, b1=zeros, w2=zeros)

    mems = [memory(p, k) for p, k in zip(leaves, keys, strict=False)]
    return ScaleByDeepMomentumGDState(jnp.zeros([], jnp.int32), jax.tree.unflatten(treedef, mems))

  def update_fn(updates, state, params=None):
    del params
    eta = _common.lr_at(learning_rate, state.count)
    leaves, treedef = jax.tree.flatten(updates)
    mems = treedef.flatten_up_to(state.memory)
    new_mems, out = [], []
    for g, phi in zip(leaves, mems, strict=True):
      u = g.astype(phi.w0.dtype)
      phi32 = jax.tree.map(lambda x, u=u: x.astype(jnp.promote_types(x.dtype, u.dtype)), phi)

      def inner(p, u=u):
        return jnp.sum(deep_memory_apply(p, u, activation) * u)

      grads = jax.grad(inner)(phi32)
      phi_new = jax.tree.map(lambda w, dw: alpha * w - eta.astype(w.dtype) * dw, phi32, grads)
      out.append(deep_memory_apply(phi_new, u, activation).astype(g.dtype))
      new_mems.append(jax.tree.map(lambda w, old: w.astype(old.dtype), phi_new, phi))
    return jax.tree.unflatten(treedef, out), ScaleByDeepMomentumGDState(
        optax.safe_increment(state.count), jax.tree.unflatten(treedef, new_mems))

  return optax.GradientTransformation(init_fn, update_fn)


def deep_momentum_gd(learning_rate: optax.ScalarOrSchedule, alpha: float = 0.9, hidden: int = 4,
                     init_scale: float = 1.0, seed: int = 0,
                     activation: str = "tanh") -> optax.GradientTransformation:
  r"""Deep Momentum GD (eq. 50, literal): ``W_{t+1} = W_t + m_{phi_{t+1}}(u_t)``.

  See `scale_by_deep_momentum_gd` for the memory and its inner objective. The learning rate is
  the memory's inner step ``eta`` (the weights move by the memory's output, which already
  contains it); after ``learning_rate`` is set to 0 the weights still move by the retained
  memory ``alpha m``, as in eq. 50. `deep_momentum` is the project's earlier reinterpretation
  (an L2 memory predicting the next gradient read out around a heavy-ball buffer).

  Args:
    learning_rate: the memory's step (scalar or schedule, >= 0).
    alpha, hidden, init_scale, seed, activation: see `scale_by_deep_momentum_gd`.

  Returns:
    An `optax.GradientTransformation`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from nl_jax.optim import deep_momentum_gd
    >>> params = {'w': jnp.ones((3, 2))}
    >>> loss = lambda p: jnp.sum(p['w'] ** 2)
    >>> tx = deep_momentum_gd(learning_rate=0.05)
    >>> state = tx.init(params)
    >>> for _ in range(60):
    ...   u, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, u)
    >>> bool(loss(params) < 1e-2)
    True
  """
  return scale_by_deep_momentum_gd(learning_rate, alpha, hidden, init_scale, seed, activation)
