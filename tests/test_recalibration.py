"""Publishing and telling a run's score with its BatchNorm statistics re-estimated."""

from __future__ import annotations

import json

from tinylib import recalibration, results


def _figures(before=0.3087, after=0.4075, split="val"):
    return {"split": split, "images_scored": 10_000, "train_images": 20_000, "seed": 0,
            "top1_as_trained": before, "top5_as_trained": 0.57, "top1": after, "top5": 0.66, "evaluation": object()}


RECORD = {"model": "model4", "profile": "full", "batch_size": 32, "backend": "tensorflow", "device": "CPU: x86_64",
          "dtype_policy": "float32", "epochs": 60, "epochs_run": 33,
          "history": {"val_accuracy": [0.25, 0.3087]}}


def test_a_published_evaluation_names_its_run_and_checkpoint_and_stays_out_of_the_records(tmp_path):
    path = recalibration.publish(_figures(), RECORD, {"epochs_done": 33, "partial": {"batches": 940}},
                                 "model4-full-tensorflow-batch32", tmp_path)
    assert path == tmp_path / "evaluations" / "model4-full-tensorflow-batch32-val-bn-recalibrated.json"
    saved = json.loads(path.read_text())
    assert "evaluation" not in saved and saved["top1"] == 0.4075 and saved["epochs_done"] == 33
    assert saved["batches_into_next_epoch"] == 940 and saved["val_top1_recorded"] == 0.3087
    assert recalibration.published("model4", tmp_path) == [saved]
    assert recalibration.published("model3", tmp_path) == []
    assert results.every_full_scale_record(tmp_path) == []  # the book's record readers do not see it


def test_the_story_weighs_both_scores_against_each_other_and_the_study(tmp_path):
    assert "not yet measured" in recalibration.story("model4", tmp_path)
    assert "--recalibrate-bn 20000" in recalibration.story("model4", tmp_path)
    recalibration.publish(_figures(), RECORD, {"epochs_done": 34}, "model4-full-tensorflow-batch32", tmp_path)
    story = recalibration.story("model4", tmp_path)
    assert "after epoch 34 of its 60 planned" in story and "batches of the next" not in story
    assert "30.87% on the 10,000 validation images with the statistics its training left" in story
    assert "40.75% once they are re-estimated over 20,000 training images" in story
    assert "(above, beyond noise, the first, with the same weights)" in story
    assert "As trained it is below, beyond noise, the study's 38.61%; re-estimated, above, beyond noise, it." in story
    recalibration.publish(_figures(0.3087, 0.3110), RECORD, {"epochs_done": 34}, "model4-full-tensorflow-batch32",
                          tmp_path)  # replaced, not added
    assert "(within noise of the first" in recalibration.story("model4", tmp_path)
    assert len(recalibration.published("model4", tmp_path)) == 1
