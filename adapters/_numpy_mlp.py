"""The mathematics of the NumPy reference trainer: an MLP classifier and two optimizers.

Kept apart from the event plumbing in :mod:`eventhooks.adapters.numpy` so that the benchmark
can run the very same arithmetic in a bare loop, and so that a test can check the gradients
against finite differences without a trainer around them.

Weights are a flat list ``[W0, b0, W1, b1, ...]`` (Keras' ``get_weights`` layout): ``W_i`` has
shape ``(fan_in, fan_out)``; hidden layers use ReLU, the output layer a softmax, and the loss
is the mean categorical cross-entropy against integer labels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


def layer_sizes(input_dim: int, hidden: Sequence[int], n_classes: int) -> list[int]:
    """Widths of every layer, input first and classes last."""
    return [input_dim, *hidden, n_classes]


def weight_shapes(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Shapes of ``[W0, b0, W1, b1, ...]`` for the given layer widths."""
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        shapes += [(fan_in, fan_out), (fan_out,)]
    return shapes


def init_weights(sizes: Sequence[int], rng: np.random.Generator, dtype: Any) -> list[Array]:
    """He-normal kernels (suited to ReLU) and zero biases."""
    weights: list[Array] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        scale = math.sqrt(2.0 / fan_in)
        weights.append((rng.standard_normal((fan_in, fan_out)) * scale).astype(dtype))
        weights.append(np.zeros(fan_out, dtype=dtype))
    return weights


def logits_and_hidden(weights: Sequence[Array], x: Array) -> tuple[Array, list[Array]]:
    """The output logits and the input of every layer (kept for backpropagation)."""
    inputs = [x]
    a = x
    last = len(weights) // 2 - 1
    for i in range(0, len(weights), 2):
        z = a @ weights[i] + weights[i + 1]
        if i // 2 == last:
            return z, inputs
        a = np.maximum(z, 0)
        inputs.append(a)
    raise ValueError("an MLP needs at least one layer of weights")


def log_softmax(z: Array) -> Array:
    shifted: Array = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # type: ignore[no-any-return]


def predict_proba(weights: Sequence[Array], x: Array) -> Array:
    """Class probabilities, one row per sample."""
    z, _ = logits_and_hidden(weights, x)
    return np.exp(log_softmax(z))


def loss_and_correct(weights: Sequence[Array], x: Array, y: Array) -> tuple[float, int]:
    """Mean cross-entropy of a batch and how many samples it classifies right."""
    z, _ = logits_and_hidden(weights, x)
    logp = log_softmax(z)
    rows = np.arange(len(y))
    loss = -float(logp[rows, y].mean())
    return loss, int((z.argmax(axis=1) == y).sum())


def loss_and_grads(weights: Sequence[Array], x: Array, y: Array) -> tuple[float, int, list[Array]]:
    """Mean cross-entropy, correct count and the gradient of the loss for every weight."""
    z, inputs = logits_and_hidden(weights, x)
    logp = log_softmax(z)
    rows = np.arange(len(y))
    loss = -float(logp[rows, y].mean())
    correct = int((z.argmax(axis=1) == y).sum())
    delta = np.exp(logp)
    delta[rows, y] -= 1
    delta /= len(y)
    grads: list[Array] = [delta] * len(weights)  # placeholders, every slot overwritten
    for i in range(len(weights) - 2, -1, -2):
        a = inputs[i // 2]
        grads[i] = a.T @ delta
        grads[i + 1] = delta.sum(axis=0)
        if i:
            delta = (delta @ weights[i].T) * (a > 0)
    return loss, correct, grads


class Optimizer(Protocol):
    """Updates weights in place from gradients; ``lr`` may change between steps."""

    lr: float

    def apply(self, weights: list[Array], grads: Sequence[Array]) -> None: ...


class SGD:
    """Stochastic gradient descent, with optional (heavy-ball) momentum as in Keras."""

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        self.lr = lr
        self.momentum = momentum
        self._velocity: list[Array] | None = None

    def apply(self, weights: list[Array], grads: Sequence[Array]) -> None:
        if not self.momentum:
            for w, g in zip(weights, grads, strict=True):
                w -= self.lr * g
            return
        if self._velocity is None:
            self._velocity = [np.zeros_like(w) for w in weights]
        for w, g, v in zip(weights, grads, self._velocity, strict=True):
            v *= self.momentum
            v -= self.lr * g
            w += v


class Adam:
    """Adam (Kingma & Ba), with Keras' defaults and bias correction."""

    def __init__(
        self, lr: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7
    ) -> None:
        self.lr = lr
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.t = 0
        self._m: list[Array] | None = None
        self._v: list[Array] | None = None

    def apply(self, weights: list[Array], grads: Sequence[Array]) -> None:
        if self._m is None or self._v is None:
            self._m = [np.zeros_like(w) for w in weights]
            self._v = [np.zeros_like(w) for w in weights]
        self.t += 1
        b1, b2 = self.beta_1, self.beta_2
        step = self.lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for w, g, m, v in zip(weights, grads, self._m, self._v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            w -= step * m / (np.sqrt(v) + self.epsilon)


def make_optimizer(name: str, lr: float, momentum: float) -> Optimizer:
    if name == "adam":
        return Adam(lr)
    if name == "sgd":
        return SGD(lr, momentum)
    raise ValueError(f"optimizer= must be 'adam' or 'sgd', got {name!r}")
