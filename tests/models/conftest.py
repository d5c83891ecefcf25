from pathlib import Path

import pytest

from models import train

TINY = train.Profile(
    n_series=4,
    n_items=300,
    n_users=200,
    reservoir_windows=64,
    nhits_steps=4,
    nhits_batch=16,
    val_every=2,
    mackey_glass_train=300,
    reservoir_units=200,
)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A complete (tiny) training run: data, every checkpoint and the report."""
    out = tmp_path_factory.mktemp("artifacts")
    report = train.run(out, TINY, seed=0)
    train.write_reports(out, report)
    return out, report
