"""The check every test's gateways end with (tests/support.py): what counts as an
unexpected error in a gateway's output, and what an allow-list lets through."""

from __future__ import annotations

from tests.support import Gateway, log_records, problem

T = "2026-12-05 03:35:41,713"
ERROR = f"{T} worker-0 ERROR flashgate.redis: Redis has not answered for 2.2 s\n"
WARNING = f"{T} worker-0 WARNING flashgate.app: Redis connection lost\n"
TRACEBACK = ["Traceback (most recent call last):\n", '  File "x.py", line 1, in f\n',
             "ValueError: boom\n"]


def records(*lines):
    return [record for _, record in log_records(list(lines))]


def test_records_start_at_log_lines_and_keep_what_follows():
    out = records("flashgate 0.1.0: listening on http://127.0.0.1:1\n", "  Redis: x\n",
                  WARNING, ERROR, *TRACEBACK, WARNING)
    assert [len(r) for r in out] == [2, 1, 4, 1]
    assert out[2][0] == ERROR and out[2][-1] == "ValueError: boom\n"


def test_errors_and_tracebacks_are_problems_unless_expected():
    assert not problem([WARNING], [])
    assert not problem(["flashgate 0.1.0: listening\n"], [])
    assert problem([ERROR], [])
    assert problem([ERROR.replace("ERROR", "CRITICAL")], [])
    assert not problem([ERROR], [r"Redis has not answered"])
    assert problem([ERROR], [r"something else"])
    # log.exception: the traceback goes with its expected line
    assert not problem([ERROR, *TRACEBACK], [r"Redis has not answered"])
    assert problem([ERROR, *TRACEBACK], [])
    # a traceback under a warning, or printed by a dying process, is never expected
    assert problem([WARNING, *TRACEBACK], [r"Redis connection lost", r"Traceback"])
    assert problem(["Process SpawnProcess-1:\n", *TRACEBACK], [r"Redis"])
    assert problem([f"{T} worker-0 INFO x: y\n", "Exception ignored in: <x>\n"], [])
    # the level is the log line's, not a word of its message
    assert not problem([f"{T} worker-0 WARNING x: an ERROR in the message\n"], [])


def test_a_gateway_reports_each_problem_once_and_judges_a_late_traceback_with_its_line():
    g = Gateway("redis://127.0.0.1:1/0", "/nonexistent")
    g.output += [WARNING, ERROR]
    assert g.log_problems([r"has not answered"]) == []  # expected by this test
    g.output += TRACEBACK  # ... its traceback arrives after the test ended
    assert g.log_problems([]) == []
    g.output += [ERROR]
    assert g.log_problems([]) == [ERROR.rstrip("\n")]
    assert g.log_problems([]) == []  # once
    g.output += [WARNING, *TRACEBACK]
    assert len(g.log_problems([r"has not answered"])) == 1


def test_a_known_defect_is_let_through_only_whole():
    head = f"{T} worker-0 ERROR asyncio: Future exception was never retrieved\n"
    defect = [head, "future: <Future finished exception=RedisUnavailable('connection to "
              "Redis lost: closed')>\n", "flashgate.core.redisconn.RedisUnavailable: x\n"]
    known = (r" ERROR asyncio: Future exception was never retrieved\n"
             r"future: <Future finished exception=RedisUnavailable",)
    assert not problem(defect, [], known=known)
    assert problem(defect, [])  # no known defect today: it is a problem
    other = [head, "future: <Future finished exception=KeyError('x')>\n"]
    assert problem(other, [], known=known)


# JSON lines (the default --log-format): judged as the text line of the same record
JSON_ERROR = ('{"ts":"2026-12-05T03:35:41.713Z","level":"error","proc":"worker","worker":0,'
              '"logger":"flashgate.redis","msg":"Redis has not answered for 2.2 s"}\n')
JSON_WARNING = ('{"ts":"2026-12-05T03:35:41.713Z","level":"warning","proc":"supervisor",'
                '"logger":"flashgate","msg":"an ERROR in the message"}\n')
JSON_EXC = ('{"ts":"2026-12-05T03:35:41.713Z","level":"error","proc":"notifier",'
            '"logger":"flashgate.webhooks","msg":"a producer failed",'
            '"exc":"Traceback (most recent call last):\\n  File \\"x.py\\", line 1\\n'
            'ValueError: boom"}\n')


def test_json_lines_are_records_rendered_as_text_lines():
    out = records("flashgate 0.1.0: listening on http://127.0.0.1:1\n", JSON_WARNING,
                  JSON_ERROR, *TRACEBACK, JSON_EXC)
    assert [len(r) for r in out] == [1, 1, 4, 4]
    assert out[1][0] == f"{T} supervisor WARNING flashgate: an ERROR in the message\n"
    assert out[2][0] == f"{T} worker-0 ERROR flashgate.redis: Redis has not answered for 2.2 s\n"
    assert out[2][-1] == "ValueError: boom\n"  # a traceback printed after it: its record's
    assert out[3][0].endswith(" notifier ERROR flashgate.webhooks: a producer failed\n")
    assert out[3][1] == "Traceback (most recent call last):\n"


def test_json_errors_are_problems_unless_expected():
    assert not problem(records(JSON_WARNING)[0], [])
    assert problem(records(JSON_ERROR)[0], [])
    assert not problem(records(JSON_ERROR)[0],
                       [r" worker-0 ERROR flashgate\.redis: Redis has not answered for [\d.]+ s$"])
    assert problem(records(JSON_EXC)[0], [])
    assert not problem(records(JSON_EXC)[0], [r"a producer failed"])
    # a line that looks like JSON but is no log line belongs to the record before it
    assert len(records(JSON_WARNING, '{"not": "a log line"}\n')) == 1
