"""Every shell and Python example of the README and the docs pages runs, as written.

The examples of a page run in order, in one fresh folder per page (``examples/`` of the repository is linked
into it, so ``--input examples/...`` works), with the environment's ``alignkit`` first on PATH: ``bash`` blocks
under ``bash -e -o pipefail``, ``python`` blocks as scripts. A block preceded by ``<!-- file: NAME -->`` is not
run: its text is written to NAME for the examples after it. Processes an example leaves in the background (a
server started with ``&``) live until the page is done. An example a test cannot run here says why, on the line
before it, with ``<!-- not run: needs ... -->``; those marks are counted and must stay few, and each must name
what is missing (a GPU, the Hugging Face hub, an API key, several machines).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = {"docs/reference/cli.md", "docs/eval/report.md"}
MISSING = ("a GPU", "the Hugging Face hub", "an API key", "several machines")
MAX_MARKED = 10
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!-- (not run|file|env): (.+?) -->$")
ENVS = {"clients": ROOT / ".venv-clients" / "bin" / "python"}  # litellm's own environment (make clients-env)


@dataclass
class Block:
    page: str
    line: int
    lang: str
    text: str
    not_run: str | None = None
    file: str | None = None
    env: str | None = None

    @property
    def runs(self) -> bool:
        return self.file is None and self.not_run is None and self.lang in ("bash", "python")


def pages() -> list[Path]:
    docs = [p for p in sorted((ROOT / "docs").rglob("*.md"))
            if str(p.relative_to(ROOT)) not in GENERATED and p.parent.name != "results"]
    return [ROOT / "README.md", *docs]


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        b = Block(str(page.relative_to(ROOT)), i + 1, m.group(1), "\n".join(lines[i + 1:j]) + "\n")
        k = i - 1
        while k >= 0 and (mark := MARK.match(lines[k].strip())):
            kind, value = mark.groups()
            setattr(b, {"not run": "not_run", "file": "file", "env": "env"}[kind], value)
            k -= 1
        out.append(b)
        i = j + 1
    return out


ALL = {str(p.relative_to(ROOT)): blocks(p) for p in pages()}
RUNNABLE = {page: bs for page, bs in ALL.items() if any(b.runs for b in bs)}


def test_the_examples_are_found_and_the_marks_are_few_and_say_why():
    examples = [b for bs in ALL.values() for b in bs if b.lang in ("bash", "python") and b.file is None]
    marked = [b for b in examples if b.not_run]
    assert len(examples) - len(marked) >= 25 and "README.md" in RUNNABLE
    assert len(marked) <= MAX_MARKED, [f"{b.page}:{b.line}" for b in marked]
    for b in marked:
        assert b.not_run.startswith("needs ") and any(what in b.not_run for what in MISSING), (
            f"{b.page}:{b.line}: a mark must say which of {', '.join(MISSING)} the example needs: {b.not_run!r}")
    for b in (b for bs in ALL.values() for b in bs if b.env):
        assert b.env in ENVS, f"{b.page}:{b.line}: unknown environment {b.env!r}"


def _run(block: Block, cwd: Path, env: dict[str, str], groups: list[int]) -> None:
    script = cwd / f".example-{block.line}.{'sh' if block.lang == 'bash' else 'py'}"
    script.write_text(block.text, encoding="utf-8")
    python = str(ENVS[block.env]) if block.env else sys.executable
    cmd = ["bash", "-e", "-o", "pipefail", str(script)] if block.lang == "bash" else [python, str(script)]
    log = cwd / f".example-{block.line}.log"  # a file, not a pipe: a server left running keeps its end open
    with log.open("w", encoding="utf-8") as sink:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    groups.append(proc.pid)
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{block.page}:{block.line}: the example ran over 15 minutes\n"
                    f"{log.read_text(encoding='utf-8', errors='replace')[-3000:]}")
    out = log.read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, (f"{block.page}:{block.line}: the example failed (exit {proc.returncode}):\n"
                                  f"{block.text}\n--- output ---\n{out[-4000:]}")


@pytest.mark.gemma
@pytest.mark.parametrize("page", sorted(RUNNABLE))
def test_the_examples_of_the_page_run(page, tmp_path, gemma):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # litellm would fetch its price list; no network here
    env.pop("ALIGNKIT_STRICT", None)  # the examples run as a user runs them, not under the test session's switches
    for port in sorted({int(x) for b in RUNNABLE[page] if b.runs for x in re.findall(r"--port (\d+)", b.text)}):
        _free(port)  # else the page's curl would silently talk to whatever server holds the port
    groups: list[int] = []
    try:
        for b in RUNNABLE[page]:
            if b.file:
                (tmp_path / b.file).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / b.file).write_text(b.text, encoding="utf-8")
            elif b.runs:
                if b.env and not ENVS[b.env].is_file():
                    pytest.fail(f"{b.page}:{b.line} runs in {ENVS[b.env]}, which is missing (make clients-env)")
                _run(b, tmp_path, env, groups)
    finally:
        for pid in groups:  # servers an example left running: stopped, and gone before the next page starts
            _stop(pid)


def _free(port: int) -> None:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            pytest.fail(f"port {port} is taken by another process; the page's examples start their own server there")


def _stop(group: int) -> None:
    import time

    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


if __name__ == "__main__":  # python tests/test_docs_examples.py: how many run, how many are marked and why
    examples = [b for bs in ALL.values() for b in bs if b.lang in ("bash", "python") and b.file is None]
    marked = [b for b in examples if b.not_run]
    print(f"{len(examples) - len(marked)} examples run on {len(RUNNABLE)} pages; {len(marked)} marked:")
    for b in marked:
        print(f"  {b.page}:{b.line}: {b.not_run}")
