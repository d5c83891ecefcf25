"""The calibration tests read the same small export as tests/export (see its conftest)."""

from tests.export.conftest import artifacts, repo, small_export  # noqa: F401 - shared session fixtures
