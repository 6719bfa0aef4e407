"""Compatibility re-exports: ``arrakis.src.bench.*`` as the original laid it out."""
