"""``python -m alignkit``: the ``alignkit`` command."""

from alignkit.cli.main import entrypoint

if __name__ == "__main__":
    entrypoint()
