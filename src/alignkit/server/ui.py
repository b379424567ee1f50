"""The comparison page ``alignkit serve`` serves at ``/ui``: every chosen route answers the same conversation in its
own streaming column; each finished answer's tokens are coloured by a reference route's view of them (``/v1/shift``:
unshifted / marginal / shifted as the shift analysis defines them) with a card per token; a weighted route gets a
slider per weight; the address holds the prompts, routes, reference and settings (never the API key). One file of
HTML, CSS and script (``ui.html``): no CDN, no build step, so it works offline. Model output is only ever set as
text (``textContent``), and the page is served with a content security policy that allows its own inline script and
requests to this server alone."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def page() -> str:
    return (resources.files("alignkit.server") / "ui.html").read_text(encoding="utf-8")
