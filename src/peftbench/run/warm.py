"""What the forkserver imports once for every run it forks (``run.forked``): the training stack, nothing more.

Importing starts no thread and initialises no CUDA context (``torch.cuda`` stays uninitialised until a run asks
for a device), so forking after it is as safe as a fresh interpreter.
"""

import peft  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

import peftbench.measure.stage  # noqa: F401
import peftbench.run.child  # noqa: F401
import peftbench.run.recipe  # noqa: F401
import peftbench.run.record  # noqa: F401
import peftbench.run.stage  # noqa: F401
