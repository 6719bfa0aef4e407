"""Pictures and notebook renderings of the results (docs/architecture.md: plotting lives apart).

Each ``plot_*`` function returns a ``matplotlib.figure.Figure`` built without pyplot: it
shows nothing and saves nothing (``fig.savefig(path)`` does). matplotlib is imported inside
the functions, so importing this package, or ``arrakis``, does not load it. The results'
``plot()`` methods call these; ``arrakis.viz.html`` renders results as HTML tables for
notebooks (their ``_repr_html_``).
"""

from arrakis.viz.attention import plot_attention_pattern
from arrakis.viz.circuit import plot_circuit
from arrakis.viz.composition import plot_composition
from arrakis.viz.flow import plot_information_flow
from arrakis.viz.heads import plot_head_scores
from arrakis.viz.roles import plot_head_roles

__all__ = [
    "plot_attention_pattern",
    "plot_circuit",
    "plot_composition",
    "plot_head_roles",
    "plot_head_scores",
    "plot_information_flow",
]
