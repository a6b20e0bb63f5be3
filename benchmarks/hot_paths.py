"""The hot paths ``bench speed`` measures, each built from the suite's own code (registered into
``benchmarks.speed.HOT_PATHS``)."""

from __future__ import annotations
