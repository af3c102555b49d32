"""ipywidgets views that redraw a static figure function: the interactive twin of every notebook figure.

A view starts at the parameters' values (explicit ``value=``; ``interact`` would start at the midpoint) and
redraws only on release for expensive figures (``continuous_update=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def view(draw: Callable[..., Any], controls: dict[str, Any], enabled: bool = True, continuous_update: bool = False):
    """Show ``draw(**values)`` under the given widgets and redraw when they change; returns the widget box.

    ``draw`` returns a matplotlib figure (shown and closed here). Sliders and text boxes redraw on release
    (``continuous_update=False``: a matplotlib redraw per drag step queues up in the kernel) unless
    ``continuous_update=True``. With ``enabled=False`` (headless runs that turn widgets off) nothing is built.
    """
    if not enabled:
        return None
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    output = widgets.Output()

    def redraw(**values: Any) -> None:
        with output:
            output.clear_output(wait=True)
            fig = draw(**values)
            display(fig)
            plt.close(fig)

    for name, control in controls.items():
        if not isinstance(control, widgets.ValueWidget):
            raise TypeError(f"control {name!r} must be an ipywidgets value widget, got {type(control).__name__}")
        if control.has_trait("continuous_update"):
            control.continuous_update = continuous_update
    widgets.interactive_output(redraw, controls)
    box = widgets.VBox([widgets.HBox(list(controls.values())), output])
    display(box)
    return box
