"""An OpenAI-compatible server for any alignkit model or method (protocol, service logic, FastAPI routes)."""
