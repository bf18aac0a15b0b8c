"""The refresher's reloads, without Redis: a reload asked while another runs is
answered by a load that began after it was asked."""

import asyncio

from flashgate.gateway import refresher


class _Store:
    """load_events gives the version at the moment it is called (what a load reads),
    and the first load waits for ``gate`` before it returns."""

    def __init__(self):
        self.version = 0
        self.gate = None

    async def load_events(self, conn):
        version = self.version
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate
        return version, []


class _Runtimes:
    events: dict = {}

    def apply(self, events):
        pass

    def all_skus(self):
        return []


def test_a_reload_asked_during_a_load_gets_a_load_that_began_after_it(monkeypatch):
    store = _Store()
    monkeypatch.setattr(refresher, "store", store)

    async def main():
        r = refresher.Refresher(None, None, None, _Runtimes(), lambda rt: None,
                                max_clock_skew_ms=1000)
        gate = store.gate = asyncio.get_running_loop().create_future()
        first = asyncio.create_task(r.reload())  # a tick's load, reading version 0
        await asyncio.sleep(0)
        store.version = 1  # an operator's change, then its reload
        second = asyncio.create_task(r.reload())
        await asyncio.sleep(0)
        store.version = 2  # another change, then its reload
        third = asyncio.create_task(r.reload())
        await asyncio.sleep(0)
        gate.set_result(None)
        return await first, await second, await third

    first, second, third = asyncio.run(main())
    assert first == 0
    assert (second, third) == (2, 2)  # neither answered by the load that began before it


def test_a_failed_load_fails_only_the_calls_it_was_for(monkeypatch):
    class Failing(_Store):
        calls = 0

        async def load_events(self, conn):
            Failing.calls += 1
            if Failing.calls == 1:
                await asyncio.sleep(0.01)
                raise ConnectionError("away")
            return await super().load_events(conn)

    store = Failing()
    monkeypatch.setattr(refresher, "store", store)

    async def main():
        r = refresher.Refresher(None, None, None, _Runtimes(), lambda rt: None,
                                max_clock_skew_ms=1000)
        first = asyncio.create_task(r.reload())
        await asyncio.sleep(0)
        store.version = 5
        second = asyncio.create_task(r.reload())
        results = await asyncio.gather(first, second, return_exceptions=True)
        return results

    first, second = asyncio.run(main())
    assert isinstance(first, ConnectionError)
    assert second == 5  # its own load, after the failed one


def test_milestones_are_read_only_for_events_with_one_not_reached():
    """One HGETALL per event that has a milestone not reached yet; none for an event
    without milestones or with all of them reached (a milestone stays reached)."""
    from types import SimpleNamespace

    from flashgate.core import keys
    from flashgate.core.events import parse_event

    def event(eid, thresholds):
        return parse_event(eid, {"starts_at_ms": 1, "ends_at_ms": 2,
                                 "skus": [{"id": "s0", "price": 1, "stock": 1}],
                                 "milestones": [{"sold": t, "reward": "r"} for t in thresholds]})

    erts = {e: SimpleNamespace(event=event(e, t), reached=reached) for e, t, reached in (
        ("none", (), {}), ("open", (2, 5), {2: (7, "o")}), ("done", (2,), {2: (7, "o")}))}

    class Conn:
        sent: list = []

        async def pipeline(self, cmds):
            Conn.sent.append(cmds)
            return [[b"2", b"7|o", b"5", b"9|p"]]

    class Runtimes:
        events = erts
        boot = "b00t"

    r = refresher.Refresher(Conn(), None, None, Runtimes(), lambda rt: None,
                            max_clock_skew_ms=1000)
    asyncio.run(r.read_milestones())
    assert Conn.sent == [[["HGETALL", keys.milestones("open")]]]
    assert erts["open"].reached == {2: (7, "o"), 5: (9, "p")}
    Conn.sent.clear()
    asyncio.run(r.read_milestones())
    assert Conn.sent == []  # every milestone reached: nothing more to read


def test_a_milestone_is_logged_by_the_worker_whose_sale_reached_it(caplog):
    """``milestone_reached``: by the worker whose boot id the reaching order carries,
    when it first reads the milestone reached; never by another worker, never again."""
    from types import SimpleNamespace

    from flashgate.core.events import parse_event

    ev = parse_event("ev", {"starts_at_ms": 1, "ends_at_ms": 2,
                            "skus": [{"id": "s0", "price": 1, "stock": 9}],
                            "milestones": [{"sold": 2, "reward": "tote"},
                                           {"sold": 4, "reward": "cup"},
                                           {"sold": 6, "reward": "hat"}]})
    ert = SimpleNamespace(event=ev, reached={})
    replies = [[b"2", b"7|ev.s0.b00t0001"],
               [b"2", b"7|ev.s0.b00t0001", b"4", b"8|ev.s0.other0002"],
               [b"2", b"7|ev.s0.b00t0001", b"4", b"8|ev.s0.other0002", b"6", b"9|ev.s0.b00t0003"]]

    class Conn:
        async def pipeline(self, cmds):
            return [replies.pop(0)]

    class Runtimes:
        events = {"ev": ert}
        boot = "b00t"

    r = refresher.Refresher(Conn(), None, None, Runtimes(), lambda rt: None,
                            max_clock_skew_ms=1000)
    with caplog.at_level("INFO", logger="flashgate.refresh"):
        for _ in range(3):
            asyncio.run(r.read_milestones())
    logged = [(rec.fields["sold"], rec.fields["reward"], rec.fields["order_id"])
              for rec in caplog.records if getattr(rec, "event", None) == "milestone_reached"]
    assert logged == [(2, "tote", "ev.s0.b00t0001"), (6, "hat", "ev.s0.b00t0003")]
