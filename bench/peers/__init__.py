"""The peers that flashgate is measured against (the FastAPI + Redis Lua design; nginx is configured in bench.runner)."""
