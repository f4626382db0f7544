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
nothing else, each child re-reads its environment, and the random generators are
seeded afresh. Tests of what happens *while* importing keep fresh interpreters
(tests/test_startup.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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
    """The server process: ``start(env)`` once (it imports in ``env``, the kernels' own),
    then put ``environment()`` into the kernels' environment; ``close()`` at the end."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="tinylib-kernels-"))
        self.socket = self.folder / "server.sock"
        self.process: subprocess.Popen | None = None

    def start(self, env: dict) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        with open(self.folder / "server.log", "w") as log:  # what the imports print
            self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve",
                                             str(self.socket)], stdout=subprocess.PIPE, stderr=log,
                                            stdin=subprocess.DEVNULL, env=env, text=True)
        ready = self.process.stdout.readline()
        assert ready, f"the kernel server died while importing: {(self.folder / 'server.log').read_text()[-3000:]}"

    def environment(self) -> dict:
        return {SERVER_ENV: str(self.socket)}

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def _die_with_parent() -> None:
    """Linux: the server is killed with the process that started it, not orphaned."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(path: str) -> None:
    """Import once, then fork a kernel for each launcher that connects."""
    import importlib

    _die_with_parent()
    preload = os.environ.get(PRELOAD_ENV)
    for module in (preload.split(",") if preload is not None else PRELOAD):
        if module:
            importlib.import_module(module)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished kernels are reaped by the system
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            _, fds, _, _ = socket.recv_fds(conn, 1, 3)
            request = json.loads(conn.makefile("rb").readline())
        except (OSError, ValueError):
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            try:
                _kernel(conn, request, fds)
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        conn.close()


def _kernel(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the child: become what ``python -m ipykernel_launcher ARGV`` would be in the request's
    environment, folder and streams, and die with the launcher."""
    import random

    os.setsid()  # a group of its own, so the launcher's death takes what the kernel started too
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess needs its children back
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # as `python -m` puts it
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
    sys.argv = ["ipykernel_launcher", *request["argv"]]
    from ipykernel import kernelapp

    code = 0
    try:
        kernelapp.launch_new_instance()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def launch(argv: list[str]) -> int:
    """The kernel spec's command: have the server fork the kernel, pass signals on, wait for it."""
    path = os.environ.get(SERVER_ENV)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not path:
            raise OSError(f"{SERVER_ENV} is not set")
        conn.connect(path)
        socket.send_fds(conn, [b"F"], [0, 1, 2])
        conn.sendall(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "argv": argv}).encode() + b"\n")
        pid = json.loads(conn.makefile("rb").readline())["pid"]
    except (OSError, ValueError, KeyError) as error:
        print(f"forked_kernel: no kernel server ({error}); starting a fresh kernel", file=sys.stderr, flush=True)
        os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
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
