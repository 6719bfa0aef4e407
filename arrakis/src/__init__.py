"""Compatibility paths of the original project (``arrakis.src.*``); the code lives elsewhere."""
