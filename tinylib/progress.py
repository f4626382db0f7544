"""Progress of long work, as plain lines that read well in a log file or a notebook:
the one progress printer of tinylib.

Keras' progress bar redraws one line with carriage returns (unreadable in a log),
and its one-line-per-epoch mode says nothing for the many minutes a full-scale CPU
epoch takes.  :class:`ProgressLog` prints a line every ``every`` seconds (steps
done, images/s, time left in the epoch and in the run) and one line per epoch.
Downloads and decoding report through :func:`report_bytes` and :func:`report_count`:
redrawn in place on a terminal, a line now and then in a log.  This module imports
Keras only when ``ProgressLog`` is first used, so the data package stays free of it.
"""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressLog", "duration", "report", "report_bytes", "report_count"]  # noqa: F822 (ProgressLog: __getattr__)


def duration(seconds: float) -> str:
    """'42s', '13m05s', '5h12m': short and unambiguous."""
    if seconds != seconds or seconds == float("inf"):  # NaN or infinite: no estimate yet
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _metrics(logs: dict, keys) -> str:
    shown = []
    for key in keys:
        if key in logs:
            value = float(logs[key])  # a float() waits for the device: only finished work is timed
            shown.append(f"{key} {value:.2%}" if "accuracy" in key or "top5" in key else f"{key} {value:.4f}")
    return ", ".join(shown)


def report(text: str, final: bool, due: bool) -> None:
    """One progress report: redrawn in place on a terminal, a plain line in a log.

    Carriage returns make a log unreadable, so without a terminal only the
    reports marked ``due`` (and the final one) are printed, each on its own line.
    """
    if sys.stderr.isatty():  # \x1b[K clears what a longer line before left at the end
        print(f"\r{text}\x1b[K", end="\n" if final else "", file=sys.stderr, flush=True)
    elif due or final:
        print(text, file=sys.stderr, flush=True)


def report_bytes(label: str, done: int, total: int | None, start: float, step: int = 0) -> None:
    """Download progress; in a log, a line every 10% (every 25 MiB if the size is unknown)."""
    elapsed = max(time.time() - start, 1e-9)
    if total:
        bar = "#" * int(30 * done / total)
        text = f"{label} [{bar:<30}] {done / 2**20:7.1f}/{total / 2**20:.1f} MiB"
        due = done * 10 // total != (done - step) * 10 // total
    else:
        text = f"{label} {done / 2**20:7.1f} MiB"
        due = done // (25 << 20) != (done - step) // (25 << 20)
    report(f"{text} {done / elapsed / 2**20:5.1f} MiB/s", False, due)


def report_count(label: str, done: int, total: int, start: float, step: int = 0, every: int = 20000,
                 action: str = "decoding") -> None:
    """Progress over images (decoding, by default); in a log or a notebook, a line every
    ``every`` images is enough."""
    rate = done / max(time.time() - start, 1e-9)
    due = done // every != (done - step) // every
    report(f"{action} {label}: {done:,}/{total:,} images ({rate:,.0f}/s)", done >= total, due)


def _define_progress_log():
    import keras

    class ProgressLog(keras.callbacks.Callback):
        """A line every ``every`` seconds within an epoch, and one line when it ends.

        ``epochs`` is the run's planned length (for the time left); ``batch_size`` turns
        steps into images/s; ``offset`` is the number of batches of the first epoch done
        before this call (a run resumed in the middle of an epoch). ``may_stop_early``:
        the run has early stopping, so its cap of epochs bounds the time left, "at most".
        ``past_epochs``: the seconds of the epochs earlier sittings trained (the run's
        history), so the time left is a median over the whole run from a sitting's start,
        not over this sitting's epochs alone (one slow epoch would stand for all of them).
        """

        def __init__(self, epochs: int, batch_size: int, every: float = 30.0, offset: int = 0, stream=None,
                     may_stop_early: bool = False, past_epochs=()):
            super().__init__()
            self.epochs, self.batch_size, self.every = int(epochs), int(batch_size), float(every)
            self.offset = int(offset)
            self.about = "at most" if may_stop_early else "about"
            self.stream = stream
            self.epoch_times: list[float] = [float(s) for s in past_epochs]

        def _print(self, text: str) -> None:
            print(text, file=self.stream or sys.stdout, flush=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.start = self.last = time.perf_counter()
            self.steps = int(self.params.get("steps") or 0)
            self.first_step = None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self.steps:  # Keras numbers a short last call as a whole one: 784 of 782 at 4 a call
                batch = min(batch, self.steps - 1)
            if self.first_step is None:
                self.first_step = (batch, now)  # the first step also compiles: rates start after it
                return
            if now - self.last < self.every:
                return
            text = _metrics(logs or {}, ("loss", "accuracy"))  # waits for the step to finish
            now = time.perf_counter()
            self.last = now
            done_batches = batch - self.first_step[0]
            rate = done_batches / max(now - self.first_step[1], 1e-9)  # steps/s since the first step
            left = (self.steps - batch - 1) / rate if rate > 0 else float("nan")
            total = self.steps + self.offset
            self._print(f"epoch {self.epoch + 1}/{self.epochs} step {batch + 1 + self.offset}/{total}: "
                        f"{text}; {rate * self.batch_size:,.0f} images/s; epoch left {duration(left)}"
                        f"{self._run_left(left)}")

        def _run_left(self, epoch_left: float) -> str:
            if not self.epoch_times or self.epoch + 1 >= self.epochs:
                return ""
            per_epoch = sorted(self.epoch_times)[len(self.epoch_times) // 2]
            return f", run left {self.about} {duration(epoch_left + per_epoch * (self.epochs - self.epoch - 1))}"

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            text = _metrics(logs, ("loss", "accuracy", "val_loss", "val_accuracy", "val_top5"))
            seconds = time.perf_counter() - self.start
            if self.offset == 0:  # a partial epoch would make the estimate too short
                self.epoch_times.append(seconds)
            self.offset = 0
            left = ""
            if self.epoch_times and epoch + 1 < self.epochs:
                per_epoch = sorted(self.epoch_times)[len(self.epoch_times) // 2]
                left = f"; run left {self.about} {duration(per_epoch * (self.epochs - epoch - 1))}"
            self._print(f"epoch {epoch + 1}/{self.epochs} done in {duration(seconds)}: {text}{left}")

    return ProgressLog


def __getattr__(name: str):
    if name == "ProgressLog":  # defined on first use: it subclasses a Keras callback
        globals()["ProgressLog"] = _define_progress_log()
        return globals()["ProgressLog"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
