"""What the user declares: typed config dataclasses that document their fields (``config``), suite files
read strictly (``strictyaml``) and assembled into experiments with defaults, ``--set``, matrix axes and
seeds (``suites``), and the check of a value against a type hint (``typecheck``). Torch-free."""
