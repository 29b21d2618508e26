"""A run's process from a warm interpreter: forked by a server that imported torch, transformers and peft once.

Usage (by ``runner.run_in_child``):
    proc = start(payload_path)           # Popen-like: pid, poll(), wait(timeout), kill()
    PEFTBENCH_CHILD=spawn peftbench run demo    # every run in a fresh interpreter instead (python -m ...child)

Each run still gets a process of its own (no run inherits another's heap, allocator caches or CUDA context):
the process is forked from multiprocessing's forkserver, which imported the training stack (``PRELOAD``) once
when the suite started its first run and has done nothing since: no thread started, no CUDA initialised
(both are what makes forking unsafe), so the child is what a fresh interpreter would be after its imports,
without the 3-10 s they take per run (``phases.startup`` in a result says what was left). The child takes
the suite's environment of the moment (the server's is that of its start), its own session (so a terminal's
Ctrl-C reaches the suite, which passes it on, as before) and dies with the server, which dies with the suite.
Several processes per run (``--gpus N``) keep accelerate's launcher.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

PRELOAD = ["peftbench.run.warm"]
_CONTEXT = None


def available() -> bool:
    """Forking from a warm server: on where the platform has a forkserver, unless PEFTBENCH_CHILD=spawn."""
    return (
        os.environ.get("PEFTBENCH_CHILD", "fork") != "spawn" and "forkserver" in multiprocessing.get_all_start_methods()
    )


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CONTEXT = ctx
    return _CONTEXT


def warm_up() -> None:
    """Start the server now, so its imports overlap the suite's own planning (about 10 s each on the H200 host)."""
    if available():
        _context()
        from multiprocessing import forkserver

        forkserver.ensure_running()


class _Fd:
    """A file descriptor sent to the forked child (the suite's stdout and stderr of the moment: the server's
    are those of its start, which a test's capture or a redirected suite has since replaced)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        from multiprocessing import reduction

        return (_received, (reduction.DupFd(self.fd),))


def _received(dup) -> int:
    return dup.detach()


class Forked:
    """The forked run, answering as ``subprocess.Popen`` does (a negative code: killed by that signal)."""

    def __init__(self, payload: str, module: str = "peftbench.run.child", env: dict | None = None):
        streams = (_Fd(1), _Fd(2))  # what a Popen'd child would inherit: the suite's descriptors 1 and 2
        args = (module, payload, {**os.environ, **(env or {})}, *streams)
        self.process = _context().Process(target=_entry, args=args, daemon=False)
        self.process.start()
        self.pid = self.process.pid
        self.args = ["forkserver", module, payload]

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()


def start(payload, module: str = "peftbench.run.child", env: dict | None = None) -> Forked:
    """``python -m MODULE PAYLOAD`` as a fork of the warm server: a run (``run.child``) or a group's measurement
    stage (``run.stage``); the module's ``main([payload])`` gives the exit code. ``env``: variables added to the
    suite's environment for this child (an executor's slot)."""
    return Forked(str(payload), module, env)


def _entry(module: str, payload: str, env: dict, out_fd: int, err_fd: int) -> None:
    os.setsid()  # signals come from the suite, as with start_new_session
    for fd, target in ((out_fd, 1), (err_fd, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    # a forkserver's child inherits "forkserver" as its default start method; a fresh interpreter has the
    # platform's (data loader workers of a run fork their dataset and collate, which a forkserver would pickle)
    multiprocessing.set_start_method(None, force=True)
    threads = env.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():  # the server's torch read the variable at its own start
        import torch

        torch.set_num_threads(int(threads))
    import importlib

    code = importlib.import_module(module).main([payload])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
