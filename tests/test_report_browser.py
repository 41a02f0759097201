"""`bnnkit compare --report`'s page in a real headless browser (Debian's chromium, which .ci/run installs):
it loads without console errors, and a screenshot shows the table and the figures. Skips, saying so,
only where chromium is not installed."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from bnnkit.analysis.compare import write_report
from bnnkit.figures import draw, read_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed here (.ci/run installs "
                                "Debian's chromium; this machine could not): the report is not checked in a browser")


def browse(page, tmp_path):
    """(console lines chromium logged, the screenshot as an RGB array)."""
    shot = tmp_path / "shot.png"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}",
                           "--window-size=1400,1600", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert shot.is_file(), done.stderr[-2000:]
    console = [l for l in done.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l or "Failed to load" in l]
    return console, np.asarray(Image.open(shot).convert("RGB")).astype(int)


def near(img, rgb, tol=12):
    return int((np.abs(img - np.array(rgb)).max(axis=2) <= tol).sum())


def test_the_report_opens_without_console_errors_and_shows_table_and_figures(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,lr,train_loss,train_top1,val_loss,val_top1,flip_ratio\n"
                                     + "".join(f"{e},{0.1 / (e + 1)},{2.3 - 0.2 * e},{10 + 5 * e},{2.4 - 0.2 * e},"
                                               f"{9 + 5 * e},{0.1 / (e + 1)}\n" for e in range(6)))
    figures = draw([("", [read_run(str(run))])], str(tmp_path / "figures"))
    page = tmp_path / "report.html"
    write_report(str(page), [["m1", "resnet20_1w1a", "", "2", "6", "34.00 ± 1.00", "33.00 ± 1.50", "1.30 ± 0.01", ""],
                             ["m2", "resnet20_1w1a", "", "2", "6", "31.00 ± 2.00", "30.00 ± 2.50", "1.40 ± 0.02", ""]],
                 figures)
    console, img = browse(page, tmp_path)
    assert console == []
    assert img.shape[0] >= 600 and img.shape[1] >= 1000
    assert near(img, (153, 153, 153)) > 500  # the table's cell borders (#999)
    assert near(img, (31, 119, 180)) > 500  # matplotlib's first colour: the curves of the inlined figures
    assert near(img, (0, 0, 0), tol=60) > 2000  # text: the title, the table's cells, the axes' labels


def test_a_console_error_would_be_seen(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('broken page')</script></body></html>")
    console, _ = browse(page, tmp_path)
    assert any("broken page" in l for l in console), console
