"""Suite-wide pytest configuration: Hypothesis profiles.

HYPOTHESIS_PROFILE picks one (`make test` sets it to `ci` when CI is set, else `dev`):
  dev  100 examples per property, fast enough to run on every change.
  ci   300 examples per property, and prints the reproduction blob of any failure.
Both are derandomized, so a run is a pure function of the code: a property that fails
fails again on rerun, here and in CI. Neither has a deadline: speed is measured in
benchmarks/, never asserted by a test.
"""

import os

import pytest
from hypothesis import settings

settings.register_profile("dev", max_examples=100, derandomize=True, deadline=None)
settings.register_profile("ci", max_examples=300, derandomize=True, deadline=None, print_blob=True)
_PROFILES = ("dev", "ci")


def pytest_configure(config: pytest.Config) -> None:
    profile = os.environ.get("HYPOTHESIS_PROFILE", "dev")
    if profile not in _PROFILES:
        raise pytest.UsageError(
            f"HYPOTHESIS_PROFILE={profile!r} is not a profile: "
            f"set it to {' or '.join(_PROFILES)}, or unset it (default dev)."
        )
    settings.load_profile(profile)
