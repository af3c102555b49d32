"""ipywidgets views that redraw a static figure function: the interactive twin of every notebook figure.

A view starts at the parameters' values (explicit ``value=``; ``interact`` would start at the midpoint) and
redraws only on release for expensive figures (``continuous_update=False``). The figure is rendered to PNG
bytes in an ``ipywidgets.Image``: nothing is displayed *inside* a widget, so headless runs (papermill/nbclient)
never route outputs through their Output-widget mimic, where such views were seen to hang.
"""

from __future__ import annotations

import html
import io
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipywidgets import Widget


def figure_png(fig: Any, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes (tight bounding box), closing the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def view(
    draw: Callable[..., Any],
    controls: dict[str, Any],
    enabled: bool = True,
    continuous_update: bool = False,
    dpi: int = 90,
) -> Widget | None:
    """Show ``draw(**values)`` under the given widgets and redraw when they change; returns the widget box.

    ``draw`` returns a matplotlib figure (rendered to PNG and closed here). Sliders and text boxes redraw on
    release (``continuous_update=False``: a matplotlib redraw per drag step queues up in the kernel) unless
    ``continuous_update=True``. An error while redrawing shows under the image instead of vanishing into the
    kernel log. With ``enabled=False`` (headless runs that turn widgets off) nothing is built.
    """
    if not enabled:
        return None
    import ipywidgets as widgets
    from IPython.display import display

    for name, control in controls.items():
        if not isinstance(control, widgets.ValueWidget):
            raise TypeError(f"control {name!r} must be an ipywidgets value widget, got {type(control).__name__}")
        if control.has_trait("continuous_update"):
            control.continuous_update = continuous_update
    values = {name: control.value for name, control in controls.items()}
    image = widgets.Image(value=figure_png(draw(**values), dpi), format="png")  # a failing first draw raises here
    error = widgets.HTML("")

    def redraw(_change: Any = None) -> None:
        try:
            image.value = figure_png(draw(**{name: control.value for name, control in controls.items()}), dpi)
            error.value = ""
        except Exception:  # keep the view alive and show what went wrong where the user is looking
            error.value = f"<pre style='color:#b00'>{html.escape(traceback.format_exc(limit=-3))}</pre>"

    for control in controls.values():
        control.observe(redraw, names="value")
    box = widgets.VBox([widgets.HBox(list(controls.values())), image, error])
    display(box)
    return box
