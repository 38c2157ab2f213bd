"""``adaptforge serve``: many adapters behind one HTTP server, for adaptforge's scorers.

- :mod:`~adaptforge.serve.config`: :class:`ServeConfig` and :class:`ServeLimits` (typed, checked at start);
- :mod:`~adaptforge.serve.batched`: mixed-adapter batches, factors gathered per row (S-LoRA / Punica / LoRAX);
- :mod:`~adaptforge.serve.cache`: resident adapters (LRU with pins) over the library (hot-load, checksums);
- :mod:`~adaptforge.serve.batcher`: the bounded queue and the one model worker (micro-batching, backpressure);
- :mod:`~adaptforge.serve.scoring`: rows with their own adapter selection through the scorers' calls;
- :mod:`~adaptforge.serve.resolve`: request fields to adapters, heads, request-time merges and routers;
- :mod:`~adaptforge.serve.service` and :mod:`~adaptforge.serve.app`: the service and its FastAPI routes;
- :mod:`~adaptforge.serve.metrics`: Prometheus text for ``/metrics``.

Building a service from a library and running it is :mod:`adaptforge.pipelines.serve`; nothing here
orchestrates another verb. Importing this package imports torch and FastAPI (the CLI does it lazily).
"""

from adaptforge.serve.app import create_app
from adaptforge.serve.config import ServeConfig, ServeLimits
from adaptforge.serve.service import Service

__all__ = ["ServeConfig", "ServeLimits", "Service", "create_app"]
