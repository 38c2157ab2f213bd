"""The verbs: one module per ``adaptforge`` command, the only place a command's work is orchestrated.

The rule: a verb's orchestration (load inputs, check everything before any work, run a registered
method, store the result with its typed provenance, evaluate) lives in ``pipelines/<verb>.py``; the
methods it runs live in their lifecycle package's registry (``merge/``, ``compose/``, ``generate/``,
``train/samplers``, ``prune/``, ``tta/``), and ``cli`` only parses flags and renders results.
Imports point one way::

    cli -> pipelines -> methods (merge, compose, generate, train, routing) -> lora, library, evaluate,
    scorers -> core

- :mod:`~adaptforge.pipelines.train`: ``adaptforge train``
- :mod:`~adaptforge.pipelines.importing`: ``adaptforge library import``
- :mod:`~adaptforge.pipelines.evaluate`: ``adaptforge eval``
- :mod:`~adaptforge.pipelines.merge`: ``adaptforge merge``
- :mod:`~adaptforge.pipelines.compose`: ``adaptforge compose``
- :mod:`~adaptforge.pipelines.generate`: ``adaptforge generate``
- :mod:`~adaptforge.pipelines.prune`: ``adaptforge prune``
- :mod:`~adaptforge.pipelines.predict`: ``adaptforge predict``
- :mod:`~adaptforge.pipelines.report`: ``adaptforge report``
- :mod:`~adaptforge.pipelines.serve`: ``adaptforge serve``
- :mod:`~adaptforge.pipelines.sweep`: ``adaptforge sweep`` (spec: :mod:`~adaptforge.pipelines.sweep_spec`; where
  cells run: :mod:`adaptforge.backends`)
- :mod:`~adaptforge.pipelines.tta`: ``adaptforge tta``
- :mod:`~adaptforge.pipelines.demo`: ``adaptforge demo`` (returns its summary; :mod:`adaptforge.cli.demo` renders it)
"""
