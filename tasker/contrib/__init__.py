"""Optional integrations of tasker with other libraries.

Each submodule needs its own extra dependency and imports it only when the submodule
itself is imported, so ``import tasker`` never does:

- :mod:`tasker.contrib.prometheus` — Prometheus metrics (``pip install 'tasker[prometheus]'``).
"""

__all__: list[str] = []
