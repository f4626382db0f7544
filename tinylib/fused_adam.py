"""Keras' Adam and AdamW, with each variable's update done by TensorFlow's fused kernel.

Keras 3 writes Adam's update as about a dozen separate operations per variable
(subtract, multiply, square, square root, divide, three assignments, ...), and on
TensorFlow each one is a pass of its own over the variable: for Model 3's dense layers,
140 million weights, a dozen passes at every step. ``ResourceApplyAdam`` is the same
update in one pass (``benchmarks/adam_update.py`` times both ways; how much of it a
training step gains depends on what else the cores do meanwhile:
``benchmarks/speed_choices.py``, variants 'new' and 'keras-adam'). The arithmetic is the
same formula as Keras':

    alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m += (g - m) * (1 - beta_1);  v += (g**2 - v) * (1 - beta_2)
    var -= m * alpha / (sqrt(v) + epsilon)

so results agree to float rounding. The optimizers are Keras' own classes underneath
(same variables, names, config and checkpoints); only the update on TensorFlow differs,
and only where the kernel applies: dense gradients, no AMSGrad, no distribution
strategy. JAX compiles Keras' update into one fused loop already and keeps it.
"""

from __future__ import annotations


import keras

FUSED_ENV = "TINYLIB_FUSED_ADAM"
_KERNEL_DTYPES = ("float16", "bfloat16", "float32", "float64")


def fused_available() -> bool:
    """Whether Adam's updates go through TensorFlow's fused kernel: on TensorFlow,
    unless ``TINYLIB_FUSED_ADAM=0`` (for side-by-side timings)."""
    from tinylib import environment

    return environment.fused_kernel_enabled(FUSED_ENV)


class _FusedUpdate:
    """The fused update step, shared by :class:`Adam` and :class:`AdamW` (AdamW's decay
    is applied by Keras before the update, as for its own class)."""

    def _fusable(self, gradient, variable) -> bool:
        if not fused_available() or self.amsgrad:
            return False
        import tensorflow as tf  # only on TensorFlow: JAX runs without it

        return (not isinstance(gradient, tf.IndexedSlices) and not tf.distribute.has_strategy()
                and hasattr(variable, "handle")
                and keras.backend.standardize_dtype(variable.dtype) in _KERNEL_DTYPES)

    def update_step(self, gradient, variable, learning_rate):
        if not self._fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=m.value.handle, v=v.value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype), use_locking=False)


@keras.saving.register_keras_serializable(package="tinylib")
class Adam(_FusedUpdate, keras.optimizers.Adam):
    """``keras.optimizers.Adam``, each update one fused kernel on TensorFlow."""


@keras.saving.register_keras_serializable(package="tinylib")
class AdamW(_FusedUpdate, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW``, each update one fused kernel on TensorFlow."""
