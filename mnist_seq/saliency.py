"""Which pixels decided: integrated gradients of a class's probability, on either backend.

Keras has no gradient of its own, so `gradient_fn` asks the backend: a `tf.function`
around a `GradientTape` on TensorFlow, `jax.jit(jax.grad(...))` over the model's
`stateless_call` on JAX. Each is compiled once per model and reused (serve asks it for
every drawing).

Integrated gradients (Sundararajan et al., 2017) average the gradient along the straight
path from a black image, MNIST's background, to the digit and multiply by the pixels:
the map sums to p(class | digit) - p(class | black), and a pixel that is black, or that
the model ignores, gets exactly 0. Occlusion, blanking one patch at a time and watching
the probability fall, needs no gradient at all: the tests use it as a check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mnist_seq.data import to_float

STEPS = 32  # points on the path from black to the digit; the sum is off by about 1e-3


def gradient_fn(model) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A compiled function: (images (n, 28, 28) float32 in [0, 1], classes (n,) int) ->
    the gradient of each image's probability of its class, (n, 28, 28)."""
    import keras

    if keras.backend.backend() == "jax":
        return _jax_gradient(model)
    return _tf_gradient(model)


def _tf_gradient(model):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def grad(x, classes):
        with tf.GradientTape() as tape:
            tape.watch(x)
            picked = tf.gather(model(x, training=False), classes, axis=1, batch_dims=1)
        return tape.gradient(tf.cast(picked, tf.float32), x)

    return lambda x, c: grad(tf.constant(x, tf.float32), tf.constant(c, tf.int32)).numpy()


def _jax_gradient(model):
    import jax
    import jax.numpy as jnp

    def picked(x, classes, trainable, fixed):
        probs, _ = model.stateless_call(trainable, fixed, x, training=False)
        return jnp.take_along_axis(probs, classes[:, None], axis=1).astype("float32").sum()

    grad = jax.jit(jax.grad(picked))
    # The weights go in as arguments, read at each call: Keras may replace the arrays
    # behind its variables (predict donates them), so none may be kept.
    return lambda x, c: np.asarray(grad(
        jnp.asarray(x, "float32"), jnp.asarray(c, "int32"),
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables]))


@dataclass
class Saliency:
    """How much each pixel pushed one digit's answer towards each of `classes` (the
    predicted digit, then the runner-up): `maps` (len(classes), 28, 28)."""

    classes: list[int]
    probabilities: list[float]
    maps: np.ndarray


def integrated_gradients(grad: Callable, digit: np.ndarray, classes: list[int],
                         steps: int = STEPS) -> np.ndarray:
    """One map per class for a 28x28 uint8 digit, from one call of `grad` (`gradient_fn`)."""
    x = to_float(digit[None])[0]
    alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps  # midpoints: exact for a line
    path = np.concatenate([alphas[:, None, None] * x[None]] * len(classes))
    wanted = np.repeat(np.asarray(classes, np.int32), steps)
    g = grad(path, wanted).reshape(len(classes), steps, *x.shape)
    return x[None] * g.mean(axis=1)


def explain_digit(model, grad: Callable, digit: np.ndarray, steps: int = STEPS) -> Saliency:
    """The predicted digit and the runner-up, and each one's map."""
    probs = np.asarray(model.predict_on_batch(to_float(digit[None])))[0]
    top = [int(c) for c in np.argsort(-probs)[:2]]
    return Saliency(top, [float(probs[c]) for c in top],
                    integrated_gradients(grad, digit, top, steps))


def occlusion(model, digit: np.ndarray, target: int, patch: int = 4) -> np.ndarray:
    """How far the probability of `target` falls when each patch x patch square is
    blanked (28/patch squares a side, each value spread over its square's pixels)."""
    x = to_float(digit[None])[0]
    blanked = []
    for top in range(0, 28, patch):
        for left in range(0, 28, patch):
            copy = x.copy()
            copy[top:top + patch, left:left + patch] = 0
            blanked.append(copy)
    probs = np.asarray(model.predict(np.stack([x, *blanked]), batch_size=256, verbose=0))
    fall = (probs[0, target] - probs[1:, target]).reshape(28 // patch, 28 // patch)
    return np.kron(fall, np.ones((patch, patch))) / patch**2


def card(classes: list[int], maps: np.ndarray) -> dict:
    """serve's card: each class's map scaled to -100..100 by the largest push in any."""
    scale = float(np.abs(maps).max()) or 1.0
    return {"saliency": {"classes": classes,
                         "maps": np.round(100 * maps / scale).astype(int).tolist()}}
