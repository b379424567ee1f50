"""litellm against the server: chat and text completion, run from litellm's own environment (.venv-clients, made
by `make clients-env`; litellm pins openai < 3, so it cannot share alignkit's) as a subprocess that talks to a
server this test starts."""

from __future__ import annotations

import json
import os
import subprocess

from alignkit import GenerationConfig, Message
from alignkit.methods import MethodOptions, apply_method
from alignkit.server.app import build_app
from alignkit.server.service import Service
from tests.support.openai_server import ServerThread

SCRIPT = r"""
import json, sys
import litellm
url = sys.argv[1]
chat = litellm.completion(model="openai/chat", api_base=url, api_key="none", max_tokens=6, temperature=0,
                          messages=[{"role": "user", "content": "Name a colour."}])
stream = litellm.completion(model="openai/chat", api_base=url, api_key="none", max_tokens=6, temperature=0,
                            messages=[{"role": "user", "content": "Name a colour."}], stream=True)
streamed = "".join((c.choices[0].delta.content or "") for c in stream)
text = litellm.text_completion(model="text-completion-openai/chat", api_base=url, api_key="none",
                               prompt="The quick brown", max_tokens=5, temperature=0)
print(json.dumps({"chat": chat.choices[0].message.content, "streamed": streamed, "text": text.choices[0].text,
                  "usage": chat.usage.prompt_tokens}))
"""


def test_litellm_chat_stream_and_text_completion(clients_python, tiny_aligned):
    model = apply_method(tiny_aligned, MethodOptions(method="template"))
    with ServerThread(build_app(Service(model, "chat"))) as srv:
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
        out = subprocess.run([clients_python, "-c", SCRIPT, srv.url], capture_output=True, text=True, timeout=300,
                             env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = model.generate([[Message("user", "Name a colour.")]], GenerationConfig(max_new_tokens=6))[0].text
    assert got["chat"] == want and got["streamed"] == want
    # the server serves the chat route; a text completion through it is prompted the route's way
    assert got["text"] == model.generate(["The quick brown"], GenerationConfig(max_new_tokens=5))[0].text
    assert got["usage"] == model.base.count_tokens(model.prepare([Message("user", "Name a colour.")],
                                                                 GenerationConfig()).prompt)
