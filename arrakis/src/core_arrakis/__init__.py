"""Compatibility re-exports: ``arrakis.src.core_arrakis.*`` as the original laid it out."""
