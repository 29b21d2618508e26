"""What the forkserver imports once for every run it forks (``run.forked``): the training stack, nothing more.

Importing starts no thread and initialises no CUDA context (``torch.cuda`` stays uninitialised until a run asks
for a device), so forking after it is as safe as a fresh interpreter.

torch's compiler (dynamo, inductor) is not imported here, though a compiled run's process spends 2-3 s importing
it on the H200 host: there (torch 2.11) its import initialises CUDA, and every run forked after it failed with
"Cannot re-initialize CUDA in forked subprocess" (session 9). A run that may compile starts the compiler's workers
early instead (``compiletime.warm_compile_workers``).

The server ends without the interpreter's finalisation (``_exit_now``): its runs are over when it ends (the suite's
process has exited), and tearing down torch, transformers and peft took 0.8 s on 2 cores, during which it still
held the suite's stdout and stderr open, so a caller reading them to their end (a benchmark, a pipe into ``tee``)
waited for it after the suite had exited.
"""

import atexit
import os
import sys

import peft  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

import peftbench.measure.stage  # noqa: F401
import peftbench.run.child  # noqa: F401
import peftbench.run.recipe  # noqa: F401
import peftbench.run.record  # noqa: F401
import peftbench.run.stage  # noqa: F401


def _in_the_server() -> bool:
    """Whether this import is the forkserver's preload (``multiprocessing.forkserver.main`` is on the stack)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.replace(os.sep, "/").endswith("multiprocessing/forkserver.py"):
            return True
        frame = frame.f_back
    return False


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)


QUICK_EXIT = _in_the_server()
if QUICK_EXIT:  # registered last, so run first: the server's other exit handlers are its imports', not its runs'
    atexit.register(_exit_now)
