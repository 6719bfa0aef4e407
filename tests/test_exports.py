"""What users import first comes from ``arrakis`` itself, the same objects as their modules'."""

from __future__ import annotations

import pytest


def test_the_analyzer_and_the_bench_come_from_the_top_level():
    import arrakis
    from arrakis import BaseInterpretabilityBench, WriteReadAnalyzer
    from arrakis.bench import BaseInterpretabilityBench as Bench
    from arrakis.tools import WriteReadAnalyzer as Analyzer

    assert WriteReadAnalyzer is Analyzer and BaseInterpretabilityBench is Bench
    assert {"WriteReadAnalyzer", "BaseInterpretabilityBench"} <= set(arrakis.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'WriteReadAnalyser'"):
        arrakis.WriteReadAnalyser  # noqa: B018
