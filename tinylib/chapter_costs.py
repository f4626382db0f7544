"""What running each chapter costs, from measured book builds, never from guesses.

A build of the book executes every chapter and the execution cache keeps how long
each took (jupyter-cache's ``execution_seconds``). ``record_build`` copies those
times, with the profile and the device, into ``book/results/chapter-times.json``;
each chapter prints its line with ``cost_line``, and says "not yet measured" for a
profile nobody has timed.

    make book TINYLIB_PROFILE=quick
    python tools/record_chapter_times.py      # then commit book/results/chapter-times.json
"""

from __future__ import annotations

import datetime
import functools
import json
from pathlib import Path
from types import MappingProxyType

from tinylib import files, throughput
from tinylib.profiles import get_profile
from tinylib.results import default_results_dir, epochs_text, full_scale_records

TIMES_FILE = "chapter-times.json"
NOT_YET_MEASURED = "not yet measured"
# Where each profile is meant to run: the costs a reader wants to know before starting.
PROFILE_HARDWARE = {"smoke": "a CPU", "quick": "a 2-core CPU", "full": "a GPU or, for hours, a CPU"}
# The full-scale training run of each model chapter: until a full build of the chapter is
# timed, its line gives what that run's own record measured.
CHAPTER_RUNS = MappingProxyType({"06_model1": "model1", "07_model2": "model2", "08_model3": "model3",
                                 "09_model4": "model4", "10_model5": "model5"})
CHOOSE_QUICK = ("This is the full profile (the default where a GPU is visible), whose runs take hours; "
                "for a run of minutes, execute `import os; os.environ['TINYLIB_PROFILE'] = 'quick'` "
                "before the chapter's next cell, or start Jupyter with TINYLIB_PROFILE=quick.")


def times_path(folder: Path | str | None = None) -> Path:
    return Path(folder or default_results_dir()) / TIMES_FILE


def read_times(folder: Path | str | None = None) -> dict:
    """The measured builds, by profile; {} when none was recorded."""
    try:
        data = json.loads(times_path(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def executed_seconds(cache_dir: Path | str) -> dict[str, float]:
    """Seconds each notebook took in the build whose execution cache is ``cache_dir``."""
    from jupyter_cache import get_cache

    seconds = {}
    for record in get_cache(str(cache_dir)).list_cache_records():
        taken = (record.data or {}).get("execution_seconds")
        if record.uri and taken is not None:
            seconds[Path(record.uri).stem] = round(float(taken), 1)
    return dict(sorted(seconds.items()))


def record_build(cache_dir: Path | str, profile: str, device: str, backend: str,
                 folder: Path | str | None = None) -> dict:
    """Write one profile's chapter times (from ``cache_dir``) into the times file, atomically."""
    seconds = executed_seconds(cache_dir)
    if not seconds:
        raise FileNotFoundError(f"{cache_dir} holds no executed notebooks: build the book first (make book)")
    data = read_times(folder)
    data[profile] = {
        "device": device, "backend": backend, "seconds": seconds,
        "total_minutes": round(sum(seconds.values()) / 60, 1),
        "measured": datetime.date.today().isoformat(),
    }
    files.write_json(times_path(folder), data, indent=1)
    return data[profile]


def cost_line(chapter: str, profiles=("quick", "full"), folder: Path | str | None = None) -> str:
    """One line for the top of ``chapter``: its measured time in each profile, or "not yet measured"."""
    data = read_times(folder)
    parts = []
    for profile in profiles:
        build = data.get(profile) or {}
        seconds = (build.get("seconds") or {}).get(chapter)
        where = PROFILE_HARDWARE.get(profile, "")
        if seconds is None:
            parts.append(f"{profile} profile on {where}: {NOT_YET_MEASURED}" + _run_cost(chapter, profile, folder))
        else:
            took = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{max(seconds, 1):.0f} s"
            parts.append(f"{profile} profile: {took} on {build['device']} "
                         f"({build['backend']}, measured {build['measured']})")
    line = "Running this chapter: " + "; ".join(parts) + "."
    return line + (" " + CHOOSE_QUICK if get_profile().name == "full" else "")


def measured_rates(model: str, folder: Path | str | None = None) -> list[tuple[float, dict]]:
    """Each measured training rate of ``model`` at full scale: (train images/s, {"source",
    "device", "dtype_policy", "batch_size"}), its full-scale record's first, then the
    benchmark's (``tinylib.throughput``)."""
    from tinylib.results import record_precision

    rates = []
    record = full_scale_records(folder).get(model)
    if record and record.get("train_images_per_second"):
        rates.append((float(record["train_images_per_second"]), {
            "source": f"{model}'s full-scale record", "device": record.get("device"),
            "dtype_policy": record_precision(record), "batch_size": record.get("batch_size")}))
    measured = throughput.rate(model, folder)
    if measured is not None:
        value, data = measured
        rates.append((value, {"source": f"benchmarks/model_throughput.py ({data.get('measured')})",
                              "device": data.get("device"), "dtype_policy": data.get("dtype_policy"),
                              "batch_size": data.get("batch_size")}))
    return rates


def training_estimate(model: str, profile=None, epochs: int | None = None, folder: Path | str | None = None,
                      policy: str | None = None, batch_size: int | None = None) -> str:
    """One line for a cell that trains: how long ``epochs`` of ``model``'s training steps take in
    ``profile``, at a measured full-scale rate (``measured_rates``), or "not yet measured".

    Of the rates, the one measured in this run's precision (``policy``, default: Keras' policy
    in force) and on its batch (``batch_size``, default: the profile's, times the devices in
    force, as ``train.fit`` trains) is preferred, then one in its precision; the line names the
    rate's precision and batch, and says so where they are not this run's."""
    chosen = get_profile(profile)
    epochs = chosen.epochs_for(model) if epochs is None else epochs
    images = chosen.train_images
    what = f"This cell trains {model} for {epochs} epoch{'s' * (epochs != 1)} on {images:,} images ({chosen.name})"
    rates = measured_rates(model, folder)
    if not rates:
        return f"{what}: its speed is {NOT_YET_MEASURED} (no full-scale record of {model})."
    if policy is None:
        import keras

        policy = keras.config.dtype_policy().name
    if batch_size is None:
        from tinylib import environment

        batch_size = chosen.batch_size * environment.device_count()
    run, keys = {"dtype_policy": policy, "batch_size": batch_size}, ("dtype_policy", "batch_size")
    rate, where = max(rates, key=lambda item: [key not in throughput.differences(item[1], run, keys) for key in keys])
    smaller = smaller_build(model, chosen)
    minutes = epochs * images / (rate * smaller) / 60
    differs = [{"dtype_policy": policy, "batch_size": f"batches of {batch_size}"}[key]
               for key in throughput.differences(where, run, keys)]
    caveat = f"; this run trains in {' on '.join(differs)}, so expect another time" if differs else ""
    no_record = "" if where["source"].endswith("full-scale record") else f"; {model} has no full-scale record yet"
    conditions = where["dtype_policy"] + (f", batch {where['batch_size']}" if where["batch_size"] else "")
    return (f"{what}: about {minutes:,.1f} min of training steps (validation not included) at the {rate:,.0f} "
            f"train images/s that {where['source']} measured on {where['device']} ({conditions})"
            f"{_scaled(model, smaller)}{caveat}{no_record} (a finished run is read back instead).")


def smaller_build(model: str, profile) -> float:
    """How many times fewer training FLOPs an image the profile's build of ``model`` does than
    the full profile's, whose rates the records and the benchmark measured (the small
    profiles' ResNets are narrower, with a strided stem); 1.0 where they build one network."""
    full = get_profile("full")
    options, full_options = dict(get_profile(profile).options_for(model)), dict(full.options_for(model))
    if options == full_options:
        return 1.0
    ratio = _training_flops(model, tuple(sorted(full_options.items()))) / _training_flops(
        model, tuple(sorted(options.items())))
    return 1.0 if abs(ratio - 1.0) < 0.05 else ratio


@functools.lru_cache(maxsize=None)
def _training_flops(model: str, options: tuple) -> int:
    """A build's training FLOPs an image; kept, as a chapter asks again for each training cell."""
    from tinylib import flops, models

    network = models.build_model(model, num_classes=200, weights=None, compile=False, **dict(options))
    return flops.training_flops(network)


def _scaled(model: str, smaller: float) -> str:
    if smaller == 1.0:
        return ""
    return (f", scaled to this profile's smaller {model} ({smaller:,.0f} times fewer FLOPs an image; a small "
            f"network uses the machine less well, so it may take longer)")


def _run_cost(chapter: str, profile: str, folder) -> str:
    """' (its training run alone: N min for ... on DEVICE, FILE)' from the full-scale record, or ''."""
    record = full_scale_records(folder).get(CHAPTER_RUNS.get(chapter)) if profile == "full" else None
    if not record or not record.get("wall_seconds"):
        return ""
    return (f" (its training run alone: {record['wall_seconds'] / 60:,.0f} min for {epochs_text(record)} "
            f"on {record['device']}, {record['record_file']})")
