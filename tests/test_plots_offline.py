"""`dvc plots show` renders every plot with no network: Vega inlined through plots.html_template."""

import re
import shutil
import subprocess

import pytest
from conftest import run

from fashion_compare.plots import write_offline_html_template

pytestmark = pytest.mark.e2e
VEGA_PLOTS = 19  # precision/recall/F1 per class, F1 difference, two confusion matrices, four learning curves;
# each committed seed study's (reference and tuned recipes) accuracy per seed, gain per seed, noise sources and
# per-class F1 difference; the committed tuning's validation accuracy per trial
IMAGES = 16  # the compare stage's five PNGs, each study's four, each search's figure, the recipes' cost
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--proxy-server=127.0.0.1:9", "--virtual-time-budget=20000", "--dump-dom"]


def test_plots_render_offline_in_headless_chromium(repo, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "chromium missing: `make test` installs Debian's chromium package"
    template = tmp_path / "page.html"
    write_offline_html_template(template)
    run(["dvc", "plots", "show", "--html-template", str(template), "-o", str(tmp_path / "out")], repo)
    page = tmp_path / "out" / "index.html"
    html = page.read_text()
    assert not re.search(r"<script[^>]+src=", html), "the page must not load scripts from anywhere"
    # every network request goes to a dead proxy: what draws, draws from the page alone
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="marks"') == VEGA_PLOTS, dom[-2000:]
    assert len(re.findall(r"<img[^>]+\.png", dom)) == IMAGES
