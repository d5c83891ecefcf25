"""Bring your own model: import models trained with ReservoirPy or neuralforecast and serve them.

The command lines are `python -m export.import_reservoirpy` and `python -m export.import_neuralforecast`;
`export.byom.common` holds what both share (ONNX export with chosen dims, INT8, repository entries).
Neither library is imported by the core: only the import commands load them, lazily.
"""
