"""Publishing and telling a run's score with its BatchNorm statistics re-estimated."""

from __future__ import annotations

import json

import pytest

from tinylib import recalibration, results, stats


def _figures(before=0.3087, after=0.4075, only_before=300, only_after=1288, split="val"):
    return {"split": split, "images_scored": 10_000, "train_images": 20_000, "seed": 0,
            "top1_as_trained": before, "top5_as_trained": 0.57, "top1": after, "top5": 0.66,
            "right_only_as_trained": only_before, "right_only_recalibrated": only_after,
            "mcnemar_p": stats.mcnemar_p(only_before, only_after), "evaluation": object()}


RECORD = {"model": "model4", "profile": "full", "batch_size": 32, "backend": "tensorflow", "device": "CPU: x86_64",
          "dtype_policy": "float32", "epochs": 60, "epochs_run": 33,
          "history": {"val_accuracy": [0.25, 0.3087]}}


def test_a_published_evaluation_names_its_run_and_checkpoint_and_stays_out_of_the_records(tmp_path):
    path = recalibration.publish(_figures(), RECORD, {"epochs_done": 33, "partial": {"batches": 940}},
                                 "model4-full-tensorflow-batch32", tmp_path)
    assert path == tmp_path / "evaluations" / "model4-full-tensorflow-batch32-val-bn-recalibrated.json"
    saved = json.loads(path.read_text())
    assert "evaluation" not in saved and saved["top1"] == 0.4075 and saved["epochs_done"] == 33
    assert saved["batches_into_next_epoch"] == 940
    assert saved["val_top1_recorded"] is None  # a checkpoint inside epoch 34: no validation of its own weights
    assert recalibration.published("model4", tmp_path) == [saved]
    assert recalibration.published("model3", tmp_path) == []
    assert results.every_full_scale_record(tmp_path) == []  # the book's record readers do not see it


def test_the_figure_a_run_recorded_for_its_checkpoints_weights():
    """The epoch a run folder's checkpoint holds: the last one done, early stopping's best one
    once the run's end has put those back, none for a checkpoint inside an epoch."""
    history = {"val_accuracy": [0.10, 0.25, 0.31, 0.29]}
    record = {"epochs_run": 4, "history": history, "callbacks": ["early_stopping"]}
    running = {"epochs_done": 4, "checkpoint": "checkpoint-epoch-004.weights.h5", "best_weights": "best-epoch-003.npz",
               "history": history}
    assert recalibration.recorded_score(record, running) == (4, 0.29, False)
    final = {**running, "checkpoint": "final.weights.h5"}
    assert recalibration.recorded_score(record, final) == (3, 0.31, True)
    assert recalibration.recorded_score(record, final).label() == "epoch 3, early stopping's best by validation loss"
    assert recalibration.recorded_score({**record, "callbacks": []}, final) == (4, 0.29, False)
    # A state from before the best weights were named by epoch: early stopping's own best_epoch (0-based).
    older = {**final, "best_weights": "best-weights.npz",
             "callbacks": {"0": {"wait": 1, "best": 2.9, "best_epoch": 1, "stopped_epoch": 0},
                           "1": {"wait": 0, "best": 2.9, "cooldown_counter": 0}}}
    assert recalibration.recorded_score(record, older) == (2, 0.25, True)
    assert recalibration.recorded_score(record, {**older, "callbacks": {}}) is None
    assert recalibration.recorded_score(record, {**running, "partial": {"batches": 10}}) is None
    assert recalibration.recorded_score(record, {**running, "epochs_done": 5}) is None
    assert recalibration.recorded_score(record, None) is None  # no state: no checkpoint
    # The state's history goes with its epochs_done; a record written a moment later may lag.
    lagging = {**record, "history": {"val_accuracy": history["val_accuracy"][:3]}}
    assert recalibration.recorded_score(lagging, running) == (4, 0.29, False)
    assert recalibration.recorded_score(lagging, {**running, "history": {}}) is None

    line, same = recalibration.against_record(0.3054, recalibration.Recorded(3, 0.31, False), 10_000)
    assert same and line == "the checkpoint (epoch 3) scores 30.54%; the run recorded 31.00% at that epoch"
    line, same = recalibration.against_record(0.2950, recalibration.Recorded(3, 0.31, False), 10_000)
    assert not same and "probably not the weights or the images the run validated with" in line
    assert recalibration.against_record(0.2500, recalibration.Recorded(1, 0.30, False), 20)[1]  # one image of 20
    assert not recalibration.against_record(0.2000, recalibration.Recorded(1, 0.30, False), 20)[1]  # two

    checked = recalibration.check_against_record
    with pytest.raises(ValueError, match="nothing is published"):
        checked(0.3054, 10_000, record, running, publishing=True)  # epoch 4 recorded 29%, not 30.54%
    assert checked(0.2954, 10_000, record, running, publishing=True).startswith("the checkpoint (epoch 4) scores")
    assert checked(0.10, 10_000, record, running, publishing=False).startswith("warning: ")
    assert "inside an epoch" in checked(0.10, 10_000, record, {**running, "partial": {"batches": 3}}, True)
    with pytest.raises(ValueError, match="another checkpoint while this one was loaded"):
        checked(0.2954, 10_000, record, None, publishing=True)
    assert "not checked" in checked(0.2954, 10_000, record, None, publishing=False)


def test_the_story_weighs_both_scores_against_each_other_and_the_study(tmp_path):
    assert "not yet measured" in recalibration.story("model4", tmp_path)
    assert "--recalibrate-bn 20000" in recalibration.story("model4", tmp_path)
    recalibration.publish(_figures(), RECORD, {"epochs_done": 34}, "model4-full-tensorflow-batch32", tmp_path)
    story = recalibration.story("model4", tmp_path)
    assert "(model4-batch32, batch 32, float32), after epoch 34 of its 60 planned," in story
    assert "of the next" not in story
    assert story.endswith(" No record of this run is published beside it (`model4-full-tensorflow-batch32.json`).")
    recalibration.publish(_figures(), RECORD, {"epochs_done": 34, "partial": {"batches": 940}},
                          "model4-full-tensorflow-batch32", tmp_path)  # a checkpoint inside an epoch
    assert "after epoch 34 of its 60 planned and 940 batches of the next, scores" in recalibration.story("model4", tmp_path)
    assert "30.87% on the 10,000 validation images with the statistics its training left" in story
    assert "40.75% once they are re-estimated over 20,000 training images" in story
    assert "1,288 images are right only after the re-estimate and 300 only before it, a change beyond noise" in story
    assert f"(McNemar's exact test, p = {stats.mcnemar_p(300, 1288):.2g})." in story
    assert "As trained it is below, beyond noise, the study's 38.61%; re-estimated, above, beyond noise, it." in story
    recalibration.publish(_figures(0.3087, 0.3110, 400, 423), RECORD, {"epochs_done": 34},
                          "model4-full-tensorflow-batch32", tmp_path)  # replaced, not added
    assert "a change not shown beyond noise" in recalibration.story("model4", tmp_path)
    assert len(recalibration.published("model4", tmp_path)) == 1
    other = {**RECORD, "optimizer": "SGD"}  # not the study's model trained the study's way: no study sentence
    recalibration.publish(_figures(), other, {"epochs_done": 34}, "model4-full-tensorflow-batch32-sgd", tmp_path)
    assert recalibration.story("model4", tmp_path).count("the study's 38.61%") == 1


def test_an_evaluation_says_where_its_weights_are_not_those_of_the_record_beside_it(tmp_path, capsys):
    """A record replaced after its evaluation was published (another run, or the same run at
    another epoch): the chapter's sentences say so, beside the figures they still give."""
    import matplotlib

    matplotlib.use("Agg")
    name = "model4-full-tensorflow-batch32"
    history = {"val_accuracy": [0.20 + 0.001 * k for k in range(34)]}
    beside = {**RECORD, "epochs_run": 34, "history": history}
    (tmp_path / f"{name}.json").write_text(json.dumps(beside))
    recalibration.publish(_figures(), beside, {"epochs_done": 34, "history": history}, name, tmp_path)
    (e,) = recalibration.published("model4", tmp_path)
    assert e["val_top1_recorded"] == history["val_accuracy"][33] and e["val_top1_recorded_epoch"] == 34
    assert recalibration.beside_its_record(e, tmp_path) == ""  # its own record: nothing to say
    assert "not those of the run's published record" not in recalibration.story("model4", tmp_path)
    another = f" These figures are of another run of this name than the record beside them (`{name}.json`): "
    cases = [  # the record published in its place, and what the sentence says
        ({**beside, "dtype_policy": "mixed_bfloat16"}, another + "trained in float32, the record's run in mixed_bfloat16."),
        ({**beside, "history": {"val_accuracy": [0.1] * 34}},
         another + "their run's validation top-1 at epoch 34 was 23.30%, the record's 10.00%."),
        # The same run, its record published at epoch 30 (before its plan was raised, say): a later epoch.
        ({**beside, "epochs": 30, "epochs_run": 30, "history": {"val_accuracy": history["val_accuracy"][:30]}},
         f" These figures are of epoch 34, beyond the 30 epochs of the record beside them (`{name}.json`)."),
    ]
    for record, expected in cases:
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
        assert recalibration.beside_its_record(e, tmp_path) == expected
        assert recalibration.story("model4", tmp_path).endswith(expected)
    # A file from before the recorded figure kept its epoch: its own score with the statistics
    # training left stands for it, to float noise.
    (tmp_path / f"{name}.json").write_text(json.dumps(beside))
    older = {k: v for k, v in e.items() if k not in ("val_top1_recorded", "val_top1_recorded_epoch")}
    assert recalibration.beside_its_record({**older, "top1_as_trained": 0.2375}, tmp_path) == ""  # 23.30%, noise
    assert "at epoch 34 was 30.87%" in recalibration.beside_its_record(older, tmp_path)
    recalibration.publish_augmentation_scores({"the statistics training left": 0.30}, 20_000, 10_000, beside,
                                              {"epochs_done": 34}, name, tmp_path, validation_augmented=0.31)
    record, expected = cases[-1]
    (tmp_path / f"{name}.json").write_text(json.dumps(record))
    assert recalibration.augmented_validation_story("model4", tmp_path).endswith(expected)
    title = recalibration.show_augmentation_scores("model4", tmp_path).axes[0].get_title()
    assert "These figures are of epoch 34, beyond the 30 epochs of the record beside them" in title
    (tmp_path / f"{name}.json").unlink()
    assert "No record of this run is published beside it" in recalibration.beside_its_record(e, tmp_path)


def test_mcnemars_exact_test_matches_the_binomial_tail():
    assert stats.mcnemar_p(0, 0) == 1.0 and stats.mcnemar_p(3, 3) == 1.0
    assert stats.mcnemar_p(0, 5) == stats.mcnemar_p(5, 0) == 2 / 32  # both ends of Binomial(5, 1/2)
    assert stats.mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)
    assert stats.mcnemar_p(300, 1288) < 1e-100
    with pytest.raises(ValueError):
        stats.mcnemar_p(-1, 2)
    # Printed, a p below the floats' range is "< 1e-300", not "= 0" (the exact tail underflows).
    assert stats.p_text(0.031) == "p = 0.031" and stats.p_text(7.4e-198) == "p = 7.4e-198"
    assert stats.mcnemar_p(0, 5000) == 0.0 and stats.p_text(stats.mcnemar_p(0, 5000)) == "p < 1e-300"


def test_only_full_scale_evaluations_are_published_where_the_book_reads_them():
    recalibration.check_publishable(RECORD, "model4-full-tensorflow-batch32")
    with pytest.raises(ValueError, match="'smoke'-profile run: the book publishes evaluations of full-scale runs"):
        recalibration.check_publishable({**RECORD, "profile": "smoke"}, "model4-smoke-tensorflow")


def test_the_augmentation_scores_are_published_beside_the_run_and_drawn_one_bar_each(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    assert recalibration.show_augmentation_scores("model4", tmp_path) is None
    assert "not yet measured" in capsys.readouterr().out
    scores = {"the statistics training left": 0.3375, "none (the images as they are)": 0.4138,
              "geometry only": 0.3237}
    recalibration.publish_augmentation_scores(scores, 20_000, 10_000, RECORD, {"epochs_done": 37},
                                              "model4-full-tensorflow-batch32", tmp_path)  # measured before it had one
    assert "not yet measured" in recalibration.augmented_validation_story("model4", tmp_path)
    settings = {"none (the images as they are)": None, "geometry only": {"rotation_range": 20.0},
                "all, at half the ranges": {"rotation_range": 10.0}}  # a variant not scored is left out
    path = recalibration.publish_augmentation_scores(scores, 20_000, 10_000, RECORD, {"epochs_done": 37},
                                                     "model4-full-tensorflow-batch32", tmp_path, settings=settings,
                                                     validation_augmented=0.3012)
    assert path == tmp_path / "evaluations" / "model4-full-tensorflow-batch32-bn-statistics.json"
    saved = json.loads(path.read_text())
    assert saved["scores"] == scores and saved["epochs_done"] == 37 and saved["key"] == "model4-batch32"
    assert saved["settings"] == {"none (the images as they are)": None, "geometry only": {"rotation_range": 20.0}}
    assert saved["validation_augmented_top1"] == 0.3012
    assert recalibration.published("model4", tmp_path) == []  # not a re-estimated evaluation
    fig = recalibration.show_augmentation_scores("model4", tmp_path)
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == list(scores)  # top to bottom
    assert list(ax.get_yticks()) == sorted(ax.get_yticks(), reverse=True)
    assert sorted(round(bar.get_width(), 4) for bar in ax.patches) == sorted(scores.values())
    assert "after epoch 37" in ax.get_title() and "38.61%" in ax.get_legend().get_texts()[0].get_text()
    assert "scores 30.12% on its 10,000 validation images passed once through the run's own augmentation, against " \
           "33.75% on the same images as they are" in recalibration.augmented_validation_story("model4", tmp_path)
    assert "not yet measured" in recalibration.augmented_validation_story("model3", tmp_path)

