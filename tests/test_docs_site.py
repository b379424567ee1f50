"""The docs site: its generated pages are what the code and the result files give (a changed help string or a
changed result makes `make docs` fail), it builds with MkDocs in strict mode, and the built site opens in a real
browser (Debian's Chromium) without console errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.browser import chromium_page

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docs_pages.py"


def _check(env_src: Path | None = None, root: Path = ROOT) -> subprocess.CompletedProcess:
    env = None if env_src is None else {**os.environ, "PYTHONPATH": str(env_src)}  # a copy of the package first
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--root", str(root)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_generated_pages_are_fresh():
    r = _check()
    assert r.returncode == 0, r.stderr


def test_a_changed_help_string_makes_the_cli_reference_stale(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "alignkit", src / "alignkit", ignore=shutil.ignore_patterns("__pycache__"))
    chat = src / "alignkit" / "cli" / "chat.py"
    text = chat.read_text(encoding="utf-8")
    assert "send this one message" in text
    assert _check(src).returncode == 0  # the copy, unchanged, gives the committed pages
    chat.write_text(text.replace("send this one message", "send exactly one message"), encoding="utf-8")
    r = _check(src)
    assert r.returncode == 1 and "stale: docs/reference/cli.md" in r.stderr, r.stderr


def test_a_changed_or_new_result_file_makes_the_results_pages_stale(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    f = tmp_path / "docs" / "results" / "structured.json"
    data = json.loads(f.read_text(encoding="utf-8"))
    data["requests"] += 1
    f.write_text(json.dumps(data), encoding="utf-8")
    r = _check(root=tmp_path)
    assert r.returncode == 1 and "stale: docs/results/structured.md" in r.stderr, r.stderr
    (tmp_path / "docs" / "results" / "new_bench.json").write_text("{}", encoding="utf-8")
    r = _check(root=tmp_path)  # a result without the command that rewrites it does not get in
    assert r.returncode != 0 and "new_bench.json has no entry" in r.stderr, r.stderr


def _build(site: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    r = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(site)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_the_site_builds_strictly_and_opens_in_chromium_without_errors(tmp_path):
    site = tmp_path / "site"
    _build(site)
    for page in ("index.html", "guides/shift.html", "reference/python.html", "reference/cli.html",
                 "results/index.html", "results/structured.html"):
        assert (site / page).is_file(), page
    api = (site / "reference" / "python.html").read_text(encoding="utf-8")
    for name in ("alignkit.api.load", "alignkit.api.shift", "alignkit.api.evaluate", "ShiftResult"):
        assert name in api, f"the Python API page does not document {name}"
    shots = {}
    with chromium_page(1280, 860) as (page, errors):
        for name, path in (("home", "index.html"), ("guide", "guides/shift.html")):
            page.goto((site / path).as_uri())
            page.wait_for_load_state("load")
            assert page.locator("nav.md-nav").count() > 0  # the theme rendered its navigation
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            shots[name] = tmp_path / f"{name}.png"
            page.screenshot(path=str(shots[name]))
        page.goto((site / "index.html").as_uri())  # a nav link leads to the guide
        page.locator("a[href$='guides/shift.html']").first.click()
        page.wait_for_load_state("load")
        assert page.url.endswith("guides/shift.html")
        assert page.title().startswith("What did alignment change?")
    assert not errors, errors
    from PIL import Image

    for name, shot in shots.items():
        img = Image.open(shot)
        assert img.size == (1280, 860)
        assert len(set(img.convert("L").getdata())) > 20, f"the {name} screenshot is blank"
    out = os.environ.get("ALIGNKIT_SITE_SHOTS")  # where to keep them (docs/development screenshots)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for name, shot in shots.items():
            shutil.copy(shot, Path(out) / f"site-{name}.png")


def test_the_readme_is_a_front_door():
    """At most 200 lines; the three jobs (align in context, what changed, evaluate) on its first screen (the first
    40 lines); every link into docs/ resolves to a page of the site."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    first = "\n".join(lines[:40])
    for job in ("alignkit generate --model gemma-3-270m --method urial", "alignkit shift", "alignkit eval"):
        assert job in first, f"the README's first screen lacks {job!r}"
    import re

    links = re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines))
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), link
