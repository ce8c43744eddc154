"""The Python API: check_adapter with expected failures, parametrize_with_checks with verify."""

import broken_adapters as broken

from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.api import check_adapter
from pytest_invarlock.hf_adapter.checks import describe


def test_expected_failures_become_xfailed_and_unneeded_ones_xpassed(fixture_dir):
    results = check_adapter(
        broken.CountsEmbeddingAsLayer(), fixture_dir("gpt2"), checks=describe.CHECKS,
        expected_failures={"check_describe_layers": "counts the embedding as a layer (#12)",
                           ("check_describe_heads", "nothing"): "another model only",
                           "check_describe_mlp_dims": "was broken in 0.1"})
    by_check = {r.check: (r.outcome, r.reason) for r in results}
    assert by_check["check_describe_layers"] == ("xfailed", "counts the embedding as a layer (#12)")
    assert by_check["check_describe_heads"] == ("passed", "")
    assert by_check["check_describe_mlp_dims"] == ("xpassed", "was broken in 0.1")


def test_parametrize_with_checks_in_a_users_test_file(pytester, fixture_dir):
    pytester.makepyfile(f"""
        from pytest_invarlock.adapters.roles import HFCausalAdapter
        from pytest_invarlock.api import parametrize_with_checks, verify

        @parametrize_with_checks([HFCausalAdapter()], [{str(fixture_dir("gpt2"))!r}])
        def test_my_adapter(adapter, model, check):
            verify(adapter, model, check)
    """)
    result = pytester.runpytest_subprocess("-q")
    expected = check_adapter(HFCausalAdapter(), fixture_dir("gpt2"))
    passed = sum(r.outcome == "passed" for r in expected)
    result.assert_outcomes(passed=passed, skipped=len(expected) - passed)
