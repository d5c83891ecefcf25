"""Bring your own model: import models trained with ReservoirPy or neuralforecast and serve them.

The command lines are `python -m byom.import_reservoirpy` and `python -m byom.import_neuralforecast`;
`byom.importer` holds what both share (ONNX export with chosen dims, INT8, repository entries).
Neither library is imported by the core: only the import commands load them, lazily. The importers publish
into the repository, so they sit above it (export, calibration and repository/ never import them).
"""
