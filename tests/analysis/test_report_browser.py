"""The shift report opens and works in a real headless browser (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import json

from tests.support.browser import chromium_page


def test_report_renders_and_tokens_show_their_distributions(tiny_dir, tmp_path):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "instruction": q}) + "\n"
                           for i, q in enumerate(["The quick brown", "Thank you", "<script>alert(1)</script>"])))
    out, rep = tmp_path / "s.jsonl", tmp_path / "s.html"
    assert main(["shift", "--base", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]),
                 "--aligned-method", "template", "--input", str(inp), "--output", str(out), "--report", str(rep),
                 "--max-new-tokens", "12"]) == 0
    n_positions = sum(len(json.loads(x)["positions"]) for x in out.read_text().splitlines())
    with chromium_page(1200, 900) as (page, errors):
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(rep.as_uri())
        assert page.locator(".a .t").count() == n_positions > 0
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 100)")
        assert page.locator("img").count() >= 4
        import re

        shown = page.locator(".a .t.shifted", has_text=re.compile(r"\S"))
        tok = (shown if shown.count() else page.locator(".a .t", has_text=re.compile(r"\S"))).first
        tok.hover()
        tip = page.locator("#tip")
        assert tip.is_visible() and "base rank" in tip.inner_text() and "aligned top-k" in tip.inner_text()
        tok.click()
        assert page.locator(".t.sel").count() == 1
        page.check("#onlyShifted")
        visible = page.locator(".card:visible").count()
        assert visible == page.locator(".card[data-shifted]:not([data-shifted='0'])").count()
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=False)
    assert not errors, errors
    assert not dialogs  # the instruction with a <script> tag was escaped, not run
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert img.size == (1200, 900) and hi - lo > 100  # not a blank page
