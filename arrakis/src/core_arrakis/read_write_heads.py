"""Compatibility path: ``from arrakis.src.core_arrakis.read_write_heads import WriteReadAnalyzer``."""

from arrakis.tools.write_read import WriteReadAnalyzer

__all__ = ["WriteReadAnalyzer"]
