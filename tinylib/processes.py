"""How tinylib's processes end: child processes that die with it (decoding workers,
``npm pack``), and a polite kill that unwinds like Ctrl-C (``sigterm_as_exit``).

A killed parent (``kill -9``, a job limit) runs no cleanup, so each child sees to it
itself: on Linux the kernel sends it SIGKILL when its parent dies (``prctl``), and a
thread polling the parent's pid covers other systems and a parent that died first.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _find_prctl():
    """libc's ``prctl``, looked up once in the parent: a child forked from a process with
    threads (TensorFlow's, JAX's) should make one C call, not load libraries (``dlopen``
    takes locks another thread may have held at the fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def set_parent_death_signal(sig: int) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent dies."""
    if _PRCTL is not None:  # elsewhere the polling thread (where there is one) still covers it
        _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


# The pid of the process that last forked, noted in it just before each fork (``os.register_at_fork``
# runs for ``subprocess``'s forks that have a ``preexec_fn``, and for ``os.fork``): a child reads it in
# its copy of memory to learn which process started it.
_forking_pid = os.getpid()


def _note_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


os.register_at_fork(before=_note_forking_pid)


def tied_to_this_process() -> None:
    """``preexec_fn`` for ``subprocess``: the child is killed when the caller dies (Linux).

    A caller killed between the fork and the ``prctl`` would leave the child re-parented and
    never signalled, so after setting the signal the child checks that its parent is still the
    process that forked it, and where it is not, raises before its command starts (``subprocess``
    then raises ``SubprocessError`` in the caller, were it alive to see it)."""
    if sys.platform.startswith("linux"):
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != _forking_pid:
            raise RuntimeError(f"the process that started this one ({_forking_pid}) is gone")


def die_with_parent(parent_pid: int | None) -> None:
    """Pool initializer: a worker must not outlive the process that started it. (Not
    ``tied_to_this_process``: a spawned worker is a fresh interpreter, which did not fork
    itself; the pid it is handed says who its parent was.)"""
    if sys.platform.startswith("linux"):
        set_parent_death_signal(signal.SIGKILL)
    watched = os.getppid()
    if parent_pid is not None and watched != parent_pid:
        os._exit(1)  # the parent is already gone: we were handed to another process
    threading.Thread(target=exit_when_orphaned, args=(watched,), daemon=True,
                     name="tinylib-parent-watch").start()


def exit_when_orphaned(parent: int, interval: float = 0.2) -> None:
    """Exit at once when the parent changes (it died and we were re-parented)."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


@contextlib.contextmanager
def sigterm_as_exit():
    """Let a polite kill (SIGTERM: a job limit, ``timeout``) unwind like Ctrl-C does.

    Python's default dies at once and skips ``finally`` blocks; raising SystemExit
    instead saves the record and releases the run folder.  Only the main thread can
    set handlers: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:  # None: the handler before was set from C, which Python cannot put back; the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def free_stopped_work() -> None:
    """Free what a stopped epoch left behind (its batches' generator, held by the frames of
    a deadline's stop or of a Ctrl-C's traceback) while Python still runs: left for exit,
    TensorFlow's finalizer of that generator fails with "Python interpreter state is not
    initialized"."""
    gc.collect()
