"""Grad-CAM: which parts of an image a CNN's prediction rests on.

Grad-CAM (Selvaraju et al., 2017, "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization", ICCV) looks at the last
convolutional feature maps A_k of a network: it weights each channel k by the
average gradient of a class score with respect to that channel, sums the
weighted maps and keeps the positive part, ReLU(sum_k w_k A_k).  Regions that
raise the class score light up; upsampled to the image size, the map shows
where the model "looked".  It needs no retraining and works for any model
whose graph has a 4D (batch, height, width, channels) feature map.
Here the score is the class's logit *against its rivals*, z_c minus the mean of
the other logits weighted by their probabilities among themselves: the direction of
the class probability's gradient (p_c times the logit's gradient minus the
probability-weighted mean of all logits' gradients; the paper differentiates the
logit alone), so the map shows evidence for the class *against* its rivals. It is
computed from the logits (the softmax of the ``predictions`` layer set aside), not
from the probability, whose gradient vanishes where a confident prediction rounds
p_c to 1 in float32 (the map would go blank). Each map is scaled to a maximum of 1.

``gradcam(model, images)`` works on the TensorFlow and JAX backends (torch:
a simple, untested branch).  Models are always run with ``training=False``:
augmentation off, BatchNorm in inference mode, dropout off.
"""

from __future__ import annotations


import keras
import numpy as np
from keras import layers, ops

__all__ = [
    "class_probabilities",
    "find_target_layer",
    "gradcam",
    "maps_table",
    "predict_top_k",
    "split_at",
    "target_map_size",
]


# --- finding and splitting at the feature map --------------------------------


def _output_tensor(model, layer):
    """The layer's output *in this model's graph*.

    ``layer.output`` is not it for a nested model (model5's ResNet50): a
    Functional model's ``.output`` is its own inner tensor, not connected to
    the outer inputs.  So the node is looked up in the model's graph.
    """
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.operation is layer:
                outputs = node.output_tensors
                return outputs[0] if len(outputs) == 1 else outputs
    return layer.output


def _is_head(model, layer) -> bool:
    """Input, rescaling and augmentation: parameter-free and image-shaped."""
    if isinstance(layer, layers.InputLayer):
        return True
    output = _output_tensor(model, layer)
    shape = tuple(output.shape) if hasattr(output, "shape") else None
    return not layer.trainable_weights and shape == tuple(model.inputs[0].shape)


def find_target_layer(model) -> str:
    """Name of the last layer with a 4D output after the model's input head.

    The last feature map before the classifier has the most semantic and
    still some spatial information: Grad-CAM's usual choice.  The head
    (input, rescaling, augmentation) is skipped: its "feature map" is the image.
    In Models 1 to 4 that map is the last max-pooling's output, half the size of the
    last convolution's (the paper takes the convolution's own): the map the classifier
    reads. Pass ``layer=`` to ``gradcam`` (the convolution's name, ``conv2`` in Model 1)
    for the finer map.
    """
    body = list(model.layers)
    while body and _is_head(model, body[0]):
        body.pop(0)
    for layer in reversed(body):
        output = _output_tensor(model, layer)
        if hasattr(output, "shape") and len(output.shape) == 4:
            return layer.name
    raise ValueError(
        f"Model {model.name!r} has no layer with a 4D (batch, height, width, "
        "channels) output after its input head, so Grad-CAM has no feature map "
        "to explain (is it a dense-only model?)."
    )


def target_map_size(model, layer: str | None = None) -> tuple[int, int]:
    """(height, width) of the feature map Grad-CAM explains (``find_target_layer``'s unless
    ``layer`` is named): the resolution of the model's heat maps."""
    output = _output_tensor(model, model.get_layer(layer or find_target_layer(model)))
    return int(output.shape[1]), int(output.shape[2])


def maps_table(runs: dict, evaluations: dict):
    """A pandas DataFrame, a row per trained model: its initial weights, the layer Grad-CAM
    explains, that map's size, and validation top-1 and top-5. ``runs`` maps a name to a
    ``tinylib.runs.Run``, ``evaluations`` the same names to ``evaluate.Evaluation``s."""
    import pandas as pd

    rows = {}
    for name, run in runs.items():
        layer = find_target_layer(run.model)
        rows[name] = {"initial weights": run.record.get("weights"), "feature map used": layer,
                      "map size": "×".join(map(str, target_map_size(run.model, layer))),
                      "val top-1": f"{evaluations[name].top1:.1%}", "val top-5": f"{evaluations[name].top5:.1%}"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def split_at(model, layer_name):
    """``(features, head)``: images -> the layer's feature map -> probabilities.

    Both share the model's layers and weights (nothing is copied).  The head
    is built from the intermediate tensor, so it only works when everything
    after the layer depends on the layer alone (true for a last feature map).
    """
    layer = model.get_layer(layer_name)
    tensor = _output_tensor(model, layer)
    if isinstance(tensor, (list, tuple)):
        raise ValueError(f"Layer {layer_name!r} of {model.name!r} has several outputs")
    features = keras.Model(model.input, tensor, name=f"{model.name}_to_{layer_name}")
    try:
        head = keras.Model(tensor, model.output, name=f"{model.name}_after_{layer_name}")
    except ValueError as error:
        raise ValueError(
            f"The layers of {model.name!r} after {layer_name!r} also use earlier "
            f"tensors (a skip connection across it?), so the model cannot be split "
            f"there; choose a later layer. Keras said: {error}"
        ) from error
    return features, head


# --- predictions ---------------------------------------------------------------


def _as_batch(model, images) -> tuple[np.ndarray, bool]:
    """float32 batch as the model expects (0..255), and whether one image was given."""
    images = np.asarray(images, dtype="float32")
    single = images.ndim == len(model.inputs[0].shape) - 1
    return (images[None] if single else images), single


def class_probabilities(model, images) -> np.ndarray:
    """(N, classes) probabilities, inference mode; one image gives N = 1."""
    batch, _ = _as_batch(model, images)
    return ops.convert_to_numpy(model(batch, training=False)).astype("float32")


def predict_top_k(model, image, class_names, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most probable classes of one image, as (name, probability)."""
    probabilities = class_probabilities(model, image)[0]
    top = np.argsort(-probabilities, kind="stable")[:k]
    return [(class_names[i], float(probabilities[i])) for i in top]


def _class_indices(class_index, probabilities) -> np.ndarray:
    """One class per image: predicted (None), the same int, or one each."""
    count = len(probabilities)
    if class_index is None:
        return probabilities.argmax(axis=1)
    if isinstance(class_index, (int, np.integer)):
        return np.full(count, int(class_index))
    indices = np.asarray(class_index, dtype=int).reshape(-1)
    if len(indices) != count:
        raise ValueError(f"class_index has {len(indices)} entries for {count} images")
    return indices


# --- gradients, per backend ----------------------------------------------------


def _logits_score(model, target: str, head, mask):
    """``(part, score_of)``: the part of ``head`` (``split_at(model, target)``'s) to
    differentiate, and the score of its outputs whose gradient Grad-CAM weighs the maps by.

    tinylib's models end in a ``predictions`` layer with softmax: a Dense (Models 1 to 5,
    the ResNets), whose logits are its own kernel and bias applied to its input, or an
    Activation (ResNet-9), whose input is the logits. The part ends at that layer's input,
    and the score is the logits' class contrast (``_class_contrast``); no layer is changed.
    For another model, the part is the whole head and the score the sum of its selected
    outputs. Images do not interact in inference mode, so the gradient of a sum over the
    batch is each image's own gradient: one backward pass for the whole batch.
    """
    layer = next((layer for layer in model.layers if layer.name == "predictions"), None)
    activation = getattr(getattr(layer, "activation", None), "__name__", None)
    maps = _output_tensor(model, model.get_layer(target))
    dense = isinstance(layer, keras.layers.Dense)
    if activation != "softmax" or not isinstance(layer, (keras.layers.Dense, keras.layers.Activation)) \
            or layer.input is maps:
        return head, lambda outputs: ops.sum(outputs * mask)
    part = keras.Model(maps, layer.input, name=f"{model.name}_{target}_to_logits")

    def score_of(inputs):
        logits = ops.cast(inputs, "float32")
        if dense:
            logits = ops.matmul(logits, ops.cast(layer.kernel, "float32"))
            if layer.use_bias:
                logits = logits + ops.cast(layer.bias, "float32")
        return _class_contrast(logits, mask)

    return part, score_of


def _class_contrast(logits, mask):
    """Each selected class's logit against its rivals, summed over the batch: z_c minus the
    rivals' logits weighted by their softmax among themselves (held constant). Computed
    from logits, it stays of order one however confident the prediction."""
    rivals = ops.where(mask > 0, float("-inf"), logits)
    weights = ops.stop_gradient(ops.softmax(rivals, axis=-1))
    return ops.sum(mask * logits) - ops.sum(weights * logits)


def _gradients(head, feature_maps, score_of):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        feature_maps = tf.convert_to_tensor(feature_maps)
        with tf.GradientTape() as tape:
            tape.watch(feature_maps)
            score = score_of(head(feature_maps, training=False))
        return tape.gradient(score, feature_maps)
    if backend == "jax":
        import jax

        trainable = [v.value for v in head.trainable_variables]
        non_trainable = [v.value for v in head.non_trainable_variables]

        def score(maps):
            outputs, _ = head.stateless_call(trainable, non_trainable, maps, training=False)
            return score_of(outputs)

        return jax.grad(score)(feature_maps)
    if backend == "torch":  # untested: torch is not installed where this was written
        import torch

        feature_maps = torch.as_tensor(feature_maps).detach().requires_grad_(True)
        score = score_of(head(feature_maps, training=False))
        return torch.autograd.grad(score, feature_maps)[0]
    raise NotImplementedError(f"Grad-CAM is not implemented for the {backend!r} backend")


def _normalize(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum; an all-zero map stays zero (no NaN)."""
    peaks = maps.max(axis=(1, 2), keepdims=True)
    return np.where(peaks > 0, maps / np.where(peaks > 0, peaks, 1.0), 0.0).clip(0.0, 1.0)


def gradcam(model, images, class_index=None, layer: str | None = None) -> np.ndarray:
    """Grad-CAM heat maps, (N, H, W) float32 in [0, 1] at the images' size.

    ``images``: one image (H, W, C) or a batch, 0..255 as the model expects
    (one image still gives N = 1).  ``class_index``: None explains each
    image's predicted class, an int the same class for all, a sequence one
    class per image.  ``layer`` defaults to ``find_target_layer(model)``.
    """
    batch, _ = _as_batch(model, images)
    target = layer or find_target_layer(model)
    features, head = split_at(model, target)
    feature_maps = features(batch, training=False)
    probabilities = ops.convert_to_numpy(head(feature_maps, training=False))
    classes = _class_indices(class_index, probabilities)
    mask = np.eye(probabilities.shape[1], dtype="float32")[classes]
    part, score_of = _logits_score(model, target, head, mask)
    # float32 on the host: under mixed precision both come as bfloat16 (or float16),
    # which NumPy's einsum does not take.
    gradients = ops.convert_to_numpy(_gradients(part, feature_maps, score_of)).astype("float32")
    weights = gradients.mean(axis=(1, 2))  # one weight per image and channel
    maps = np.maximum(np.einsum("nhwk,nk->nhw", ops.convert_to_numpy(feature_maps).astype("float32"),
                                weights), 0.0)
    resized = ops.image.resize(maps[..., None].astype("float32"), batch.shape[1:3],
                               interpolation="bilinear")
    return _normalize(ops.convert_to_numpy(resized)[..., 0]).astype("float32")
