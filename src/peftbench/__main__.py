"""``python -m peftbench`` / ``accelerate launch -m peftbench run ...``."""

import sys

from peftbench.cli import main

sys.exit(main())
