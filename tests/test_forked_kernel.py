"""The chapters' kernels under nbval are forks of a server (tests/forked_kernel.py): they must
behave as fresh kernels do, in the environment and folder nbval gives them, with figures,
interrupts and kills as Jupyter sends them."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forked_kernel  # noqa: E402

pytestmark = pytest.mark.skipif(not forked_kernel.usable(), reason="kernels are forked on Linux without a GPU")
INLINE = "module://matplotlib_inline.backend_inline"
# What importing Keras imports of matplotlib: enough to show that a figure drawn in a forked
# kernel still reaches the cell's outputs, without TensorFlow's import in this test.
PRELOAD = "numpy,matplotlib.pyplot,ipykernel.kernelapp"


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    """Start kernels of the ``tinylib-forked`` spec; yields ``start(server=True)`` -> (manager, client)."""
    from jupyter_client import KernelManager

    monkeypatch.setenv("JUPYTER_PATH", str(forked_kernel.write_kernel_spec(tmp_path / "jupyter")))
    monkeypatch.setenv("MPLBACKEND", INLINE)
    monkeypatch.setenv(forked_kernel.PRELOAD_ENV, PRELOAD)
    monkeypatch.setenv("FORKED_KERNEL_PROBE", "set by the launcher's parent")
    server = forked_kernel.KernelServer()
    started = []

    def start(with_server: bool = True):
        if with_server:
            server.start(dict(os.environ))
            assert server.ready(), "the kernel server did not start"
            monkeypatch.setenv(forked_kernel.SERVER_ENV, server.environment()[forked_kernel.SERVER_ENV])
        else:
            monkeypatch.delenv(forked_kernel.SERVER_ENV, raising=False)
        manager = KernelManager(kernel_name=forked_kernel.KERNEL_NAME)
        manager.start_kernel(cwd=str(tmp_path))
        client = manager.client()
        client.start_channels()
        started.append((manager, client))
        client.wait_for_ready(timeout=60)
        return manager, client

    yield start
    for manager, client in started:
        client.stop_channels()
        if manager.is_alive():
            manager.shutdown_kernel(now=True)
    server.close()


def run_cell(client, code: str, timeout: float = 60):
    """Execute ``code``; returns (reply content, the output messages' contents by type)."""
    outputs = []
    reply = client.execute_interactive(code, timeout=timeout,
                                       output_hook=lambda msg: outputs.append((msg["msg_type"], msg["content"])))
    return reply["content"], outputs


def printed(outputs) -> str:
    return "".join(content["text"] for kind, content in outputs if kind == "stream")


def gone(pid: int, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_forked_kernel_runs_in_nbvals_environment_and_folder_and_shows_its_figures(kernels, tmp_path, capfd):
    manager, client = kernels()
    reply, outputs = run_cell(client, "import json, os, sys\n"
                                      "print(json.dumps([os.getpid(), os.getppid(), os.getcwd(), sys.path,"
                                      " os.environ['FORKED_KERNEL_PROBE']]))")
    assert reply["status"] == "ok", reply
    pid, parent, cwd, path, probe = json.loads(printed(outputs))
    launcher = manager.provisioner.process.pid
    assert pid != launcher and parent != launcher, "the kernel should be a fork of the server, not the launcher"
    assert Path(cwd) == tmp_path and probe == "set by the launcher's parent"

    # What a fresh kernel (the spec without a server) has on sys.path: the same, in order.
    fresh_manager, fresh_client = kernels(with_server=False)
    reply, outputs = run_cell(fresh_client, "import json, sys; print(json.dumps(sys.path))")
    assert path == json.loads(printed(outputs))
    assert "Ctrl-C will not work" not in capfd.readouterr().out  # ipykernel knows its parent, as a fresh one

    # matplotlib was imported before the kernel existed, as Keras imports it: the figure
    # must still come back as an image, not be lost with the inline backend's hooks.
    reply, outputs = run_cell(client, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])")
    assert reply["status"] == "ok", reply
    images = [content for kind, content in outputs if kind == "display_data" and "image/png" in content["data"]]
    assert len(images) == 1, outputs


def test_an_interrupt_stops_the_running_cell_and_a_killed_launcher_takes_its_kernel(kernels):
    manager, client = kernels()
    reply, outputs = run_cell(client, "import os; print(os.getpid())")
    kernel = int(printed(outputs))
    sent = client.execute("import time; time.sleep(120)", stop_on_error=False)  # the next cell is not aborted
    while True:  # a kernel ignores an interrupt until a cell runs
        message = client.get_iopub_msg(timeout=60)
        if message["msg_type"] == "execute_input" and message["parent_header"].get("msg_id") == sent:
            break
    time.sleep(0.5)
    started = time.monotonic()
    manager.interrupt_kernel()  # SIGINT to the launcher's process group, as Jupyter sends it
    reply = client.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", reply
    assert time.monotonic() - started < 30
    reply, outputs = run_cell(client, "print('still alive')")
    assert printed(outputs).strip() == "still alive"

    os.kill(manager.provisioner.process.pid, signal.SIGKILL)  # the launcher dies without a word
    assert gone(kernel), "the kernel outlived its launcher"


def test_without_a_server_the_spec_starts_a_fresh_kernel(kernels):
    manager, client = kernels(with_server=False)
    reply, outputs = run_cell(client, "import os; print(os.getpid())")
    assert reply["status"] == "ok", reply
    assert int(printed(outputs)) == manager.provisioner.process.pid  # the launcher became the kernel
