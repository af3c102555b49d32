"""The notebooks in a real JupyterLab in headless Chromium: run all cells (smoke), no errors, figures, live widgets.

JupyterLab serves copies of the notebooks whose preset is set to ``smoke`` by an injected-parameters cell, as
papermill does; Debian's Chromium is driven by Playwright (``executable_path``, no browser download). Screenshots
go to a temporary folder, so a test run leaves the checkout untouched; ``make screenshots`` refreshes the committed
ones in ``reports/browser/`` (it sets ``LABKIT_SCREENSHOTS``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from labkit import runner

CHROMIUM = next(
    (
        p
        for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
        if p and Path(p).is_file()
    ),
    None,
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("LABKIT_SCREENSHOTS") or Path(tempfile.gettempdir()) / "labkit-browser")
PAPER_NOTEBOOK_PREFERENCE = ("met2net", "gateskip", "cmixup", "sparse_soups", "dsir")  # met2net: ~75 s smoke + slider
NOTEBOOK_SECONDS = 420  # one notebook's run-all budget in the browser (loaded 2-core machine)

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium here: `apt-get install chromium` (scripts/setup.sh does it where apt is available); "
    "the browser test needs Debian's build",
)


def _paper_notebook() -> Path | None:
    """The paper notebook to open: ``LABKIT_BROWSER_NOTEBOOK`` if set, else the quickest smoke run that exists."""
    names = {p.stem: p for p in runner.notebooks() if p.stem != "profiling"}
    for name in [os.environ.get("LABKIT_BROWSER_NOTEBOOK", ""), *PAPER_NOTEBOOK_PREFERENCE]:
        if name in names:
            return names[name]
    return next(iter(names.values()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smoke_copy(source: Path, folder: Path) -> Path:
    """The notebook with a papermill-style ``injected-parameters`` cell after its parameters cell."""
    nb = nbformat.read(source, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell('# Parameters\npreset = "smoke"\n', metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)
    target = folder / source.name
    nbformat.write(nb, target)
    return target


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port with a token, serving smoke copies of the notebooks."""
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install 'labkit[browser]')")
    tmp = tmp_path_factory.mktemp("lab")
    work = tmp / "notebooks"
    work.mkdir()
    paper = _paper_notebook()
    copies = {p.stem: _smoke_copy(p, work) for p in [runner.NOTEBOOK_DIR / "profiling.ipynb", paper] if p}
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "HF_HUB_OFFLINE": "1",
    }
    labconfig = tmp / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    # no "get notified about Jupyter news?" toast (it would cover the screenshots and asks the network)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    env.pop("MPLBACKEND", None)  # the kernel picks the inline backend
    env.pop("LABKIT_REPORT_DIR", None)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        "--allow-root",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={work}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
        "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = (tmp / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start:\n{(tmp / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(1)
        yield {"base": base, "token": token, "copies": copies, "tmp": tmp}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(lab["tmp"] / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        yield context
        context.close()


STATE_JS = """() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const outputs = cells.map(c => c.model.outputs.toJSON());
  const errors = outputs.flat().filter(o => o.output_type === 'error')
    .map(o => o.ename + ': ' + o.evalue);
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {status: kernel ? kernel.status : 'none', total: cells.length,
          executed: cells.filter(c => c.model.executionCount !== null).length,
          pngs: outputs.flat().filter(o => o.data && o.data['image/png']).length, errors};
}"""


def _run_all(page, name: str) -> dict:
    """Run every cell from the Run menu and wait until the kernel is idle with each cell executed (or one failed)."""
    idle = "() => { const s = (" + STATE_JS + ")(); return s && s.status === 'idle'; }"
    page.wait_for_function(idle, timeout=180_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    deadline = time.monotonic() + NOTEBOOK_SECONDS
    state = page.evaluate(STATE_JS)
    while time.monotonic() < deadline:
        state = page.evaluate(STATE_JS)
        if state["errors"] or (state["status"] == "idle" and state["executed"] == state["total"]):
            break
        time.sleep(1)
    else:
        pytest.fail(f"{name}: run-all did not finish in {NOTEBOOK_SECONDS} s; last state {state}")
    return state


def _check_notebook(browser, lab, name: str) -> None:
    page = browser.new_page()
    messages = []
    page.on("pageerror", lambda err: messages.append(str(err)))
    try:
        page.goto(
            f"{lab['base']}/lab/tree/{lab['copies'][name].name}?token={lab['token']}&reset",
            wait_until="domcontentloaded",
        )
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        state = _run_all(page, name)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        assert not state["errors"], f"{name}: cell errors in the browser: {state['errors']}"
        assert state["pngs"] >= 1, f"{name}: no static figure in the outputs"

        # the static figures rendered as images with pixels
        images = page.locator(".jp-OutputArea-output img")
        assert images.count() >= 1, f"{name}: no rendered image in the page"
        images.first.scroll_into_view_if_needed()
        assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", images.first.element_handle())
        page.screenshot(path=str(SCREENSHOTS / f"{name}-static-figure.png"))

        # the widget view is live: move a slider, see the figure in the widget's Output change
        view = page.locator(".jp-OutputArea-output .widget-vbox").filter(has=page.locator(".widget-slider")).last
        view.wait_for(timeout=60_000)
        view.scroll_into_view_if_needed()
        picture = view.locator("img.widget-image").first
        picture.wait_for(timeout=60_000)
        before = picture.get_attribute("src")
        view.screenshot(path=str(SCREENSHOTS / f"{name}-widget-before.png"))
        _drag_slider(page, view.locator(".widget-slider").first)
        page.wait_for_function(
            "([box, src]) => { const img = box.querySelector('img.widget-image');"
            " return img && img.complete && img.naturalWidth > 0 && img.getAttribute('src') !== src; }",
            arg=[view.element_handle(), before],
            timeout=90_000,
        )
        time.sleep(0.5)
        view.screenshot(path=str(SCREENSHOTS / f"{name}-widget-after.png"))
        state = page.evaluate(STATE_JS)
        assert not state["errors"], f"{name}: moving the slider raised: {state['errors']}"
        assert "Traceback" not in view.inner_text(), f"{name}: the widget view shows an error: {view.inner_text()}"
        assert not [m for m in messages if "Error" in m], f"{name}: JavaScript errors: {messages}"
    finally:
        page.close()


def _drag_slider(page, slider) -> None:
    """Drag the slider's handle to the far end away from where it stands, with the mouse."""
    track = slider.locator(".noUi-target").first.bounding_box()
    handle = slider.locator(".noUi-handle").first.bounding_box()
    assert track and handle, "slider has no track or handle on screen"
    x0, y0 = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    right_half = x0 > track["x"] + track["width"] / 2
    x1 = track["x"] + (2 if right_half else track["width"] - 2)
    page.mouse.move(x0, y0)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * step / 10, y0)
    page.mouse.up()


@pytest.mark.notebook
@needs_chromium
def test_profiling_notebook_in_jupyterlab(browser, lab):
    _check_notebook(browser, lab, "profiling")


@pytest.mark.notebook
@needs_chromium
def test_paper_notebook_in_jupyterlab(browser, lab):
    names = [n for n in lab["copies"] if n != "profiling"]
    if not names:
        pytest.skip("no paper notebook under notebooks/ yet")
    _check_notebook(browser, lab, names[0])


@pytest.mark.notebook
@needs_chromium
def test_reports_index_opens_with_the_headlines(browser):
    """The committed index answers first: a headline section per paper (sentences and the claims forest) is the first
    thing on the page, above the full claims table; a screenshot of the top goes with the others."""
    page = browser.new_page()
    try:
        page.goto((runner.REPORTS_DIR / "index.html").resolve().as_uri())
        first_heading_in_a_headline = "() => !!document.querySelector('h2').closest('section.labkit-headline')"
        assert page.evaluate(first_heading_in_a_headline), "the index does not open with a headline section"
        heads = page.locator("section.labkit-headline")
        with_claims = list(runner.REPORTS_DIR.glob("*/*/tables/claims.csv"))  # a headline per report with claims
        assert heads.count() == len(with_claims) == 6 and heads.first.locator("li").count() >= 1
        assert heads.first.locator("img").evaluate("img => img.naturalWidth") > 0
        top = heads.first.bounding_box()
        assert top["y"] < page.locator("text=Every claim and its verdict").bounding_box()["y"]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "index-top.png"))
    finally:
        page.close()


def test_view_redraws_on_release_and_checks_its_controls():
    """What the browser showed: a drag of a continuously updating slider queues one matplotlib redraw per step."""
    import ipywidgets
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.widgets import view

    def draw(n):
        if n > 5:
            raise ValueError(f"n must be at most 5, got {n}")
        fig, ax = plt.subplots()
        ax.plot(range(n))
        return fig

    slider = ipywidgets.IntSlider(value=3, min=1, max=5)
    assert slider.continuous_update
    box = view(draw, {"n": slider})
    assert box is not None and not slider.continuous_update
    image, error = box.children[1], box.children[2]
    first = image.value
    assert bytes(first[:4]) == b"\x89PNG" and error.value == ""
    slider.value = 4
    assert image.value != first and error.value == ""
    slider.max, slider.value = 9, 9  # a failing redraw keeps the view and shows the error under it
    assert "n must be at most 5, got 9" in error.value and image.value != first
    assert not plt.get_fignums(), "every drawn figure is closed"
    live = ipywidgets.IntSlider(value=3, min=1, max=5)
    view(draw, {"n": live}, continuous_update=True)
    assert live.continuous_update
    assert view(draw, {"n": slider}, enabled=False) is None
    with pytest.raises(TypeError, match="control 'n' must be an ipywidgets value widget"):
        view(draw, {"n": 3})
