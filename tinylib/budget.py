"""Training to a time budget: as many epochs as fit in H hours, the learning rate at zero when they end.

A schedule that decays to zero only helps if the run ends where the schedule ends. On
a laptop the number of epochs that fit in an afternoon is not known in advance, and
it drifts (another program, a warmer CPU). So a run on a budget (``fit(..., hours=H)``,
``python -m tinylib train ... --hours H``) plans its length and re-plans it after every
epoch:

* the first plan, before any step, divides the model's FLOPs (``tinylib.flops``) by
  the GFLOP/s the same model reached on this device in ``benchmarks/model_throughput.py``
  (``tinylib.throughput``), else by half of this machine's matrix-product peak
  (``environment.matmul_peak``);
* after each epoch, the epochs left are the time left over the measured seconds of a
  recent epoch (validation included), and the learning rate's straight line to zero
  is re-drawn from where it stands to the new end (``recipes._WarmupLinearDecay``);
* when no further epoch fits, the run ends: ``record["ended_by"] = "time budget"``.

The plans go into the record (``time_budget``), so a resumed run continues on the
schedule it had, and the record shows how the plan moved.
"""

from __future__ import annotations

import math

import numpy as np

FIRST_PLAN_EFFICIENCY = 0.5  # the fraction of the matmul peak a training step is assumed to reach at first
RESERVE_SECONDS = 60.0  # the run's end: the final checkpoint, the record, an evaluation with flips
RECENT_EPOCHS = 3  # an epoch's time is the median of the last few (the first compiles: left out)

# The book's afternoon on a laptop CPU (chapter 13): ResNet-9 from scratch with the fast
# recipe, in three hours over every sitting (the full profile's 40 epochs for it are a cap).
AFTERNOON_MODEL, AFTERNOON_RECIPE, AFTERNOON_HOURS = "resnet9", "fast", 3.0
AFTERNOON_RUN = f"{AFTERNOON_MODEL}-{AFTERNOON_RECIPE}"  # its name in `reproduce` and its record's key


def first_plan(train_gflop_per_image: float, gflops_per_second: float, train_images: int, budget_seconds: float,
               cap: int) -> int:
    """Epochs that fit in the budget at ``gflops_per_second`` (validation: about a tenth
    of an epoch more), at least 1 and at most ``cap``."""
    rate = max(gflops_per_second / max(train_gflop_per_image, 1e-9), 1e-9)
    epoch_seconds = 1.1 * train_images / rate
    return int(min(cap, max(1, math.floor((budget_seconds - RESERVE_SECONDS) / epoch_seconds))))


def candidates_table(candidates, gflops_per_second: float | None, train_images: int = 100_000,
                     hours: float = AFTERNOON_HOURS):
    """A pandas DataFrame, a row per candidate network (``(model, build options)``): its
    parameters, its training GFLOP per image (``tinylib.flops``) and, at ``gflops_per_second``
    (a rate some run reached; None: not yet measured), the epochs ``first_plan`` fits in
    ``hours`` of ``train_images`` an epoch. What the afternoon buys, network by network."""
    import pandas as pd

    from tinylib import flops, models

    rows = {}
    for name, options in candidates:
        net = models.build_model(name, compile=False, **options)
        work = flops.training_flops(net) / 1e9
        label = name + "".join(f" ({key} {value})" for key, value in options.items())
        fit = first_plan(work, gflops_per_second, train_images, hours * 3600, cap=1000) if gflops_per_second else None
        rows[label] = {"parameters": f"{net.count_params():,}", "GFLOP per training image": round(work, 2),
                       f"epochs in {hours:g} h": "not yet measured" if fit is None else fit}
        del net
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("network")


def epoch_seconds(history: dict) -> float | None:
    """Seconds of a recent epoch, validation included: the median of the last few, the
    first epoch (which also compiles) left out where there are others."""
    seconds = list(history.get("seconds") or [])
    seconds = seconds[1:] or seconds
    return float(np.median(seconds[-RECENT_EPOCHS:])) if seconds else None


def epochs_that_fit(budget_seconds: float, spent_seconds: float, seconds_per_epoch: float, epochs_done: int,
                    cap: int) -> int:
    """The run's planned length: the epochs done and as many more as fit in what is left."""
    left = budget_seconds - spent_seconds - RESERVE_SECONDS
    more = math.floor(left / seconds_per_epoch) if seconds_per_epoch > 0 else cap
    return int(min(cap, epochs_done + max(0, more)))


def schedule_of(model):
    """The model's re-plannable schedule, or a ValueError saying which recipe has one."""
    from tinylib.recipes import _WarmupLinearDecay

    # Under mixed float16 Keras wraps the optimizer in a LossScaleOptimizer, whose own rate is a dummy.
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, _WarmupLinearDecay):
        raise ValueError("training to a time budget needs a recipe with the 'linear' schedule (its learning "
                         "rate is re-planned to reach zero when the time is up): use recipe='fast', or "
                         "Recipe(schedule='linear', ...)")
    return schedule


def _schedule_step(model, batches: int) -> int:
    """The optimizer step the learning-rate schedule is evaluated at (the inner optimizer's,
    under loss scaling); ``batches`` where the model has no optimizer built yet."""
    import keras

    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    iterations = getattr(optimizer, "iterations", None)
    return batches if iterations is None else int(keras.ops.convert_to_numpy(iterations))


def set_schedule(model, schedule) -> None:
    """Give the optimizer ``schedule``; the compiled step, which holds the old one, is traced again."""
    model.optimizer.learning_rate = schedule
    model.make_train_function(force=True)


def expected_gflops(record: dict, folder=None) -> tuple[float, str]:
    """The GFLOP/s to plan with, and where the figure comes from: the benchmark's for this
    model on this device, precision and batch (``tinylib.throughput``), else half the peak. The
    benchmark's images/s count, times this run's FLOPs per image (the benchmark may have
    counted them otherwise), so that the plan is the benchmark's images/s."""
    from tinylib import throughput

    measured = throughput.rate(record["model"], folder)
    if measured is not None:
        rate, conditions = measured
        row = (conditions.get("models") or {}).get(record["model"]) or {}
        if not throughput.differences(conditions, record) and row.get("train_gflop_per_image"):
            work = (record.get("speed") or {}).get("train_gflop_per_image") or row["train_gflop_per_image"]
            return rate * work, f"the benchmark's {record['model']} on this device"
    peak = (record.get("speed") or {}).get("matmul_peak_gflops_per_second") or 1.0
    return peak * FIRST_PLAN_EFFICIENCY, "half the matmul peak"


def start(model, record: dict, hours: float, steps_per_epoch: int, cap: int, warmup: float) -> dict:
    """Plan a new run on a budget: its first length, and its schedule with ``warmup`` (a
    fraction of that first length) before the straight line to zero."""
    from tinylib.recipes import _WarmupLinearDecay

    peak_schedule = schedule_of(model)
    gflops, basis = expected_gflops(record)
    planned = first_plan((record.get("speed") or {}).get("train_gflop_per_image") or 1.0, gflops,
                         record["dataset"]["train_images"], hours * 3600.0, cap)
    total = planned * steps_per_epoch
    schedule = _WarmupLinearDecay(peak_schedule.learning_rate, round(warmup * total), total)
    set_schedule(model, schedule)
    return {"hours": float(hours), "cap": int(cap),
            "plans": [{"after_epoch": 0, "epochs": planned, "basis": f"first plan: {gflops:,.0f} GFLOP/s, {basis}"}],
            "schedule": schedule.get_config()}


def resume(model, budget: dict) -> None:
    """Put back the schedule a resumed run on a budget had reached."""
    from tinylib.recipes import _WarmupLinearDecay

    schedule_of(model)
    set_schedule(model, _WarmupLinearDecay.from_config(budget["schedule"]))


def replan(model, budget: dict, history: dict, spent_seconds: float, epochs_done: int,
           steps_per_epoch: int) -> int:
    """After an epoch: the run's planned length from the time left, the schedule re-drawn
    when it changed, and the plan added to ``budget``. Returns the planned epochs."""
    seconds = epoch_seconds(history)
    planned = budget["plans"][-1]["epochs"]
    if seconds is None:
        return planned
    fits = epochs_that_fit(budget["hours"] * 3600.0, spent_seconds, seconds, epochs_done, budget["cap"])
    fits = max(fits, epochs_done)
    if fits != planned:
        # From the step the schedule reads: under loss scaling (mixed float16) the optimizer does not
        # count a step it skipped for non-finite gradients, so it can stand behind the batches trained.
        now = _schedule_step(model, epochs_done * steps_per_epoch)
        schedule = schedule_of(model).replanned(now, now + (fits - epochs_done) * steps_per_epoch)
        set_schedule(model, schedule)
        budget["schedule"] = schedule.get_config()
        budget["plans"].append({"after_epoch": epochs_done, "epochs": fits,
                                "basis": f"{seconds:.0f} s an epoch, {spent_seconds / 60:.1f} min spent"})
        print(f"time budget: {fits} epochs now fit in {budget['hours']:g} h (was {planned}; "
              f"{seconds:.0f} s an epoch, {spent_seconds / 60:.1f} min spent)", flush=True)
    return fits
