"""instructor in TOOLS mode against the server: it sends the pydantic model as a named function and reads the call's
arguments back into the model. Run from the clients' own environment (.venv-clients, `make clients-env`: instructor
pins a jiter older than alignkit's openai needs) as a subprocess talking to a server this test starts."""

from __future__ import annotations

import json
import os
import subprocess

from alignkit.methods import MethodOptions, apply_method
from alignkit.server.app import build_app
from alignkit.server.service import Service
from tests.support.openai_server import ServerThread

SCRIPT = r"""
import json, sys
from typing import Literal
import instructor, openai
from pydantic import BaseModel, Field

class Weather(BaseModel):
    city: str = Field(max_length=6)
    unit: Literal["C", "F"]

client = instructor.from_openai(openai.OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0),
                                mode=instructor.Mode.TOOLS)
got = client.chat.completions.create(model="raw", response_model=Weather, max_retries=0, max_tokens=64,
                                     temperature=0, messages=[{"role": "user", "content": "Weather in Paris?"}])
print(json.dumps({"type": type(got).__name__, **got.model_dump()}))
"""


def test_instructor_tools_mode_fills_a_pydantic_model(clients_python, tiny_base):
    model = apply_method(tiny_base, MethodOptions(method="none"))
    with ServerThread(build_app(Service(model, "raw"))) as srv:
        out = subprocess.run([clients_python, "-c", SCRIPT, srv.url], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "INSTRUCTOR_DISABLE_TELEMETRY": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # instructor validated the call's arguments into its model: the constraint kept them inside the schema
    assert got["type"] == "Weather" and got["unit"] in ("C", "F") and len(got["city"]) <= 6
    assert set(got) == {"type", "city", "unit"}
