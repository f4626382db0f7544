"""Why a full-scale row sits where it does against the study: its curves, read as evidence.

A run that ends short of the study's figure is not yet a finding. Before more hours go
into it, its record answers the first questions: how far short it is in units of the
run's own epoch-to-epoch swing, whether it fit its training images as far as the
study's model did, whether validation accuracy was still rising when it ended, and
where the learning rate fell. ``gap_story`` writes that paragraph from the record
(``results.show_full_scale`` shows it under a chapter's full-scale paragraph); every
number in it is computed here, none typed in.
"""

from __future__ import annotations

import numpy as np

from tinylib import results
from tinylib.batches import steps_per_epoch
from tinylib.results import pct

TREND_EPOCHS = 5  # the shortest recent stretch whose least-squares slope says "still rising"
GAP_VERDICT_EPOCHS = 10  # fewer: the epoch-averaged training accuracy still lags, in any run
# The batch Keras takes when a script names none: Model.fit's default, and that of
# ImageDataGenerator's flow and flow_from_directory, the loaders of the transforms the study names.
KERAS_DEFAULT_BATCH = 32


def _curves(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """A record's validation and training accuracy, one value an epoch."""
    history = record["history"]
    return (np.asarray(history["val_accuracy"], dtype=float), np.asarray(history["accuracy"], dtype=float))


def curve_facts(record: dict) -> dict:
    """The numbers a diagnosis reads from a record's history (fractions, 1-based epochs).

    ``swing`` is the median change of validation accuracy from one epoch to the next
    over the second half of the run (None with fewer than 4 epochs); ``trend`` the
    least-squares slope of validation accuracy over the second half of the run (its last
    ``TREND_EPOCHS`` epochs at least), per epoch, and ``trend_error`` the slope's standard
    error (None with fewer than 3 epochs in the stretch); ``lowered_at`` the epochs that began with a lower learning rate than the
    one before; ``epoch_seconds`` the median epoch time, validation included.
    """
    history = record["history"]
    val, train = _curves(record)
    epochs = len(val)
    second_half = val[epochs // 2:]
    recent = val[-max(TREND_EPOCHS, epochs // 2):]
    trend, trend_error = _slope(recent) if len(recent) >= 3 else (None, None)
    rates = np.asarray(history.get("learning_rate") or [], dtype=float)
    seconds = history.get("seconds") or []
    return {
        "epochs": epochs,
        "best_epoch": int(np.argmax(val)) + 1,
        "best_val": float(val.max()),
        "max_train": float(train.max()),
        "swing": float(np.median(np.abs(np.diff(second_half)))) if epochs >= 4 else None,
        "trend": trend,
        "trend_error": trend_error,
        "trend_epochs": len(recent),
        "lowered_at": [int(i) + 1 for i in np.flatnonzero(rates[1:] < rates[:-1] * (1 - 1e-6)) + 1],
        "epoch_seconds": float(np.median(seconds)) if seconds else None,
    }


def _slope(values: np.ndarray) -> tuple[float, float]:
    """The least-squares slope of ``values`` against their index, and its standard error
    (the residuals' variance on n - 2 degrees of freedom over the spread of the index)."""
    x = np.arange(len(values), dtype=float)
    slope, intercept = np.polyfit(x, values, 1)
    residuals = values - (slope * x + intercept)
    spread = float(np.sum((x - x.mean()) ** 2))
    return float(slope), float(np.sqrt(np.sum(residuals ** 2) / (len(values) - 2) / spread))


def rising_beyond_noise(facts: dict) -> bool:
    """Whether the recent slope is above zero by more than two standard errors."""
    return facts["trend"] is not None and facts["trend"] > 2 * facts["trend_error"]


def _first_epoch_at(values: np.ndarray, level: float) -> int | None:
    """The first 1-based epoch whose value reaches ``level``, None if none does.  Keras keeps
    accuracies in float32, whose nearest value to 0.3861 is just below it: an epoch that
    scores the study's exact count reaches it (the slack is far below one image in 10,000)."""
    reached = np.flatnonzero(values >= level - 1e-6)
    return int(reached[0]) + 1 if reached.size else None


def _points(fraction: float) -> str:
    return f"{fraction * 100:.2f}"


def gap_story(model: str, folder=None) -> str:
    """A paragraph (Markdown) on why a model's full-scale run stands where it does against
    the study's validation figure, read from its record; "" without a record or a study row."""
    study = results.STUDY_RESULTS.get(model)
    record = results.full_scale_records(folder).get(model)
    if study is None or record is None or not (record.get("history") or {}).get("val_accuracy"):
        return ""
    facts = curve_facts(record)
    reached = _first_epoch_at(_curves(record)[0], study["val"])
    if reached is not None:
        return (f"**Against the study's figure:** its validation accuracy first reached the study's "
                f"{pct(study['val'])} at epoch {reached} of the {facts['epochs']} it ran.")
    sentences = [*_gap_sentences(facts, study, record), *_fit_sentences(record, study),
                 *_batch_sentences(record, facts),
                 *_trend_sentences(facts),
                 *_end_sentences(facts, *results.run_end(record),
                                 early_stopping="early_stopping" in (record.get("callbacks") or []),
                                 patience=_patience(record))]
    return " ".join(sentences)


def _gap_sentences(facts: dict, study: dict, record: dict) -> list[str]:
    """How far the best epoch is below the study's figure, in points and in epoch-to-epoch
    swings, and whether that is beyond the noise of the two validation sets."""
    gap = study["val"] - facts["best_val"]
    n = results.val_images(record)
    noise = results.standing(facts["best_val"], n, study["val"], results.STUDY_VAL_IMAGES) == "within noise of"
    so_far = " so far" if results.run_end(record)[0] == "unfinished" else ""
    heading = (f"Below the study's {pct(study['val'])}{so_far}, within noise" if noise
               else f"Why it is short of the study's {pct(study['val'])}{so_far}")
    sentences = [f"**{heading}:** its best epoch ({facts['best_epoch']} of {facts['epochs']}) is {_points(gap)} "
                 f"points below it{', a gap these validation sets do not show beyond noise (the intervals overlap)' if noise else ''}."]
    if facts["swing"]:
        sentences.append(f"From one epoch to the next its validation accuracy moved by a median "
                         f"{_points(facts['swing'])} points over the second half of the run, so the gap is "
                         f"{gap / facts['swing']:.1f} such swings.")
    return sentences


def _fit_sentences(record: dict, study: dict) -> list[str]:
    """Whether the run fit its training images as far as the study's model did, and what
    the train-validation gap against the study's says about the training task's difficulty."""
    val, train = _curves(record)
    at_study_fit = _first_epoch_at(train, study["train"])
    if at_study_fit is not None:
        there = val[at_study_fit - 1]
        n = results.val_images(record)
        standing = results.standing(there, n, study["val"], results.STUDY_VAL_IMAGES)
        validates = ("about as well as the study's, within noise" if standing == "within noise of"
                     else "lower" if there < study["val"] else "higher")
        return [f"Its training accuracy reached the study's {pct(study['train'])} at epoch {at_study_fit}, where "
                f"its validation accuracy was {pct(there)}: at the study's fit to the training "
                f"images, this run validates {validates}."]
    ours, theirs = train[-1] - val[-1], study["train"] - study["val"]
    side = lambda d: f"{_points(abs(d))} points {'above' if d > 0 else 'below'}"  # noqa: E731
    regularizers = _regularizers(record)
    harder = f"this run's {regularizers['which']}" if regularizers["which"] else "anything in this run"
    if ours >= theirs:
        verdict = (f"That is no sign that {harder} made its training task harder than the study's: a harder one "
                   "would hold training accuracy further below validation accuracy, and the likelier difference "
                   "is how many training steps each took")
    elif len(train) < GAP_VERDICT_EPOCHS:
        verdict = (f"After {len(train)} epochs that says little: Keras averages training accuracy over each epoch "
                   "while the weights still improve, which holds it below validation accuracy early in any run, "
                   "whatever the augmentation")
    else:
        verdict = (f"That is a sign that this run's training task is harder than the study's was (stronger "
                   f"{regularizers['stronger']}): a harder one holds training accuracy further below validation accuracy")
    measured = f" ({regularizers['measured']}, as Keras measures it)" if regularizers["measured"] else ""
    end, run, planned = results.run_end(record)
    if end == "unfinished":  # the epochs it has left come first, before any other reason
        fit = (f"Its training accuracy{measured} reached {pct(float(train.max()))} so far, below the study's "
               f"{pct(study['train'])}: after {run} of its {planned} epochs this run had not yet fit its training "
               f"images as far as the study's model did.")
    else:
        fit = (f"Its training accuracy{measured} reached "
               f"{pct(float(train.max()))}, below the study's {pct(study['train'])}: this run had not fit its "
               f"training images as far as the study's model did. Either the study's model took more training "
               f"steps (more epochs, or smaller batches), or its training task was easier (milder augmentation); "
               f"its slides give none of its epochs, its batch size or its augmentation's ranges.")
    return [fit,
            f"At its last epoch its training accuracy sat {side(ours)} its validation accuracy, the "
            f"study's {side(theirs)}. {verdict}."]


def _regularizers(record: dict) -> dict:
    """What made the run's training task harder than its validation, in words: the
    augmentation (when the record has one) and dropout (when the model has a rate above 0)."""
    present = [(name, measured) for name, measured, on in (
        ("augmentation", "on augmented images", bool(record.get("augmentation"))),
        ("dropout", "with dropout", float((record.get("build_options") or {}).get("dropout") or 0.0) > 0)) if on]
    names = [name for name, _ in present]
    return {"which": " and ".join(names), "stronger": " or ".join(names) or "regularization",
            "measured": ", ".join(measured for _, measured in present)}


def _batch_sentences(record: dict, facts: dict) -> list[str]:
    """The optimizer steps an epoch took, against those of Keras' default batch: at one
    learning rate, four times the steps is four times the updates an epoch."""
    batch = record.get("batch_size")
    images = (record.get("dataset") or {}).get("train_images")
    if not batch or not images or batch <= KERAS_DEFAULT_BATCH:  # as many steps as the default's, or more
        return []
    steps, default_steps = steps_per_epoch(images, batch), steps_per_epoch(images, KERAS_DEFAULT_BATCH)
    rate = record.get("learning_rate")
    at = f" at a learning rate {'starting at' if facts['lowered_at'] else 'of'} {rate:g}" if rate else ""
    return [f"It trained on batches of {batch} images: {steps:,} optimizer steps an epoch{at}. The study's slides "
            f"give no batch size, and Keras' default (in `fit`, and in `ImageDataGenerator`'s `flow`) is "
            f"{KERAS_DEFAULT_BATCH}: {default_steps:,} steps an epoch, {default_steps / steps:.1f} times as many "
            f"updates at the same rate, had the study kept it."]


def _trend_sentences(facts: dict) -> list[str]:
    """The least-squares slope of validation accuracy over the last epochs."""
    if facts["trend"] is None:
        return []
    direction = "rose" if facts["trend"] > 0 else "fell"
    beyond = abs(facts["trend"]) > 2 * facts["trend_error"]
    return [f"Over its last {facts['trend_epochs']} epochs validation accuracy {direction} by "
            f"{_points(abs(facts['trend']))} points an epoch (least-squares slope, standard error "
            f"{_points(facts['trend_error'])}){'' if beyond else ', within two standard errors of zero'}."]


def _patience(record: dict) -> dict[str, int]:
    """The patience of each of the record's callbacks that has one, by name (``runs.recorded_callback_settings``)."""
    from tinylib.runs import recorded_callback_settings

    settings = recorded_callback_settings(record) or {}
    return {name: int(each["patience"]) for name, each in settings.items() if isinstance(each, dict) and "patience" in each}


def _end_sentences(facts: dict, end: str, run: int, planned: int, early_stopping: bool = False,
                   patience: dict | None = None) -> list[str]:
    """Where the learning rate fell and how the run ended: early stopping (with the two
    callbacks' patience, which bounds how long a lowered rate trains), epochs run out, or
    unfinished with the hours left at its median epoch."""
    patience = patience or {}
    sentences = []
    if facts["lowered_at"]:
        last = facts["lowered_at"][-1]
        epochs = ", ".join(str(e) for e in facts["lowered_at"])
        lowered = f"The learning rate was lowered for epoch{'s' if len(facts['lowered_at']) > 1 else ''} {epochs}"
        if end == "stopped early":
            lowered += f"; early stopping ended the run after epoch {run}, so the last, lowest rate trained {run - last + 1}"
            lowered += " epoch" if run == last else " epochs"
            if {"early_stopping", "reduce_lr_on_plateau"} <= set(patience):
                stop, plateau = patience["early_stopping"], patience["reduce_lr_on_plateau"]
                lowered += (f" (its early stopping waited {stop} epochs without improvement, its rate reduction "
                            f"{plateau})")
            lowered += "."
        else:
            lowered += "."
        sentences.append(lowered)
    elif end == "stopped early":
        sentences.append(f"Early stopping ended it after epoch {run} without the learning rate ever being lowered.")
    if end == "unfinished" and facts["epoch_seconds"]:
        left = planned - run
        hours = f"{left * facts['epoch_seconds'] / 3600:.1f} h at its median epoch of {facts['epoch_seconds'] / 60:.1f} min"
        if early_stopping:  # its epochs are a cap: early stopping may end it long before
            sentences.append(f"At most {left} of its {planned} epochs are left, a cap that early stopping may end "
                             f"sooner: at most about {hours}.")
        else:
            sentences.append(f"{left} of its {planned} epochs are left: about {hours}.")
    elif end == "finished" and rising_beyond_noise(facts):
        sentences.append("It was still rising when its planned epochs ran out.")
    elif end == "finished" and facts["trend"] is not None and facts["trend"] > 0:
        sentences.append(f"Whether it was still rising when its planned epochs ran out, its last "
                         f"{facts['trend_epochs']} epochs cannot say.")
    return sentences


# --- the batch: the same run at two batch sizes ---------------------------------------------


def _batch_candidates(model: str, folder=None) -> tuple[dict | None, list[dict]]:
    """The profile's run of ``model`` (or the first found) and every full-scale record of it
    trained the study's way at any batch that can be placed by its steps (a record without
    a dataset size or a validation curve cannot)."""
    def placeable(record: dict) -> bool:
        return bool((record.get("dataset") or {}).get("train_images") and record.get("batch_size")
                    and (record.get("history") or {}).get("val_accuracy"))

    found = [r for r in results.every_full_scale_record(folder)
             if results.the_studys_way(r, model) and placeable(r)]
    reference = next((r for r in found if results.record_key(r) == model), found[0] if found else None)
    return reference, found


def precision_checked(model: str, policies, folder=None) -> dict | None:
    """The book's precision check (``results.precision_check``, chapter 13) of the one
    16-bit policy among ``policies`` against float32, if it found the two within noise:
    {'policy', 'model', 'epochs', 'best': {policy: best val top-1}, 'n'}; else None (no
    check, a check beyond noise, or two policies that neither is float32). The check of
    ``model`` itself where it can be read (``results.precision_check``: its record and a
    float32 run of at least its epochs), else the book's, on Model 2."""
    from tinylib import stats

    other = set(policies) - {"float32"}
    if len(other) != 1 or "float32" not in set(policies):
        return None
    policy = other.pop()
    checks = ((m, results.precision_check(m, policy, folder)) for m in dict.fromkeys((model, "model2")))
    checked_model, check = next(((m, c) for m, c in checks if c is not None), (None, None))
    if check is None:
        return None
    run = check["records"][1]
    n = results.val_images(run)
    best = {label: max(check[label]["val_accuracy"]) for label in ("float32", policy)}
    if not stats.within_noise(best[policy], n, best["float32"], n):
        return None
    return {"policy": policy, "model": checked_model, "epochs": int(run["epochs_run"]), "best": best, "n": n}


def _beyond_the_batch(reference: dict, record: dict, folder=None) -> list[str]:
    """How ``record`` differs from ``reference`` in more than its batch (``runs.IDENTITY``), in
    words. A precision that the book's precision check found to train within noise of float32
    is not counted: the story names it (``_precision_note``) instead of setting the run aside.
    Nor is early stopping's patience: it decides only where a run ends, not what it trains
    before (the rate's reduction does, and counts), and the story says where each run ended
    and with which patience (``_stopping_note``)."""
    from tinylib.runs import identity_differences

    same = {"batch_size": None}
    policies = {reference.get("dtype_policy"), record.get("dtype_policy")}
    if len(policies) == 2 and precision_checked(record.get("model"), policies, folder):
        same["dtype_policy"] = None
    return identity_differences({**reference, **same}, {**record, **same, **_stopping_as(reference, record)})


def _stopping_as(reference: dict, record: dict) -> dict:
    """``record``'s callback settings with ``reference``'s early-stopping patience, where both
    stop early ({} otherwise): the one setting a comparison of their curves can leave aside."""
    from tinylib.runs import recorded_callback_settings

    ours, theirs = recorded_callback_settings(record), recorded_callback_settings(reference)
    if not ours or not theirs or not isinstance(ours.get("early_stopping"), dict) \
            or not isinstance(theirs.get("early_stopping"), dict) or "patience" not in theirs["early_stopping"]:
        return {}
    stopping = {**ours["early_stopping"], "patience": theirs["early_stopping"]["patience"]}
    return {"callback_settings": {**ours, "early_stopping": stopping}}


def _stopping_note(runs: dict[int, dict]) -> list[str]:
    """Where the runs compared waited differently before stopping early: each one's patience."""
    patience = {batch: _patience(record).get("early_stopping") for batch, record in runs.items()}
    if None in patience.values() or len(set(patience.values())) < 2:
        return []
    each = ", ".join(f"batch {batch} {wait} epochs" for batch, wait in patience.items())
    return [f"Their early stopping waited differently for an improvement ({each}; the rate's reduction the same), "
            f"which moves where a run ends, not what it trained before."]


def _precision_note(model: str, runs: dict[int, dict], folder=None) -> list[str]:
    """Where the runs compared differ in precision too: which trained in which, and the check
    whose verdict lets them be compared, with its figures."""
    policies = {batch: record.get("dtype_policy") for batch, record in runs.items()}
    checked = precision_checked(model, set(policies.values()), folder)
    if checked is None:
        return []
    which = ", ".join(f"batch {batch} in {policy}" for batch, policy in policies.items())
    policy, best = checked["policy"], checked["best"]
    own = checked["model"] == model
    title = results.model_title(model)
    of = title if own else results.model_title(checked["model"])
    assumes = ("over a whole run, which that check did not test" if own else
               f"for {title} too, over a whole run, which that check on another model did not test")
    return [f"The runs differ in their arithmetic too ({which}). They are compared because the book's precision "
            f"check (chapter 13) found no difference beyond noise between {policy} and float32 over the first "
            f"{checked['epochs']} epochs of {of} at full scale ({pct(best[policy])} against "
            f"{pct(best['float32'])} at best); the comparison assumes that this holds {assumes}."]


def by_batch(model: str, folder=None) -> dict[int, dict]:
    """The model's full-scale records trained the study's way that differ from the profile's
    run in their batch alone (``runs.IDENTITY``; a precision the book's check found within
    noise of float32 aside), the best for each batch size, smallest batch first: the runs
    ``batch_story`` and ``plots.curves_by_steps`` compare. A record without a dataset size
    or a validation curve cannot be placed by its steps: left out."""
    reference, found = _batch_candidates(model, folder)
    best: dict[int, dict] = {}
    for record in found:
        if _beyond_the_batch(reference, record, folder):
            continue  # another optimizer, precision, seed, augmentation...: not the batch alone
        batch = int(record["batch_size"])
        if batch not in best or record["best_val_top1"] > best[batch]["best_val_top1"]:
            best[batch] = record
    return dict(sorted(best.items()))


def batch_curves(model: str, folder=None) -> dict[str, dict]:
    """``by_batch``'s records labelled for a figure (``plots.curves_by_steps``): 'batch 32', and
    the arithmetic too where the runs differ in it ('batch 32 (float32)'); an unfinished run's
    label says so, for a line that stops short of the others ('batch 32, so far')."""
    runs = by_batch(model, folder)
    policies = {record.get("dtype_policy") for record in runs.values()}
    return {f"batch {batch}" + (f" ({record.get('dtype_policy')})" if len(policies) > 1 else "")
            + (", so far" if results.run_end(record)[0] == "unfinished" else ""): record
            for batch, record in runs.items()}


def record_steps_per_epoch(record: dict) -> int:
    """The optimizer steps one epoch of a record's run took."""
    return steps_per_epoch(int(record["dataset"]["train_images"]), int(record["batch_size"]))


def _rate_note(record: dict, epochs: int) -> str:
    """Whether the run's learning rate had been lowered within its first ``epochs`` epochs."""
    lowered = [e for e in curve_facts(record)["lowered_at"] if e <= epochs]
    return f"; its learning rate first lowered for epoch {lowered[0]}" if lowered else ""


def _batch_not_yet_measured(model: str, title: str, runs: dict[int, dict]) -> str:
    """Which batch has no record yet, and the command that makes it: Keras' default batch of
    32 (or, with that one measured, four times it), in a folder of its own unless it is the
    full profile's batch, which is the profile's own run (``reproduce``'s, for its plan)."""
    from tinylib.profiles import PROFILES
    from tinylib.reproduce import PLAN_NAMES

    other = KERAS_DEFAULT_BATCH if KERAS_DEFAULT_BATCH not in runs else 4 * KERAS_DEFAULT_BATCH
    have = (f"Only batch {next(iter(runs))} has a full-scale record of {title} trained the study's way; the same "
            f"run" if runs else f"No full-scale record of {title} trained the study's way exists yet; a run")
    sittings = "again each sitting, on a machine that keeps its run folder, until it ends"
    if other == PROFILES["full"].batch_size:
        command = (f"reproduce --only {model} --profile full --budget 170 --results book/results"
                   if model in PLAN_NAMES else f"train {model} --profile full --budget 170 --results book/results")
        return (f"{have} at batch {other}, the `full` profile's, is not yet measured (`python -m tinylib {command}`, "
                f"{sittings}; its record lands in `book/results/` as `{model}-full-<backend>.json`).")
    return (f"{have} at batch {other} is not yet measured (`python -m tinylib train {model} --profile full "
            f"--batch-size {other} --budget 170 --results book/results`, {sittings}: it trains in a folder of "
            f"its own, and its record lands in `book/results/` as `{model}-full-<backend>-batch{other}.json`).")


def _where_both_ended(model: str, small: int, a: dict, large: int, b: dict, n: int) -> list[str]:
    """With both runs at their end, how their bests stand to each other and to the study's
    figure: whether the batch, a setting the slides leave open, closes the gap."""
    if "unfinished" in (results.run_end(a)[0], results.run_end(b)[0]):
        return []
    best_a, best_b = float(a["best_val_top1"]), float(b["best_val_top1"])
    same_plan = a.get("epochs") == b.get("epochs")  # a plan raised on the way (epochs_changed) differs
    lengths = "" if same_plan else (f", batch {small} planned for {a.get('epochs')} epochs and batch {large} for "
                                    f"{b.get('epochs')}, so their ends weigh the batch and the run's length together")
    said = [f"Both runs have ended{lengths}: at its best, batch {small} is "
            f"{results.against_phrase(best_a, n, best_b, n)} batch {large}."]
    study = results.STUDY_RESULTS.get(model, {}).get("val")
    if study is None:
        return said
    standings = {batch: results.standing(best, n, study, results.STUDY_VAL_IMAGES)
               for batch, best in ((small, best_a), (large, best_b))}
    verdicts = set(standings.values())
    if verdicts == {"below"}:
        neither = "the batch alone does not close" if same_plan else "neither the batch nor the longer run closes"
        said.append(f"Both are below, beyond noise, the study's {pct(study)}: at the study's learning rate "
                    f"{neither} that gap (batch {small} ends {_points(study - best_a)} points short of it, "
                    f"batch {large} {_points(study - best_b)}).")
    elif "below" not in verdicts:
        said.append(f"Neither is below, beyond noise, the study's {pct(study)}.")
    else:
        better = small if standings[small] != "below" else large
        said.append(f"Only batch {better} is not below, beyond noise, the study's {pct(study)}.")
    return said


def _set_aside(model: str, folder=None) -> str:
    """The records at another batch than the profile's run that differ from it in more than
    the batch, each with what differs: why the story does not compare them."""
    reference, found = _batch_candidates(model, folder)
    said = []
    for record in found:
        differences = _beyond_the_batch(reference, record, folder) if reference is not None else []
        if differences and record.get("batch_size") != reference.get("batch_size"):
            said.append(f" `{record['record_file']}` (batch {record['batch_size']}) is set aside: it differs from "
                        f"the batch-{reference['batch_size']} run in more than its batch ({', '.join(differences)}).")
    return "".join(said)


def batch_story(model: str, folder=None) -> str:
    """Sentences (Markdown) comparing the model's runs at its smallest and largest batch:
    per epoch over the epochs both ran, per optimizer step over the steps both took, and
    where each run at any batch ended; with a record at one batch only, which run is not
    yet measured and the command that measures it."""
    runs = by_batch(model, folder)
    title = results.model_title(model)
    if len(runs) < 2:
        return _batch_not_yet_measured(model, title, runs) + _set_aside(model, folder)
    (small, a), (large, b) = next(iter(runs.items())), list(runs.items())[-1]
    val_a, val_b = _curves(a)[0], _curves(b)[0]
    steps_a, steps_b = record_steps_per_epoch(a), record_steps_per_epoch(b)
    n = results.val_images(a)
    both = min(len(val_a), len(val_b))
    best_a, best_b = float(val_a[:both].max()), float(val_b[:both].max())
    sentences = [f"**The batch:** over the {both} epochs both runs trained, {title} at batch {small} "
                 f"({steps_a:,} optimizer steps an epoch{_rate_note(a, both)}) reached {pct(best_a)} validation "
                 f"top-1 at best, {results.against_phrase(best_a, n, best_b, n)} the {pct(best_b)} of batch {large} ({steps_b:,} "
                 f"steps an epoch{_rate_note(b, both)})."]
    # Over the steps both took: each run's epochs that end within the shorter run's steps.
    shared = min(len(val_a) * steps_a, len(val_b) * steps_b)
    k, j = shared // steps_a, shared // steps_b
    if k >= 1 and j >= 1:
        at_a, at_b = float(val_a[:k].max()), float(val_b[:j].max())
        sentences.append(f"Over the first {shared:,} optimizer steps, batch {small} reached {pct(at_a)} at best (its "
                         f"{k} epoch{'s' if k > 1 else ''}, {k * steps_a:,} steps{_rate_note(a, k)}), "
                         f"{results.against_phrase(at_a, n, at_b, n)} the {pct(at_b)} of batch {large} (its {j} epoch"
                         f"{'s' if j > 1 else ''}, {j * steps_b:,} steps{_rate_note(b, j)}).")
    ends = []
    for batch, record in runs.items():  # every batch measured, those between the two compared too
        so_far = "" if results.run_end(record)[0] != "unfinished" else " so far"
        ends.append(f"batch {batch}, {pct(record['best_val_top1'])}{so_far}, {results.epochs_text(record)}, "
                    f"in `{record['record_file']}`")
    sentences.append(f"Best validation top-1 of each run: {'; '.join(ends)}.")
    sentences.extend(_precision_note(model, runs, folder))
    sentences.extend(_stopping_note(runs))
    sentences.extend(_where_both_ended(model, small, a, large, b, n))
    if a.get("callbacks"):
        sentences.append(f"The study's callbacks count epochs, so at batch {small} their patience waits "
                         f"{steps_a / steps_b:.0f} times the steps: where each run ended differs by more than its batch.")
    return " ".join(sentences)
