import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("INVARLOCK_ALLOW_REMOTE_CODE", None)

import pytest

from pytest_invarlock.hf_adapter.fixtures import CACHE_ENV, cache_root

# pytester moves HOME; pin the fixture cache so every test and subprocess shares one build.
os.environ[CACHE_ENV] = str(cache_root())


@pytest.fixture(scope="session", autouse=True)
def _built_fixtures():
    """Build every fixture (importing its model classes) before any test runs.

    pytester restores sys.modules after each test; a transformers module first imported inside
    one would be imported again later, and torch refuses to register its operators twice.
    """
    import transformers

    from pytest_invarlock.hf_adapter.fixtures import catalog, fixture_path

    for name, fixture in catalog().items():
        getattr(transformers, fixture.auto_class).from_pretrained(fixture_path(name))


@pytest.fixture(scope="session")
def fixture_dir():
    """Return a function mapping a fixture name to its built checkpoint directory."""
    from pytest_invarlock.hf_adapter.fixtures import fixture_path

    return fixture_path


from hypothesis import HealthCheck, settings  # noqa: E402

# ci: bounded and derandomized, so CI is reproducible; dev: explore more when iterating locally.
settings.register_profile("ci", max_examples=30, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
