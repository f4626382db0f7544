"""Chapter kernels for nbval without TensorFlow's import in each: forks of a kernel server
that imported tinylib, Keras and the Jupyter kernel once.

Every chapter's first cell imports tinylib, and with it TensorFlow: 17 s on a 2-core Zen 2
CPU, paid again by each of the fifteen chapters' kernels. Here nbval starts the kernel
spec ``tinylib-forked`` (``write_kernel_spec``), whose command is this file as a
*launcher*: it hands its connection file, environment, working folder and standard
streams to the server, which forks a child that runs what ``python -m ipykernel_launcher``
runs, in that environment. The launcher stays the process Jupyter knows: it passes on
the signals Jupyter sends (an interrupt reaches the running cell), ends when the kernel
ends, and a kernel whose launcher is killed kills itself and what it started. Without a
server (``SERVER_ENV`` unset, or the server gone) the launcher becomes a fresh
``ipykernel_launcher``, so a chapter still runs, only slower.

A chapter starts from the state a fresh kernel has after its imports: the server runs
nothing else, each child re-reads its environment, puts ``sys.path`` as a fresh kernel
has it, and seeds the random generators afresh. What happens *while* importing is
tested in fresh interpreters (tests/test_startup.py) and in the chapters book/conftest.py
keeps on fresh kernels. Linux only, and not where an NVIDIA GPU is visible: the server's
import probes the devices, and CUDA does not survive a fork (``usable``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

SERVER_ENV = "TINYLIB_KERNEL_SERVER"  # the server's socket; the launcher reads it
PRELOAD_ENV = "TINYLIB_KERNEL_PRELOAD"  # modules the server imports (tests of this file import few)
KERNEL_NAME = "tinylib-forked"
# What the chapters import: tinylib's modules bring Keras and TensorFlow. Not what a module
# sets up on import inside a kernel only: matplotlib's inline backend (matplotlib_inline)
# hooks the figures into the cell's outputs when it is imported under IPython, so it is
# imported in the kernel, as in a fresh one (preloaded, a chapter's figures were lost).
PRELOAD = ("keras", "numpy", "pandas", "ipykernel.kernelapp", "tinylib", "tinylib.chapter_costs", "tinylib.data",
           "tinylib.environment", "tinylib.evaluate", "tinylib.gradcam", "tinylib.models", "tinylib.plots",
           "tinylib.results", "tinylib.train")


def usable() -> bool:
    """Whether kernels may be forked here: Linux (PR_SET_PDEATHSIG), and no NVIDIA GPU, whose
    driver the server's import would initialize before the fork."""
    return sys.platform == "linux" and not glob.glob("/dev/nvidia[0-9]*")


def write_kernel_spec(folder: Path) -> Path:
    """A Jupyter data folder holding the ``tinylib-forked`` kernel spec (put it on JUPYTER_PATH)."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    kernel = {"argv": [sys.executable, str(Path(__file__).resolve()), "-f", "{connection_file}"],
              "display_name": "Python 3 (tinylib, forked)", "language": "python",
              "interrupt_mode": "signal"}
    (spec / "kernel.json").write_text(json.dumps(kernel, indent=1))
    return folder


class KernelServer:
    """The server process: ``start(env)`` once (it imports in ``env``, the kernels' own) and go
    on; ``environment()`` is what a kernel's environment needs to be forked (empty where the
    server could not start: the launcher then starts a fresh kernel); ``close()`` at the end."""

    READY_TIMEOUT = 300  # seconds for the imports

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="tinylib-kernels-"))
        self.socket = self.folder / "server.sock"
        self.process: subprocess.Popen | None = None
        self._ready: bool | None = None

    def start(self, env: dict) -> None:
        """Start the server, once, without waiting for its imports."""
        if self.process is None:
            with open(self.folder / "server.log", "w") as log:  # what the imports print
                self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve",
                                                 str(self.socket), str(os.getpid())], stdout=subprocess.PIPE, stderr=log,
                                                stdin=subprocess.DEVNULL, env=env, text=True)

    def ready(self) -> bool:
        """Wait for the server's imports; False (and why, on stderr) if it did not get there."""
        if self._ready is None and self.process is not None:
            self._ready = wait_for_ready(self.process.stdout, self.READY_TIMEOUT)
            if not self._ready:
                log = (self.folder / "server.log").read_text(errors="replace")[-3000:]
                print(f"forked_kernel: the kernel server did not start; fresh kernels instead\n{log}",
                      file=sys.stderr, flush=True)
        return bool(self._ready) and self.process.poll() is None

    def environment(self) -> dict:
        return {SERVER_ENV: str(self.socket)} if self.ready() else {}

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def wait_for_ready(stream, timeout: float) -> bool:
    """Read a server's stdout up to its ready line (``{"ready": pid}``), for at most ``timeout``
    seconds; False if the server ended or the time ran out first. A line an import printed
    is not the answer: it is read past. Lines after the ready one stay in ``stream`` (the
    fork server answers on it)."""
    found: list[str] = []

    def read() -> None:
        for line in stream:
            if '{"ready"' in line:  # also after text an import printed without a newline
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return bool(found)


def die_with_parent(parent: int | None = None) -> None:
    """Linux: this process is killed with the one that started it, not orphaned.

    ``parent``: the pid that started it; if that one died before the signal was set, the
    process has been handed to another and exits at once."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def serve(path: str) -> None:
    """Import once, then fork a kernel for each launcher that connects."""
    import importlib

    die_with_parent(int(sys.argv[3]) if len(sys.argv) > 3 else None)
    server = os.getpid()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a server that was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)  # a launcher that comes during the imports waits for them
    preload = os.environ.get(PRELOAD_ENV)
    for module in (preload.split(",") if preload is not None else PRELOAD):
        if module:
            importlib.import_module(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished kernels are reaped by the system
    print(json.dumps({"ready": server}), flush=True)
    while True:
        conn, _ = listener.accept()
        fds: list[int] = []
        try:
            _, fds, _, _ = socket.recv_fds(conn, 1, 3)
            request = json.loads(conn.makefile("rb").readline())
        except (OSError, ValueError):
            for fd in fds:
                os.close(fd)
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            try:
                _kernel(conn, request, fds, server)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(1)
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        conn.close()


def _kernel(conn: socket.socket, request: dict, fds: list[int], server: int) -> None:
    """In the child: become what ``python -m ipykernel_launcher ARGV`` would be in the request's
    environment, folder and streams, and die with the launcher or the server."""
    import random

    os.setsid()  # a group of its own, so the launcher's death takes what the kernel started too
    die_with_parent(server)  # the server dies with pytest's worker, and its kernels with it
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess needs its children back
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    # ipykernel_launcher removes the script's folder (here tests/, the server's); the kernel's
    # shell then puts '' (the working folder) before site-packages, as in a fresh kernel.
    del sys.path[0]
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "tinylib" in sys.modules:
        from tinylib import startup

        startup.install()  # what importing tinylib does to this environment, as in a fresh kernel

    def watch() -> None:  # the launcher sends nothing more: end of file is its end
        try:
            while conn.recv(64):
                pass
        finally:
            os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
    os.register_at_fork(after_in_child=conn.close)  # a process the kernel forks must not hold it open
    import importlib.util

    sys.argv = [importlib.util.find_spec("ipykernel_launcher").origin, *request["argv"]]  # as `python -m` sets it
    from ipykernel import kernelapp

    code = 0
    try:
        # ipykernel read its parent's pid from the environment when the server imported it.
        kernelapp.IPKernelApp.launch_instance(parent_handle=int(os.environ.get("JPY_PARENT_PID") or 0))
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def launch(argv: list[str]) -> int:
    """The kernel spec's command: have the server fork the kernel, pass signals on, wait for it."""
    path = os.environ.get(SERVER_ENV)
    if not path:  # a fresh kernel was asked for
        os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [b"F"], [0, 1, 2])
        conn.sendall(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "argv": argv}).encode() + b"\n")
        pid = json.loads(conn.makefile("rb").readline())["pid"]
    except (OSError, ValueError, KeyError) as error:
        print(f"forked_kernel: no kernel server ({error}); starting a fresh kernel", file=sys.stderr, flush=True)
        os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])

    def forward(signum, frame):  # Jupyter signals the launcher's group: the kernel's group gets it
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)
    while conn.recv(64):  # the kernel holds the other end: end of file when it exits
        pass
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
    else:
        sys.exit(launch(sys.argv[1:]))
