"""Notebook 01 and its bitwidth widget in a real JupyterLab, in headless Chromium.

Starts JupyterLab from this environment (loopback, a free port, a random token, throwaway config
and runtime folders) over a temporary copy of notebooks/01_level_sets.ipynb (so that nothing the
browser does is saved into the repository), opens it, runs all cells from the Run menu,
then moves the bitwidth slider with the keyboard and picks another scheme from the dropdown,
as a reader would, then the additive-terms and α sliders, and checks that the widget's level count,
summary and picture change with each and that no cell printed an error. Screenshots go to tests/browser/screenshots/ (git-ignored).

Needs Debian's chromium (``/usr/bin/chromium``, or ``$APOT_CHROMIUM``) and the ``playwright``
Python package; without them the test skips, and under ``APOT_REQUIRE_BROWSER=1`` (CI) fails.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/01_level_sets.ipynb"
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
RUN_ALL_TIMEOUT_MS = 360_000     # a Run All of chapter 01 takes about 55 s alone on 2 cores; other work on the CPU stretches it


def _missing(reason: str):
    if os.environ.get("APOT_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("APOT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        _missing(f"no Chromium at {path}: install Debian's chromium package (or set APOT_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright Python package is not installed (pip install -e '.[test]')")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen, base: str, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then make sure its process group is gone."""
    if server.poll() is None:
        try:
            request = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                             headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(request, timeout=5).close()
            server.wait(timeout=20)
        except Exception:
            pass
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    try:   # kernels it started share its process group
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory, chromium):
    """(base URL, token) of a JupyterLab serving the repository; stopped afterwards, even on failure."""
    home = tmp_path_factory.mktemp("jupyter")
    served = home / "served"
    (served / NOTEBOOK).parent.mkdir(parents=True)
    shutil.copy(ROOT / NOTEBOOK, served / NOTEBOOK)
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))   # no "get notified about news?" toast over the figure
    token, port = secrets.token_hex(16), _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"), JUPYTER_PLATFORM_DIRS="1", MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = home / "server.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}", "--ServerApp.port_retries=0",
               f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"] + (["--allow-root"] if os.geteuid() == 0 else [])
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=served, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{base}/api/status?token={token}", server, log)
        yield base, token
    finally:
        _stop(server, base, token)


def test_bitwidth_widget_responds_in_jupyterlab(jupyterlab, chromium):
    from playwright.sync_api import expect, sync_playwright

    base, token = jupyterlab
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
                page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
                # The kernel is ready (not just "idle" before it connects) once the debugger button is enabled.
                expect(page.locator(".jp-DebuggerBugButton[aria-disabled='false']")).to_have_count(1, timeout=60_000)
                expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=60_000)

                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

                summary = page.locator(".apot-level-count")
                summary.wait_for(timeout=RUN_ALL_TIMEOUT_MS)
                expect(page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0, timeout=RUN_ALL_TIMEOUT_MS)
                widget = page.locator(".jp-OutputArea-output", has=page.locator(".apot-level-count"))
                widget.scroll_into_view_if_needed()
                picture = widget.locator("img.widget-image")
                expect(picture).to_be_visible()
                assert summary.inner_text() == "15"                    # 4 bits: 2^4 − 1 signed levels
                first_picture, first_pixels = picture.get_attribute("src"), picture.screenshot()
                widget.screenshot(path=SCREENSHOTS / "01_widget_before.png")

                bits = widget.locator(".widget-slider", has=page.get_by_text("bitwidth b")).first
                bits.locator(".noUi-handle").focus()
                page.keyboard.press("ArrowRight")                      # b = 5
                expect(summary).to_have_text("31", timeout=30_000)
                expect(picture).not_to_have_attribute("src", first_picture, timeout=30_000)
                five_bits_picture, five_bits_pixels = picture.get_attribute("src"), picture.screenshot()
                assert five_bits_pixels != first_pixels                # a new picture (a new blob URL alone would not say)
                expect(widget.locator(".widget-readout").first).to_have_text("5")

                widget.locator("select").select_option(label="power-of-two (PoT)")
                expect(widget.locator(".widget-html")).to_contain_text("5-bit power-of-two (PoT)", timeout=30_000)
                expect(picture).not_to_have_attribute("src", five_bits_picture, timeout=30_000)
                expect(summary).to_have_text("31")
                terms = widget.locator(".widget-slider", has=page.get_by_text("additive terms n"))
                expect(terms.locator(".noUi-target[disabled]")).to_have_count(1)     # n applies to APoT only
                pot_picture = picture.get_attribute("src")
                assert picture.screenshot() != five_bits_pixels

                widget.locator("select").select_option(label="additive PoT (APoT)")
                expect(widget.locator(".widget-html")).to_contain_text("5-bit additive PoT (APoT), n = 2", timeout=30_000)
                terms.locator(".noUi-handle").focus()
                page.keyboard.press("ArrowLeft")                       # n = 1: the power-of-two levels again
                expect(widget.locator(".widget-html")).to_contain_text("n = 1", timeout=30_000)
                expect(summary).to_have_text("31")
                pot_picture = picture.get_attribute("src")
                alpha = widget.locator(".widget-slider", has=page.get_by_text("α (σ)"))
                alpha_text = alpha.locator(".widget-readout").inner_text()
                alpha.locator(".noUi-handle").focus()
                page.keyboard.press("ArrowRight")                      # one step of 0.05 σ
                expect(alpha.locator(".widget-readout")).not_to_have_text(alpha_text)
                new_alpha = alpha.locator(".widget-readout").inner_text()
                expect(widget.locator(".widget-html")).to_contain_text(f"α = {new_alpha} σ", timeout=30_000)
                expect(picture).not_to_have_attribute("src", pot_picture, timeout=30_000)
                widget.screenshot(path=SCREENSHOTS / "01_widget_after.png")
                page.screenshot(path=SCREENSHOTS / "01_jupyterlab_after.png")

                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
                assert errors.count() == 0, json.dumps(errors.all_inner_texts())[:3000]
                assert "Error displaying widget" not in " ".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            except Exception:
                page.screenshot(path=SCREENSHOTS / "01_failure.png")
                raise
        finally:
            browser.close()
