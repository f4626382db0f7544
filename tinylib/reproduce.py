"""The whole study at full scale in one resumable command: ``python -m tinylib reproduce``.

GPU time comes in short, cut-off pieces (a Colab session, a job limit, a lent
machine that starts bare), so the runs the book reads at full scale are trained in
a fixed order of value, each an ordinary resumable run, within a time budget:

    the study's Models 1, 2, 4, 3, 5; ResNet-18 with the modern recipe; ResNet-9
    from scratch in a three-hour budget (its hours count every sitting); Model 5
    fine-tuned in stages; the optimizer comparison (Model 2 with each optimizer);
    the precision check (Model 2's first epochs in mixed bfloat16)

A run stops before the budget is spent, at an epoch's end or inside an epoch that
reaches it, at a checkpoint there (it resumes at that batch); the command then
says what is done and what is left and exits with status 3 (0 when all is done).
With ``results``, each finished run's record is copied there (``publish``: never over
another run's record, or over one further along) and a summary is written beside the
study's numbers; a run whose finished record is already there
is skipped, so a later machine, with no checkpoints, picks up with the next run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from tinylib import files
from tinylib.budget import AFTERNOON_MODEL, AFTERNOON_RECIPE, AFTERNOON_RUN

WORK_REMAINS = 3  # the exit status when the budget ran out before the plan did
SUMMARY_NAME = "summary"


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One entry of the plan: a name for ``--only`` and what it trains."""

    name: str
    description: str



PLAN = (
    PlannedRun("model1", "the study's Model 1"),
    PlannedRun("model2", "the study's Model 2 (early stopping, learning-rate reduction)"),
    PlannedRun("model4", "the study's Model 4 (BatchNorm)"),
    PlannedRun("model3", "the study's Model 3 (VGG-like)"),
    PlannedRun("model5", "the study's Model 5 (ResNet50, ImageNet weights when they can be had)"),
    PlannedRun("resnet18-modern", "ResNet-18 for 64x64 with the modern recipe"),
    PlannedRun(AFTERNOON_RUN, "ResNet-9 from scratch with the fast recipe, in a 3-hour budget over every sitting"),
    PlannedRun("model5-finetune", "Model 5 fine-tuned in stages (head, then all), upsampled"),
    PlannedRun("optimizers", "the study's optimizer comparison, rerun on Model 2"),
    PlannedRun("precision", "Model 2 for 8 epochs in mixed bfloat16, against its float32 record's first 8"),
)
PLAN_NAMES = tuple(planned.name for planned in PLAN)


def select(only: str | None) -> list[PlannedRun]:
    """The plan, or the runs named in ``only`` ('model1,model3'), in the plan's order."""
    if only is None or not only.strip():
        return list(PLAN)
    names = [n.strip().lower() for n in only.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--only {only!r} names no run: choose from {', '.join(PLAN_NAMES)}")
    unknown = [n for n in names if n not in PLAN_NAMES]
    if unknown:
        raise ValueError(f"unknown run(s) {', '.join(unknown)}: choose from {', '.join(PLAN_NAMES)}")
    return [planned for planned in PLAN if planned.name in names]


def _train(planned: PlannedRun, data, profile, deadline: float | None, runs_folder) -> list:
    """Train one planned run (or resume it); returns its Run objects."""
    from tinylib import budget, models, train, transfer

    common = dict(deadline=deadline, runs=runs_folder)
    if planned.name.startswith("model") and planned.name in models.MODELS:
        options = {}
        if planned.name in models.PRETRAINED:  # without them, train_model trains in a '-random' folder
            options["weights"] = models.resolve_pretrained("imagenet")
        return [train.train_model(planned.name, data, profile, build_options=options, **common)]
    if planned.name == "resnet18-modern":
        return [train.train_model("resnet18", data, profile, recipe="modern", **common)]
    if planned.name == AFTERNOON_RUN:
        return [train.train_model(budget.AFTERNOON_MODEL, data, profile, recipe=budget.AFTERNOON_RECIPE,
                                  hours=budget.AFTERNOON_HOURS, **common)]
    if planned.name == "model5-finetune":
        weights = models.resolve_pretrained("imagenet")
        return list(transfer.fine_tune(data, profile, weights=weights, image_size="profile", **common).values())
    if planned.name == "optimizers":
        return list(train.compare_optimizers("model2", data, profile, **common).values())
    if planned.name == "precision":
        return list(train.compare_precisions("model2", data, profile, **common).values())
    raise ValueError(f"no way to train {planned.name!r}")  # a PLAN entry without a branch here


def _finished_in(results: Path | None, run_folder_name: str, epochs: int | None = None,
                 pretrained: bool = False) -> bool:
    """Whether ``results`` already holds the finished record of this run folder.

    With ``epochs``, a record finished for another number of epochs (an older
    profile's) does not count: the run is trained again to the plan's epochs. With
    ``pretrained``, a record trained from random weights does not count either (an older
    reproduce, or ``train --weights none``, published one under the study's folder name).
    """
    if results is None:
        return False
    try:
        record = json.loads((results / f"{run_folder_name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if epochs is not None and record.get("epochs") not in (None, epochs):
        return False
    if pretrained and record.get("weights") == "random":
        return False
    return bool(record.get("finished"))


def expected_runs(planned: PlannedRun, profile, backend: str) -> dict[str, int]:
    """The run folders a planned run trains in, each with the epochs it plans, named before
    anything is built, so that a run whose finished records are all in the results is
    skipped (a fresh machine then picks up with the next run, not hours early).

    Model 5's fine-tuning is named as with the ImageNet weights it asks for: on a machine
    that cannot have them it trains from random weights in other folders, which no
    finished ImageNet record stands in for."""
    from tinylib import models
    from tinylib.optimizers import STUDY_OPTIMIZERS
    from tinylib.runs import run_name
    from tinylib.train import optimizer_run_suffix, precision_check_epochs, precision_run_suffix
    from tinylib.transfer import STAGES, stage_suffix

    def name(model: str, suffix: str = "") -> str:
        return run_name(model, profile, suffix, backend=backend)

    if planned.name in models.MODELS:
        return {name(planned.name): profile.epochs_for(planned.name)}
    if planned.name == "resnet18-modern":
        return {name("resnet18", "-modern"): profile.epochs_for("resnet18")}
    if planned.name == AFTERNOON_RUN:  # a time budget ends it: its epochs are a cap, not a plan
        return {name(AFTERNOON_MODEL, f"-{AFTERNOON_RECIPE}"): None}
    if planned.name == "model5-finetune":
        size = profile.options_for("transfer").get("image_size")
        return {name("model5", stage_suffix(size, True, stage)): profile.epochs_for(f"transfer_{stage}")
                for stage in STAGES}
    if planned.name == "optimizers":  # train.compare_optimizers' folders, at the study's rate
        return {name("model2", optimizer_run_suffix(optimizer)): profile.epochs_for("optimizers")
                for optimizer in STUDY_OPTIMIZERS}
    if planned.name == "precision":  # train.compare_precisions' one run
        epochs = precision_check_epochs("model2", profile)
        return {name("model2", precision_run_suffix("mixed_bfloat16", epochs)): epochs}
    raise ValueError(f"no run folders known for {planned.name!r}")  # a PLAN entry without a branch here


# Keras' backends, in the order a finished record of another backend is looked for.
KERAS_BACKENDS = ("tensorflow", "jax", "torch")


def published_folders(results: Path | None, planned: PlannedRun, profile, backend: str) -> dict[str, int] | None:
    """The run folders of ``planned`` whose finished records ``results`` holds, all of them,
    trained on this backend or on another (a study row trained on TensorFlow is that row on
    JAX too: a GPU session on JAX goes on with the rows not yet done); None if none has all."""
    from tinylib.models import PRETRAINED

    for candidate in (backend, *(b for b in KERAS_BACKENDS if b != backend)):
        folders = expected_runs(planned, profile, candidate)
        if all(_finished_in(results, folder, epochs, pretrained=planned.name in PRETRAINED)
               for folder, epochs in folders.items()):
            return folders
    return None


def run_plan(plan, data, profile, *, budget_minutes: float | None = None, results: Path | None = None,
             runs_folder=None) -> dict:
    """Train the plan within the budget; returns {'done': [...], 'left': [...], 'records': [...]}.

    ``data`` is the dataset, or a function that loads it: then it is loaded only when a
    run needs training (not when every run is already in ``results``).
    """
    import keras

    from tinylib.train import MIN_SITTING_SECONDS

    loaded = []

    def dataset():
        if not loaded:
            loaded.append(data() if callable(data) else data)
        return loaded[0]

    deadline = time.monotonic() + budget_minutes * 60 if budget_minutes is not None else None
    backend = keras.backend.backend()
    done, left, records = [], [], []
    trained = False
    for index, planned in enumerate(plan):
        folders = published_folders(results, planned, profile, backend)
        if folders is not None:
            print(f"=== {planned.name}: finished record already in {results}: skipped", flush=True)
            done.append(planned.name)
            records.extend(json.loads((results / f"{f}.json").read_text(encoding="utf-8")) for f in folders)
            continue
        # A run after one this sitting trained starts only with a first epoch's worth of minutes
        # left (train.MIN_SITTING_SECONDS): seconds would buy a model built, data loaded and
        # a checkpoint written for a few batches. The sitting's first run keeps the budget given.
        reserve = MIN_SITTING_SECONDS if trained else 0.0
        if deadline is not None and time.monotonic() + reserve >= deadline:
            if trained:
                print(f"=== {planned.name}: under {reserve / 60:.0f} minutes of the budget left: "
                      "it starts in the next sitting", flush=True)
            left.extend(p.name for p in plan[index:])
            break
        print(f"=== {planned.name}: {planned.description}", flush=True)
        trained = True
        runs = _train(planned, dataset(), profile, deadline, runs_folder)
        finished = bool(runs) and all(run.record.get("finished") for run in runs)
        if planned.name == "model5-finetune":  # stage 'all' is not started while 'head' is unfinished
            finished = finished and len(runs) == 2
        for run in runs:
            if run.record.get("finished") and results is not None:
                print(publish(run.path, results), flush=True)  # never over another run's record
            records.append(run.record)
        (done if finished else left).append(planned.name)
        if not finished:
            left.extend(p.name for p in plan[index + 1:])
            break
    if results is not None:
        write_summary(results)
    return {"done": done, "left": left, "records": records}


def copy_record(run_path: Path, results: Path) -> Path:
    """Copy a run's record into ``results`` as ``<run folder>.json`` (atomically)."""
    results.mkdir(parents=True, exist_ok=True)
    target = results / f"{Path(run_path).name}.json"
    with files.atomic_path(target) as tmp:
        shutil.copyfile(Path(run_path) / "record.json", tmp)
    return target


def published_record(results: Path, folder_name: str) -> dict | None:
    """The record ``results`` holds for the run folder ``folder_name``, if any."""
    try:
        record = json.loads((Path(results) / f"{folder_name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def why_keep(published: dict | None, record: dict) -> str | None:
    """Why the record ``results`` holds for a run folder should stay rather than give way to
    the run's ``record`` as it stands now; None when the new one should replace it.

    It stays when it is another run (``runs.IDENTITY``: another optimizer, precision,
    augmentation... trained under the same folder name), another time budget, or further
    along: more epochs, finished where this one is not, or an unfinished run of another
    length than this one (this is not its continuation).
    """
    from tinylib.results import run_end
    from tinylib.runs import identity_differences

    if published is None:
        return None
    differences = identity_differences(published, record)
    if differences:
        return (f"it holds another run ({', '.join(differences)}); to publish this one in its place, delete the "
                "record there and run the command again")
    hours = [(r.get("time_budget") or {}).get("hours") for r in (published, record)]
    if hours[0] != hours[1]:
        return f"it holds a run on a time budget of {hours[0]} h, this one {hours[1]} h"
    done = [int(r.get("epochs_run") or 0) for r in (published, record)]
    finished = [run_end(r)[0] != "unfinished" for r in (published, record)]
    if done[1] < done[0]:
        return f"it holds the run further along ({done[0]} epochs trained, this record {done[1]})"
    if finished[0] and not finished[1]:
        return f"it holds the run finished ({done[0]} epochs), this record unfinished"
    if not finished[0] and published.get("epochs") != record.get("epochs") and not _continues(published, record):
        return (f"it holds an unfinished run of {published.get('epochs')} epochs, of which this one "
                f"({record.get('epochs')} epochs) is not the continuation")
    return None


def _continues(published: dict, record: dict) -> bool:
    """Whether ``record`` is ``published``'s run asked for another number of epochs after the
    epochs published (its ``epochs_changed`` says from what, and at which epoch)."""
    return any(change.get("from") == published.get("epochs")
               and int(change.get("at_epoch") or 0) >= int(published.get("epochs_run") or 0)
               for change in record.get("epochs_changed") or [])


def publish(run_path: Path, results: Path) -> str:
    """Copy a run's record as it stands, finished or not, into ``results`` and rewrite the
    summary, unless the record there should stay (``why_keep``); returns what was done."""
    record = json.loads((Path(run_path) / "record.json").read_text(encoding="utf-8"))
    target = Path(results) / f"{Path(run_path).name}.json"
    reason = why_keep(published_record(results, Path(run_path).name), record)
    if reason:
        return f"kept {target}: {reason}; this run's record is in {run_path}"
    copy_record(run_path, results)
    write_summary(results)
    state = "finished" if record.get("finished") else "unfinished: run the same command again to continue"
    return f"record: {target} ({state}); summary: {Path(results) / (SUMMARY_NAME + '.md')}"


def summary_rows(results: Path) -> list[dict]:
    """One row per run record in ``results``, with the study's numbers beside them."""
    from tinylib.results import at_best_epoch, epochs_cell, record_key, record_paths, run_end, study_figures

    rows = []
    for path in record_paths(results):
        if path.stem == SUMMARY_NAME:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if not isinstance(record, dict) or "best_val_top1" not in record:
            continue
        key = record_key(record)
        study = study_figures(record)
        rows.append({
            "run": key, "record": path.name, "profile": record.get("profile"), "epochs": record.get("epochs_run"),
            "finished": run_end(record)[0] != "unfinished", "epochs_told": epochs_cell(record),
            "batch_size": record.get("batch_size"),
            "best_val_top1": record.get("best_val_top1"), "best_val_top5": record.get("best_val_top5"),
            "train_top1_at_best": at_best_epoch(record)["train"],  # the best val top-1's epoch
            "images_per_second": record.get("train_images_per_second"),
            "minutes": round(record.get("wall_seconds", 0.0) / 60, 1),
            "device": record.get("device"), "weights": record.get("weights"),
            "study_val_top1": study.get("val"), "study_train_top1": study.get("train"),
        })
    return rows


def write_summary(results: Path) -> tuple[Path, Path]:
    """``summary.md`` and ``summary.json`` in ``results``: every record there in one table.

    The study's numbers stand beside its rows; they are comparable only at full scale.
    """
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)  # a folder named before any record was published
    rows = summary_rows(results)

    def pct(value):
        return "" if value is None else f"{value:.2%}"

    lines = ["| run | profile | epochs | batch | best val top-1 | best val top-5 | train top-1 (best epoch) "
             "| the study's val / train | images/s | minutes | device | weights |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        study = f"{pct(row['study_val_top1'])} / {pct(row['study_train_top1'])}" if row["study_val_top1"] else ""
        speed = f"{row['images_per_second']:,.0f}" if row["images_per_second"] else ""
        lines.append(f"| {row['run']} | {row['profile']} | {row['epochs_told']} | {row['batch_size'] or ''} | "
                     f"{pct(row['best_val_top1'])} | {pct(row['best_val_top5'])} | "
                     f"{pct(row['train_top1_at_best'])} | {study} | {speed} | {row['minutes']} | "
                     f"{row['device']} | {row['weights']} |")
    markdown = files.write_text(results / f"{SUMMARY_NAME}.md", "\n".join(lines) + "\n")
    table = files.write_json(results / f"{SUMMARY_NAME}.json", rows)
    return markdown, table
