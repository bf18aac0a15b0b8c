"""The Lua scripts flashgate runs in Redis (``lua/``), called by SHA.

Every script declares in ``KEYS`` every key it touches (Redis Cluster routes a call
by its keys, and refuses keys of two slots); the outcome codes a script answers
with (core/outcomes.py), and the constants it shares with Python (core/keys.py), are
put in front of its source as Lua locals.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import hiredis

from flashgate.core.keys import COMMIT_KEYS, IDEM_TTL_S
from flashgate.core.outcomes import lua_header
from flashgate.core.redisconn import RedisConnection, RedisError

# the constants every script may name, spelled once in Python (core/keys.py)
_CONSTANTS = f"local FIXED_KEYS, IDEM_TTL_S = {len(COMMIT_KEYS)}, {IDEM_TTL_S}\n"


class Script:
    """A Lua script called by SHA, re-sent whole when the server does not know it."""

    def __init__(self, name: str):
        body = resources.files("flashgate.core").joinpath("lua", name).read_text()
        self.name = name
        self.source = lua_header() + _CONSTANTS + body
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def args(self, keys, argv) -> list:
        return ["EVALSHA", self.sha, len(keys), *keys, *argv]

    def packed_head(self, whole: bool = False) -> bytes:
        """The RESP of a call's first two arguments (``EVALSHA`` and the SHA, or ``EVAL``
        and the whole source), without the leading argument count: the start of a call
        the caller completes (see ``_commit.pack_commit``)."""
        packed = hiredis.pack_command(("EVAL", self.source) if whole else ("EVALSHA", self.sha))
        return packed[packed.index(b"\r\n") + 2:]

    async def run(self, conn: RedisConnection, keys, argv):
        try:
            return await conn.execute(*self.args(keys, argv))
        except RedisError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            return await conn.execute("EVAL", self.source, len(keys), *keys, *argv)


COMMIT = Script("commit.lua")
CONFIGURE_SKU = Script("configure_sku.lua")
ADD_STOCK = Script("add_stock.lua")
TRANSITION = Script("transition.lua")
REGISTER = Script("register.lua")
ALL = (COMMIT, CONFIGURE_SKU, ADD_STOCK, TRANSITION, REGISTER)


async def load(execute) -> None:
    """Make the scripts known to the server (after every connect: a restarted Redis
    has an empty script cache). ``execute`` is a connection's execute."""
    for s in ALL:
        await execute("SCRIPT", "LOAD", s.source)
