"""The test suite (a regular package, so that `tests.conftest` is this one even where a dependency installs a
top-level `tests` package of its own, as the mmsegmentation wheel does)."""
