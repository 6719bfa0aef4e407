"""Plots. Imported only when a result's ``plot()`` is called, so matplotlib loads on demand."""
