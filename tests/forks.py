"""Fresh Python processes without paying the imports each time: forks of a server that
imported Keras, its backend and tinylib once.

Importing TensorFlow took 17 s on a 2-core Zen 2 CPU (``python -X importtime``), and the
tests that train in a process of their own (to kill it, to resume it, to run the command
line) started dozens. Each fork is a real process that is really killed, with
its own environment, arguments, working folder and output files; it starts from the state
a fresh process has after its imports, because the server runs nothing else. A test that
checks what happens *while* importing (tests/test_startup.py) keeps a fresh interpreter.
Where forking after those imports is unsafe (not Linux, or an NVIDIA GPU whose driver the
imports initialize: ``forked_kernel.usable``), or with ``TINYLIB_TEST_FRESH_PROCESSES=1``,
``run`` starts a fresh interpreter instead, with the same arguments and results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from forked_kernel import usable, wait_for_ready

from tinylib import processes

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
READY_TIMEOUT = 300  # seconds for the server's imports
FRESH_PROCESSES_ENV = "TINYLIB_TEST_FRESH_PROCESSES"

# Settings read while importing (by Keras, TensorFlow or tinylib), not when training: a
# request whose values differ from a server's goes to a server started with its own.
# (PYTHONPATH is applied in each child; what the imports print goes to the server's log.)
IMPORT_TIME = ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES", "KERAS_HOME")

SERVER = textwrap.dedent("""
    import json, os, runpy, signal, sys, time, traceback

    sys.path.insert(0, sys.argv[2])  # tests/, for one import; a child's sys.path is a fresh process's
    from forked_kernel import die_with_parent  # a child that outlives its parent is killed, not orphaned
    del sys.path[0], sys.modules["forked_kernel"]  # a child's modules and sys.path are a fresh process's
    die_with_parent(int(sys.argv[3]))
    server = os.getpid()
    cache = sys.argv[1]
    import keras, numpy as np  # what the children import, imported here once
    from tinylib import augment, data, models, startup, train
    from tinylib.profiles import Profile
    if keras.backend.backend() == "jax":  # the children compile the same steps: once, on disk
        import jax
        try:  # keras.utils.set_random_seed imports TensorFlow where it is installed, on any backend
            import tensorflow
        except ImportError:
            pass
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    print(json.dumps({"ready": os.getpid()}), flush=True)

    def run(request):  # in the child: what `python ARGV...` would do
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.path[1:1] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        startup.install()  # what importing tinylib does to this environment, as in a fresh process
        argv = request["argv"]
        if argv[0] == "-m":
            sys.path[0] = os.getcwd()
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.path[0] = ""
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()  # a group of its own: a kill reaches the processes it starts too
                die_with_parent(server)
                signal.alarm(request["timeout"])  # a hung child ends with SIGALRM, not the test session
                out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(out, 1)
                os.dup2(err, 2)
                run(request)
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if not isinstance(stop.code, (int, type(None))):
                    print(stop.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        if request.get("kill_after") is None:
            _, status = os.waitpid(pid, 0)
        else:  # a job limit's SIGKILL at that moment, to the child and every process it started
            deadline = time.monotonic() + request["kill_after"]
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            if done[0] == 0:
                os.killpg(pid, signal.SIGKILL)
                done = os.waitpid(pid, 0)
            status = done[1]
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
""")


class ForkServer:
    """One server per set of import-time settings; ``run`` is ``subprocess.run`` for Python."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="tinylib-forks-"))
        (self.folder / "server.py").write_text(SERVER)
        self.servers: dict[tuple, subprocess.Popen] = {}
        self.count = 0

    def _server(self, env: dict) -> subprocess.Popen:
        if "KERAS_BACKEND" not in env:  # the backend a fresh process would choose: this one's
            import keras

            env = {**env, "KERAS_BACKEND": keras.backend.backend()}
        key = tuple(env.get(name) for name in IMPORT_TIME)
        server = self.servers.get(key)
        if server is None or server.poll() is not None:
            index = len(self.servers)
            with open(self.folder / f"server-{index}.log", "w") as log:  # what its imports print
                server = subprocess.Popen([sys.executable, str(self.folder / "server.py"),
                                           str(self.folder / f"jax-cache-{index}"), str(TESTS), str(os.getpid())],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                          env=env, cwd=REPO)
            if not wait_for_ready(server.stdout, READY_TIMEOUT):
                server.kill()  # the end of its output also ends wait_for_ready's reader
                server.wait()
                raise AssertionError(f"the fork server did not start: "
                                     f"{(self.folder / f'server-{index}.log').read_text()[-3000:]}")
            self.servers[key] = server
        return server

    def run(self, argv: list[str], env: dict | None = None, cwd: str | Path | None = None,
            timeout: int = 600, kill_after: float | None = None) -> subprocess.CompletedProcess:
        """Run ``python *argv`` (a script, ``-m module`` or ``-c code``, then its arguments) in a
        fork; stdout and stderr come back as text, as with ``capture_output=True, text=True``.
        ``kill_after`` seconds: SIGKILL it and every process it started then, if still running."""
        env = {k: str(v) for k, v in (os.environ if env is None else env).items()}
        if not self.forking:
            return self._run_fresh(argv, env, cwd, timeout, kill_after)
        server = self._server(env)
        self.count += 1
        out, err = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        request = {"argv": [str(a) for a in argv], "env": env, "cwd": str(cwd or os.getcwd()),
                   "stdout": str(out), "stderr": str(err), "timeout": int(timeout), "kill_after": kill_after}
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        answer = server.stdout.readline()
        assert answer, f"the fork server died (exit {server.wait()})"
        result = subprocess.CompletedProcess([sys.executable, *request["argv"]], json.loads(answer)["returncode"],
                                             out.read_text(errors="replace"), err.read_text(errors="replace"))
        out.unlink()
        err.unlink()
        return result

    @property
    def forking(self) -> bool:
        return usable() and os.environ.get(FRESH_PROCESSES_ENV) != "1"

    @staticmethod
    def _run_fresh(argv, env: dict, cwd, timeout: int, kill_after: float | None) -> subprocess.CompletedProcess:
        """``run`` in a fresh interpreter: the same arguments, the same kills, the same results."""
        command = [sys.executable, *[str(a) for a in argv]]
        process = subprocess.Popen(command, env=env, cwd=str(cwd or os.getcwd()), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True,
                                   preexec_fn=processes.tied_to_this_process)
        try:
            out, err = process.communicate(timeout=timeout if kill_after is None else min(timeout, kill_after))
        except subprocess.TimeoutExpired:  # a job limit's SIGKILL (or the hung child's end), to its whole group
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        except BaseException:  # Ctrl-C does not reach a session of its own: the child goes with the test
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        return subprocess.CompletedProcess(command, process.returncode, out, err)

    def close(self):
        for server in self.servers.values():
            server.stdin.close()  # the server's loop ends
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        self.servers.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
