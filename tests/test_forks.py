"""tests/forks.py where forking is unsafe (no Linux, an NVIDIA GPU) or switched off: ``run``
starts a fresh interpreter and answers as a fork would."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forks import FRESH_PROCESSES_ENV, ForkServer  # noqa: E402


def test_without_forks_run_starts_a_fresh_interpreter_with_the_same_arguments_kills_and_results(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setenv(FRESH_PROCESSES_ENV, "1")
    server = ForkServer()
    try:
        assert not server.forking
        code = "import os, sys; print(os.getcwd(), sys.argv[1:]); print(os.environ['PROBE'], file=sys.stderr); sys.exit(3)"
        done = server.run(["-c", code, "an-argument"], env={**os.environ, "PROBE": "from env"}, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (3, f"{tmp_path} ['an-argument']\n", "from env\n")
        killed = server.run(["-c", "import time; print('started', flush=True); time.sleep(60)"], kill_after=5)
        assert killed.returncode == -9 and killed.stdout == "started\n"  # SIGKILL, as a job limit sends it
        assert not server.servers  # no server was started
    finally:
        server.close()
