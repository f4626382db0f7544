"""How much arithmetic a model does per image: the yardstick for a throughput figure.

Images per second alone cannot say whether a run is fast: Model 3 does hundreds of
times Model 1's arithmetic per image. Dividing the achieved FLOP/s by what the
hardware can do (about 64 GFLOP/s in float32 on two AVX2 cores; hundreds of TFLOP/s in
bfloat16 on a data-centre GPU) says how far from its limit a run is.

Counted: the multiply-adds of convolutions and dense layers, two FLOPs each (what
papers and torchvision's tables count as one "FLOP" is a multiply-add). Pooling,
normalization and activations are left out: they are a few percent of a CNN's work.
A training step costs about three forward passes (the backward pass computes two
products for each one of the forward pass: the gradient of the layer's input, and of its
weights). The input's gradient is computed only where a trained layer comes before it:
the first trained layer (the first convolution, whose input is the image) costs two. A
frozen layer (a backbone trained only through its head) has no weight gradient: one
forward and, where a trained layer comes before it, the input's gradient; upstream of
every trained layer, the forward pass alone.
"""

from __future__ import annotations

import math

import keras


def _spatial(shape) -> int:
    """Positions per image of a layer's output (1 for a flat vector)."""
    return math.prod(int(d) for d in shape[1:-1]) if len(shape) > 2 else 1


def layer_flops(layer) -> int:
    """Forward FLOPs per image of one layer (0 for layers without multiply-adds)."""
    if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = layer.kernel.shape  # (kh, kw, in / groups, out)
        return 2 * math.prod(int(d) for d in kernel) * _spatial(layer.output.shape)
    if isinstance(layer, keras.layers.Dense):
        inputs, units = (int(d) for d in layer.kernel.shape)
        return 2 * inputs * units * _spatial(layer.output.shape)
    return 0


def forward_flops(model: keras.Model) -> int:
    """Forward FLOPs per image of ``model``, nested models (Model 5's backbone) included."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        else:
            total += layer_flops(layer)
    return total


def _layers_in_order(model: keras.Model):
    """Every layer of ``model`` in the order the forward pass runs them, nested models' inline."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers_in_order(layer)
        else:
            yield layer


def training_flops(model: keras.Model) -> int:
    """FLOPs per image of a training step: forward and backward, about three forward passes
    for a model trained whole. Each layer costs its forward pass, plus its weights' gradient
    where it is trained, plus its input's gradient where a trained layer comes before it:
    the first trained layer two forward passes, a frozen one after a trained one two, a
    frozen one upstream of every trained layer one."""
    total, trained_before = 0, False
    for layer in _layers_in_order(model):
        trained = bool(layer.trainable_weights)
        total += layer_flops(layer) * (1 + trained + trained_before)
        trained_before = trained_before or trained
    return total
