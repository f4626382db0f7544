"""tinylib.augment_speed: the study's generator and tinylib's layer timed on the same images."""

from __future__ import annotations

import numpy as np
import pytest

from tinylib import augment, augment_speed


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)


def test_every_pipeline_augments_a_batch_into_the_models_range(images):
    head = augment_speed.model_head()
    pipelines = {"generator": augment_speed.generator_flow(images, 4), "eager": augment_speed.layer_eager(head),
                 "compiled": augment_speed.layer_compiled(head)}
    for name, pipeline in pipelines.items():
        out = np.asarray(pipeline(images[:4]))
        assert out.shape == (4, 64, 64, 3), name
        assert 0.0 <= out.min() and out.max() <= 1.2 * 1.0001, name  # rescaled; brightness up to 1.2
        assert not np.allclose(out, images[:4] / 255, atol=1e-3), f"{name} left the batch unaugmented"


def test_the_study_generator_is_keras_own_with_the_studys_settings():
    generator = augment_speed.study_generator()
    assert isinstance(generator, augment.image_data_generator_class())
    assert generator.rescale == pytest.approx(1 / 255) and generator.rotation_range == 20
    assert generator.fill_mode == "nearest" and generator.horizontal_flip
    assert list(generator.brightness_range) == [0.8, 1.2]


def test_rates_warm_up_once_then_take_each_pipelines_best_round(images, monkeypatch):
    calls = {"a": 0, "b": 0}

    def counting(name):
        def pipeline(batch):
            calls[name] += 1
            return batch
        return pipeline

    rates = augment_speed.best_rates({"a": counting("a"), "b": counting("b")}, images, batch=4, rounds=3)
    assert set(rates) == {"a", "b"}
    assert calls == {"a": 1 + 3 * 2, "b": 1 + 3 * 2}  # a warm-up batch, then two whole batches a round
    # each pipeline's best round, not its last or its mean: rounds scripted a, b, a, b, a, b
    scripted = iter([5.0, 1.0, 9.0, 3.0, 7.0, 2.0])
    monkeypatch.setattr(augment_speed, "rate", lambda pipeline, images, batch: next(scripted))
    assert augment_speed.best_rates({"a": counting("a"), "b": counting("b")}, images, batch=4) == {"a": 9.0, "b": 3.0}
    monkeypatch.undo()
    with pytest.raises(ValueError, match="no batch of 16"):
        augment_speed.rate(counting("a"), images, batch=16)
    with pytest.raises(ValueError, match="gave"):
        augment_speed.rate(lambda batch: batch[:1], images, batch=4)


def test_epoch_lines_give_each_rate_and_the_seconds_of_an_epoch():
    lines = augment_speed.epoch_lines({"ImageDataGenerator (study)": 2_000.0, "layer": 50_000.0}, 100_000)
    assert lines.splitlines() == ["  ImageDataGenerator (study)     2,000 images/s ->     50.0 s an epoch",
                                  "  layer                         50,000 images/s ->      2.0 s an epoch"]
