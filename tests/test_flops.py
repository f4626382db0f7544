"""tinylib.flops against published counts: He et al. (2016) and torchvision's model tables."""

from __future__ import annotations

import keras
import pytest

from tinylib import flops, models


def macs(model) -> float:
    return flops.forward_flops(model) / 2  # the tables count a multiply-add as one FLOP


def test_resnet50_at_224_does_what_the_resnet_paper_says():
    """He et al. 2016, Table 1: ResNet-50 (the original, Keras' layout) 3.8e9 multiply-adds at 224x224."""
    net = keras.applications.ResNet50(weights=None)
    assert macs(net) == pytest.approx(3.8e9, rel=0.03)


def test_vgg16_at_224_does_what_torchvision_says():
    """torchvision's table: VGG-16, 15.47 GFLOPS (multiply-adds) at 224x224."""
    net = keras.applications.VGG16(weights=None)
    assert macs(net) == pytest.approx(15.47e9, rel=0.01)


def test_a_small_network_is_counted_by_hand():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)       # 8*8 positions * 3*3*3*4 = 6,912 MACs
    x = keras.layers.MaxPooling2D()(x)                            # none
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10)(x)                           # 64*10 = 640 MACs
    net = keras.Model(inputs, outputs)
    assert flops.forward_flops(net) == 2 * (6912 + 640)
    # the convolution: forward and its weights' gradient (its input, the image, has none); the dense layer: three
    assert flops.training_flops(net) == 2 * (2 * 6912) + 3 * (2 * 640)


def test_model5_counts_its_nested_backbone():
    model5 = models.build_model("model5", weights=None, compile=False)
    backbone = model5.get_layer("resnet50")
    head = flops.forward_flops(model5) - flops.forward_flops(backbone)
    assert flops.forward_flops(backbone) > 100 * head > 0  # ResNet-50 at 64x64 dwarfs the dense head


def test_a_frozen_layer_costs_no_weight_gradient():
    """Frozen before every trained layer: the forward pass alone; frozen after one: the
    forward pass and its input's gradient. A backbone trained through its head only
    (transfer's stage 'head') does about a third of a whole model's training work."""
    inputs = keras.Input((8, 8, 3))
    first = keras.layers.Conv2D(4, 3, padding="same")
    x = keras.layers.Flatten()(first(inputs))
    middle = keras.layers.Dense(10)
    last = keras.layers.Dense(5)
    net = keras.Model(inputs, last(middle(x)))
    forward = {layer: flops.layer_flops(layer) for layer in (first, middle, last)}
    first.trainable = False  # upstream of everything trained; the middle layer is the first trained one
    assert flops.training_flops(net) == forward[first] + 2 * forward[middle] + 3 * forward[last]
    first.trainable, middle.trainable = True, False  # downstream of a trained layer
    assert flops.training_flops(net) == 2 * forward[first] + 2 * forward[middle] + 3 * forward[last]

    model5 = models.build_model("model5", weights=None, compile=False)
    stem = flops.layer_flops(model5.get_layer("resnet50").get_layer("conv1_conv"))  # the image: no input gradient
    whole = flops.training_flops(model5)
    assert whole == 3 * flops.forward_flops(model5) - stem
    model5.get_layer("resnet50").trainable = False
    backbone = flops.forward_flops(model5.get_layer("resnet50"))
    # the head's first dense layer is now the first trained one
    head = [layer for layer in model5.layers if layer.trainable_weights and flops.layer_flops(layer)]
    assert flops.training_flops(model5) == backbone + 3 * (flops.forward_flops(model5) - backbone) \
        - flops.layer_flops(head[0])
