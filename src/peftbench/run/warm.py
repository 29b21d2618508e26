"""What the forkserver imports once for every run it forks (``run.forked``): the training stack, nothing more.

Importing starts no thread and initialises no CUDA context (``torch.cuda`` stays uninitialised until a run asks
for a device), so forking after it is as safe as a fresh interpreter.

torch's compiler (dynamo, inductor) is not imported here, though a compiled run's process spends 2-3 s importing
it on the H200 host: there (torch 2.11) its import initialises CUDA, and every run forked after it failed with
"Cannot re-initialize CUDA in forked subprocess" (session 9). A run that may compile starts the compiler's workers
early instead (``speed.warm_compile_workers``).
"""

import peft  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

import peftbench.measure.stage  # noqa: F401
import peftbench.run.child  # noqa: F401
import peftbench.run.recipe  # noqa: F401
import peftbench.run.record  # noqa: F401
import peftbench.run.stage  # noqa: F401
