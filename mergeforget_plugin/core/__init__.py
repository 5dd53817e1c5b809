"""The framework-free core: the SLAO math, the continual state, the output layout, atomic writes.

Nothing here imports transformers, PEFT, TRL or Axolotl (``tests/test_layering.py`` checks it), so
the equations and the state can be read, tested and reused without a model.
"""
