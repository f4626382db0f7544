"""The parameter counts, layer widths and layer tables the chapters state, checked against the models tinylib builds.

A count in a sentence ("about 140 million parameters") is a fact about the code, not a
result: it is typed where the story needs it, and this test keeps it true. Each claim is
registered below with the count it states; a sentence that states a count in millions of
parameters or weights and is not registered fails the scan, so a new one cannot drift
unchecked either. This book's results (accuracies, hours) are never typed: they are shown by
the cells that compute them; the study's figures are quoted from its slides
(``results.STUDY_RESULTS``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"


@pytest.fixture(scope="module")
def built():
    """Models 1 to 5 (Model 5 with random weights: the counts do not depend on them) and
    the full-width ResNet-18, for 200 classes at 64x64, as the chapters describe them."""
    from tinylib import models

    made = {name: models.build_model(name, compile=False) for name in ("model1", "model2", "model3", "model4", "resnet18")}
    made["model5"] = models.build_model("model5", compile=False, weights=None)
    return made


def layer(model, name):
    return model.get_layer(name).count_params()


def units(model, name) -> int:
    """The width of a layer's output: a dense layer's units, a flattened vector's values."""
    return int(model.get_layer(name).output.shape[-1])


def biases(model, suffix) -> int:
    """The bias values of the layers whose names end with ``suffix`` ('_conv', '_dense')."""
    return sum(int(np.prod(weight.shape)) for lay in model.layers if lay.name.endswith(suffix)
               for weight in lay.weights if weight.path.endswith("bias"))


def trained(layer_or_model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in layer_or_model.trainable_weights)


def convolutions(model) -> int:
    return sum(layer.count_params() for layer in model.layers if layer.name.endswith("_conv"))


def about(value: float, stated: str) -> bool:
    """Whether ``value`` (in millions) rounds to ``stated`` at its last significant digit
    ("23.6": tenths; "134": units; "140": tens)."""
    digits = stated.rstrip("0") if "." not in stated else stated
    unit = 10.0 ** (len(stated) - len(digits)) if "." not in stated else 10.0 ** -len(stated.split(".")[1])
    return abs(value / 1e6 - float(stated)) <= unit / 2


# (chapter, phrase as the prose states it, what must hold of the built models)
CLAIMS = [
    ("05_training_setup", "first dense layer alone has over a hundred million weights",
     lambda m: layer(m["model3"], "fc1_dense") > 100e6),
    ("06_model1", "almost four million weights in the dense layer",
     # "same" padding flattens 16x16x64 values instead of Model 1's 14x14x64
     lambda m: 3.5e6 < (16 * 16 * 64 - m["model1"].get_layer("flatten").output.shape[-1]) * 1024 < 4e6),
    ("06_model1", "16{,}778{,}240$ parameters, 3,932,160 more than with",
     lambda m: (16 * 16 * 64 + 1) * 1024 == 16_778_240 and 16_778_240 - layer(m["model1"], "fc1") == 3_932_160),
    ("08_model3", "in the two hidden dense layers, 6,272 in all",
     lambda m: biases(m["model3"], "_conv") == 1_152 and biases(m["model3"], "_dense") == 5_120),
    ("07_model2", "its dense layer has half the units (512 against 1,024)",
     lambda m: units(m["model2"], "fc1") == 512 and units(m["model1"], "fc1") == 1024),
    ("07_model2", "With 512 units instead of 1,024",
     lambda m: units(m["model2"], "fc1") == 512 and units(m["model1"], "fc1") == 1024),
    ("07_model2", "the flattened vector from 12,544 values to 4,608",
     lambda m: units(m["model1"], "flatten") == 12_544 and units(m["model2"], "flatten") == 4_608),
    ("07_model2", "about 2.4 million parameters instead of 12.8 million",
     lambda m: about(layer(m["model2"], "fc1"), "2.4") and about(layer(m["model1"], "fc1"), "12.8")),
    ("08_model3", "about 140 million parameters", lambda m: about(m["model3"].count_params(), "140")),
    ("08_model3", "hold under two million", lambda m: convolutions(m["model3"]) < 2e6),
    ("08_model3", "134 million weights", lambda m: about(layer(m["model3"], "fc1_dense"), "134")),
    ("10_model5", "The backbone holds about 23.6 million parameters",
     lambda m: about(layer(m["model5"], "resnet50"), "23.6")),
    ("10_model5", "small (about 2.1 million parameters)", lambda m: about(layer(m["model5"], "fc1"), "2.1")),
    ("10_model5", "about 23.5 million: all but its BatchNorm layers' moving statistics",
     lambda m: about(trained(m["model5"].get_layer("resnet50")), "23.5")
     and layer(m["model5"], "resnet50") - trained(m["model5"].get_layer("resnet50")) == sum(
         2 * lay.moving_mean.shape[0] for lay in m["model5"].get_layer("resnet50").layers if hasattr(lay, "moving_mean"))),
    ("11_results", "Model 3, with about 140 million parameters", lambda m: about(m["model3"].count_params(), "140")),
    ("11_results", "which has about 8.9 million", lambda m: about(m["model4"].count_params(), "8.9")),
    ("11_results", "about 23.6 million parameters", lambda m: about(layer(m["model5"], "resnet50"), "23.6")),
    ("12_conclusion", "134 million parameters on a dense layer", lambda m: about(layer(m["model3"], "fc1_dense"), "134")),
    ("13_beyond_the_study", "ResNet-18 has fewer parameters than Model 1, most of whose 13 million sit in one dense layer",
     lambda m: m["resnet18"].count_params() < m["model1"].count_params() and about(m["model1"].count_params(), "13")
     and layer(m["model1"], "fc1") > m["model1"].count_params() / 2),
]


def prose(chapter: str) -> str:
    """A chapter's Markdown cells, lines joined with spaces (a phrase may wrap)."""
    cells = json.loads((BOOK / f"{chapter}.ipynb").read_text(encoding="utf-8"))["cells"]
    return " ".join(" ".join("".join(cell["source"]).split()) for cell in cells if cell["cell_type"] == "markdown")


@pytest.mark.parametrize("chapter, phrase, holds", CLAIMS, ids=[f"{c}: {p[:40]}" for c, p, _ in CLAIMS])
def test_a_stated_count_is_the_models(built, chapter, phrase, holds):
    assert phrase in prose(chapter), f"{chapter} no longer says {phrase!r}: update CLAIMS in {Path(__file__).name}"
    assert holds(built), f"{chapter} says {phrase!r}, which the models tinylib builds contradict"


# a count in millions, in a sentence about parameters or weights (not images)
COUNT = re.compile(r"\b(?:[\d.,]+|a hundred|one|two|three|four|five|ten) million\b(?! images)")


def unregistered(claims, states, split=r"(?<=[.;])\s") -> list[str]:
    """The sentences of the chapters' prose that ``states`` (a predicate) finds stating a fact
    and that no claim's phrase covers, as 'chapter: sentence'."""
    registered = {}
    for chapter, phrase, _ in claims:
        registered.setdefault(chapter, []).append(phrase)
    unchecked = []
    for path in sorted(BOOK.glob("*.ipynb")):
        for sentence in re.split(split, prose(path.stem)):
            if states(sentence) and not any(phrase in sentence or sentence in phrase
                                             for phrase in registered.get(path.stem, [])):
                unchecked.append(f"{path.stem}: {sentence[:160]}")
    return unchecked


def test_every_stated_count_is_registered():
    unchecked = unregistered(CLAIMS, lambda sentence: bool(
        COUNT.search(sentence) and re.search(r"parameter|weight|\bhold|\bsit\b", sentence)))
    assert not unchecked, ("a count stated in the prose and checked by no claim (add it to CLAIMS):\n"
                           + "\n".join(unchecked))


# The layer tables of chapters 6-9 (the study's tables, as the chapters print them): every
# parameter count and output shape typed there is the model's.
LAYER_TABLES = {"06_model1": "model1", "07_model2": "model2", "08_model3": "model3", "09_model4": "model4"}
NUMBER = re.compile(r"\d[\d,]*(?:×\d+)*")


def layer_table(chapter: str) -> list[dict]:
    """The rows of the chapter's first Markdown table with a 'parameters' column, as dicts."""
    cells = json.loads((BOOK / f"{chapter}.ipynb").read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        lines = "".join(cell["source"]).splitlines()
        header = next((i for i, line in enumerate(lines) if line.startswith("|") and "| parameters |" in line), None)
        if cell["cell_type"] != "markdown" or header is None:
            continue
        names = [name.strip() for name in lines[header].strip("|").split("|")]
        rows = []
        for line in lines[header + 2:]:
            if not line.startswith("|"):
                break
            rows.append(dict(zip(names, (value.strip() for value in line.strip().strip("|").split("|")), strict=True)))
        return rows
    raise AssertionError(f"{chapter} has no table with a 'parameters' column")


@pytest.mark.parametrize("chapter, name", LAYER_TABLES.items())
def test_a_chapters_layer_table_is_the_models(built, chapter, name):
    rows = layer_table(chapter)
    model = built[name]
    stated = sorted(int(n.replace(",", "")) for row in rows for n in NUMBER.findall(row["parameters"]))
    counts = sorted(lay.count_params() for lay in model.layers if lay.count_params())
    assert [n for n in stated if n] == counts, f"{chapter}'s table against {name}'s layers"
    # The shapes typed, row by row, are the outputs of the model's layers, in their order.
    shapes = ["×".join(str(d) for d in lay.output.shape[1:]) for lay in model.layers[1:]]  # the input's left out
    typed = [n.replace(",", "") for row in rows for n in NUMBER.findall(row["output"])]
    following = iter(shapes)
    assert typed and all(shape in following for shape in typed), (chapter, typed, shapes)
