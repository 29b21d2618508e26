"""peftbench: which fine-tuning method gives the best quality/speed/memory/storage trade-off.

Usage: ``peftbench run demo`` (see README.md), or from Python ``peftbench.run.runner.run_suite``.
"""

__version__ = "0.1.0"
