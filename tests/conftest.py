import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("INVARLOCK_ALLOW_REMOTE_CODE", None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fixture_dir():
    """Return a function mapping a fixture name to its built checkpoint directory."""
    from pytest_invarlock.fixtures import fixture_path

    return lambda name: fixture_path(name)
