"""The schema (nbqueue/schema.py) names every status, event kind and hash field the Lua scripts use."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from nbqueue import schema
from nbqueue.schema import FAILED, FINISHED, TERMINAL, Status

SCRIPTS = sorted((Path(schema.__file__).parent / "scripts").glob("*.lua"))
_CALL = re.compile(r"redis\.p?call\(\s*'([A-Z]+)'")
_LITERAL = re.compile(r"^'([^'\\]*)'$")
_HASH_READS = {"HGET", "HMGET", "HDEL", "HEXISTS", "HSTRLEN"}  # every argument after the key is a field
_KNOWN_FIELDS = set(schema.JOB_FIELDS) | set(schema.SCHEDULE_FIELDS)


def _strip_comments(text: str) -> str:
    return "\n".join(re.sub(r"--(?!\[\[).*$", "", line) for line in text.splitlines())


def _calls(text: str) -> list:
    """(command, [argument source text]) of every ``redis.call``/``pcall``, arguments split at the
    top-level commas (calls may span lines)."""
    found = []
    for match in _CALL.finditer(text):
        depth, args, current, i, quote = 1, [], "", match.end(), None
        while depth:
            ch = text[i]
            if quote:
                quote = None if ch == quote else quote
                current += ch
            elif ch in "'\"":
                quote = ch
                current += ch
            elif ch in "([{":
                depth += 1
                current += ch
            elif ch in ")]}":
                depth -= 1
                if depth:
                    current += ch
            elif ch == "," and depth == 1:
                args.append(current.strip())
                current = ""
            else:
                current += ch
            i += 1
        args.append(current.strip())
        found.append((match.group(1), [a for a in args if a]))
    return found


def _fields_used() -> dict:
    """field name -> scripts that write or read it as a hash field (literal names only)."""
    used: dict = {}
    for path in SCRIPTS:
        for command, args in _calls(_strip_comments(path.read_text())):
            rest = args[1:]  # after the key
            if command in _HASH_READS:
                names = rest
            elif command == "HSET":
                names = rest[0::2]
            elif command in ("HINCRBY", "HINCRBYFLOAT", "HSETNX"):
                names = rest[:1]
            else:
                continue
            for name in names:
                literal = _LITERAL.match(name)
                if literal:
                    used.setdefault(literal.group(1), set()).add(path.name)
                elif name.startswith("unpack("):
                    break  # pairs from a table: the field/value alternation is lost from here on
    return used


def _statuses_used() -> dict:
    """status text -> scripts, from the places a status is written, published or compared."""
    used: dict = {}
    patterns = [
        r"status\s*=\s*'(\w+)'",  # cjson tables and event.status = '...'
        r'"status":"(\w+)"',  # hand-made JSON
        r"(?:status|held|cur\[1\])\s*[~=]=\s*'(\w+)'",  # comparisons with a status read
        r"cur\[3\]\s*[~=]=\s*'(\w+)'",  # finish/renew read status third
        r"local status = ([^\n]+)",  # local status = a and 'x' or 'y'
    ]
    for path in SCRIPTS:
        text = _strip_comments(path.read_text())
        for command, args in _calls(text):  # HSET ... 'status', 'queued'
            pairs = dict(zip(args[1::2], args[2::2])) if command == "HSET" else {}
            literal = _LITERAL.match(pairs.get("'status'", ""))
            if literal:
                used.setdefault(literal.group(1), set()).add(path.name)
        for pattern in patterns:
            for match in re.finditer(pattern, text):
                group = match.group(1)
                if pattern.startswith("local"):
                    words = [] if "redis." in group else re.findall(r"'(\w+)'", group)
                else:
                    words = [group]
                for word in words:
                    used.setdefault(word, set()).add(path.name)
    return used


def test_the_parser_sees_the_scripts():
    fields, statuses = _fields_used(), _statuses_used()
    assert {"status", "attempt", "ended_at", "exc", "error"} <= set(fields), fields
    assert {"queued", "started", "finished", "failed", "canceled", "scheduled", "deferred"} <= set(statuses)
    assert "token" in fields and "fired" in fields  # the schedule hash (fire.lua)


def test_every_status_in_lua_is_a_schema_status_or_event():
    allowed = schema.EVENTS | {schema.REFUSED}
    unknown = {s: sorted(p) for s, p in _statuses_used().items() if s not in allowed}
    assert not unknown, f"statuses used in Lua but not in nbqueue/schema.py: {unknown}"


def test_every_hash_field_in_lua_is_a_schema_field():
    unknown = {f: sorted(p) for f, p in _fields_used().items()
               if f not in _KNOWN_FIELDS and not f.startswith(schema.JOB_FIELD_PREFIXES)}
    assert not unknown, f"hash fields used in Lua but not in nbqueue/schema.py: {unknown}"


def test_the_check_can_fail(tmp_path, monkeypatch):
    bad = tmp_path / "bad.lua"
    bad.write_text("redis.call('HSET', KEYS[1], 'status', 'finsihed', 'colour', ARGV[1])\n"
                   "if cur[1] == 'startde' then return 0 end\n")
    monkeypatch.setattr(sys.modules[__name__], "SCRIPTS", [bad])
    assert set(_fields_used()) == {"status", "colour"}
    assert set(_statuses_used()) == {"finsihed", "startde"}


def test_statuses_are_their_text():
    assert FINISHED == "finished" and "finished" in TERMINAL and b"failed".decode() in TERMINAL
    assert {FAILED: 1}["failed"] == 1 and {"failed": 1}[FAILED] == 1
    assert str(FAILED) == f"{FAILED}" == f"{FAILED}" == "failed"
    assert json.loads(json.dumps({"s": FAILED})) == {"s": "failed"}
    assert Status("queued") is schema.QUEUED and repr(schema.CANCELED) == "'canceled'"
    assert schema.TERMINAL | schema.WAITING | {schema.STARTED} == schema.STATUSES
    assert not schema.TERMINAL & schema.WAITING
    assert list(schema.ORDER) == list(Status)


def test_a_status_goes_through_redis_as_its_text(redis_client):
    redis_client.hset("nbq-test:schema", "status", FAILED)
    redis_client.rpush("nbq-test:schema-list", schema.QUEUED)
    assert redis_client.hget("nbq-test:schema", "status") == b"failed"
    assert redis_client.lrange("nbq-test:schema-list", 0, -1) == [b"queued"]
    assert redis_client.eval("return ARGV[1]", 0, schema.CANCELED) == b"canceled"


@pytest.mark.parametrize("value", [None, 30, 1.5, 3600, 24 * 3600])
def test_option_encoding_round_trips(value):
    assert schema.decode_option(schema.encode_option(value).encode(), 7) == value


def test_option_decoding():
    assert schema.decode_option(None, 7) == 7
    assert schema.decode_option(b"none", 7) is None and schema.decode_option(b"inf", 7) is None
    with pytest.raises(ValueError):
        schema.decode_option(b"soon", 7)
    assert schema.DEFAULTS["timeout"] == schema.DEFAULT_TIMEOUT
    assert tuple(schema.DEFAULTS) == schema.OPTION_FIELDS


def test_the_field_lists_of_the_python_side_are_schema_fields():
    from nbqueue import schedule

    for fields in (schema.READ_FIELDS, schema.OUTCOME, schema.VIEW_FIELDS, schema.OPTION_FIELDS,
                   schema.CALLBACK_FIELDS):
        assert set(fields) <= set(schema.JOB_FIELDS), fields
    assert set(schedule._FIELDS) <= set(schema.SCHEDULE_FIELDS)


def test_every_job_field_the_python_code_reads_or_writes_is_a_schema_field():
    call = re.compile(r"\.h(?:m?get|set|del|strlen|exists)\((?:keys\.job\([^()]*\)|\w+\._key),\s*([^()\n]*)\)")
    used = {}
    for path in sorted((Path(schema.__file__).parent).rglob("*.py")):
        for match in call.finditer(path.read_text()):
            for name in re.findall(r'"(\w+)"', match.group(1)):
                used.setdefault(name, set()).add(path.name)
    assert {"status", "meta", "progress", "error"} <= set(used), used  # the scan sees the code
    unknown = {f: sorted(p) for f, p in used.items() if f not in schema.JOB_FIELDS}
    assert not unknown, f"job hash fields used in Python but not in nbqueue/schema.py: {unknown}"
