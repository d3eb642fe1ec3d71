"""How a worker records a job's end: the finish script's call (fenced by the attempt, signed),
acting on its reply (the callback, the log line), and the outcomes written ahead (``ahead.py``)
whose replies a later send read."""
from __future__ import annotations

import logging
import secrets
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional

import redis

from . import flow, keys, wire
from .ahead import Ahead
from .execute import Outcome, Taken
from .schema import CANCELED, DEFAULT_FAILURE_TTL, FAILED, FINISHED, REFUSED, SUMMARY, SUMMARY_SIG

if TYPE_CHECKING:  # pragma: no cover
    from . import signing

log = logging.getLogger("nbqueue.worker")


class Recording:
    """The Worker's part that records outcomes (a mixin: it uses the worker's connection, signer,
    name, ``_redis`` and ``_count_run``)."""

    connection: Any
    signer: Optional[signing.Signer]
    name: str
    callbacks_here: bool
    _redis: Callable[[Callable[[], Any]], Any]
    _count_run: Callable[[], None]

    def _finish_command(self, taken: Taken, outcome: Outcome) -> tuple:
        """The finish script's call for ``outcome``, and how to call it again if its dependents changed."""
        ttl = taken.failure_ttl if outcome.status == FAILED else taken.result_ttl
        status = REFUSED if taken.refused and outcome.status == FAILED else outcome.status  # no retry
        # spreads retries of jobs that failed together; drawn only for a failure (a retry may follow)
        jitter = 0.5 + secrets.randbelow(1000) / 1000 if status == FAILED else 1
        q, tag = taken.queue, keys.tag(taken.queue)
        ref = keys.ref(taken.id, tag)
        head = [taken.id, self.name, taken.attempt, status, ttl, jitter,
                keys.ENDED_KEEP, keys.STATS_BUCKET, keys.STATS_SLOTS, DEFAULT_FAILURE_TTL, ref]
        fields = list(outcome.fields)
        if self.signer is not None:
            fields += self._sign(taken, outcome)
        script_keys = [keys.active(q), keys.failed(q), keys.scheduled(q), keys.ended(q), keys.stats(q),
                       keys.job(taken.id, tag=tag)]
        # with the dependents it had when taken (read now, so the next job is taken after their release),
        # or as if it had none (one EXISTS in the script); 3: some were added, read them and call again
        node_keys, values = [], [0]
        if taken.has_dependents:
            node_keys, values = self._redis(lambda: flow.dependents_of(self.connection, ref, status != FINISHED))
        command = keys.evalsha("finish", [*script_keys, keys.dependents(taken.id, tag=tag), *node_keys],
                               [*head, *values, *fields], tag=tag)

        def retry() -> Any:
            return flow.end_with_dependents(self.connection, "finish", ref, script_keys, head, fields,
                                            status != FINISHED, 3)
        return command, retry

    def _ended_ahead(self, ahead: Optional[Ahead]) -> None:
        """Act on the outcomes written ahead, now that a send read their replies; one whose reply
        was lost with a connection is recorded again (fenced: once only)."""
        if ahead is None or not ahead.posted:
            return
        posted, ahead.posted = ahead.posted, []
        replies = wire.collect(self.connection)
        for i, (taken, outcome, elapsed, command, retry) in enumerate(posted):
            reply = replies[i] if i < len(replies) else None
            if reply is None or isinstance(reply, redis.ResponseError):
                reply = self._redis(partial(self._send_one, command))
            self._ended(taken, outcome, reply, retry, elapsed)

    def _send_one(self, command: tuple) -> Any:
        return wire.send(self.connection, command)[0]

    def _landed(self, taken: Taken, outcome: Outcome) -> int:
        """Whether this attempt's ``outcome`` stands recorded, as finish.lua would have said (1, 2 a
        retry scheduled, 0 not): a finish answered 0 may have been sent again after a connection
        cut off the reply of the first, which landed."""
        status, worker, attempt = self.connection.hmget(keys.job(taken.id, taken.queue), "status", "worker", "attempt")
        if worker != self.name.encode() or attempt != str(taken.attempt).encode():
            return 0
        if status == outcome.status.encode():
            return 1
        return 2 if status == b"scheduled" and outcome.status == FAILED else 0

    def _ended(self, taken: Taken, outcome: Outcome, written: Any, retry: Callable[[], Any], elapsed: float) -> int:
        """Act on a finish script's reply: its callback, the count of jobs run, the log line."""
        if written == 3:
            written = self._redis(retry)
        if written == 0:
            written = self._redis(partial(self._landed, taken, outcome))
        written = int(written or 0)
        if written == 1:  # its end is final (2: a retry is scheduled)
            self._call_back(taken, outcome.status)
        if not written:
            log.warning("%s: not recording the outcome: this attempt no longer holds the job", taken.id)
        self._count_run()
        self._log_end(taken, outcome, written, elapsed)
        return written

    def _log_end(self, taken: Taken, outcome: Outcome, written: int, elapsed: float) -> None:
        if log.isEnabledFor(logging.INFO):
            endings: dict[str, str] = {FINISHED: "ok", CANCELED: "canceled"}
            status = endings.get(outcome.status, f"failed: {outcome.summary}")
            if not written:
                status = f"discarded ({status})"
            log.info("%s %s %s %s %s", taken.id, taken.func, taken.queue, _duration(elapsed), status)

    def _call_back(self, taken: Taken, status: str) -> None:
        """Enqueue the job's ``on_success`` / ``on_failure`` callback, if it has one for ``status``."""
        path = taken.on_success if status == FINISHED else taken.on_failure if status == FAILED else None
        if not path:
            return
        from .callbacks import call_back
        from .queue import Queue

        queue = Queue(taken.queue, self.connection, secret=self.signer, is_async=not self.callbacks_here)
        job = self._redis(lambda: queue.enqueue(call_back, path, keys.ref(taken.id, keys.tag(taken.queue))))
        log.info("%s: callback %s enqueued as %s", taken.id, path.replace(":", "."), job.id)

    def _sign(self, taken: Taken, outcome: Outcome) -> list:
        """The outcome's signature fields: ``rsig`` over its result or error text, and ``ssig`` over the
        result's summary if it has one, both bound to the job id, attempt and status."""
        fields = dict(zip(outcome.fields[::2], outcome.fields[1::2]))
        text = [value if isinstance(value, bytes) else str(value).encode()
                for value in (fields.get("result", b""), fields.get("exc", ""), fields.get("error", ""))]
        assert self.signer is not None
        head = (taken.id.encode(), str(taken.attempt).encode(), outcome.status.encode())
        signed = ["rsig", self.signer.sign_outcome(*head, *text)]
        summary = fields.get(SUMMARY)
        if summary:
            signed += [SUMMARY_SIG, self.signer.sign_summary(*head, str(summary).encode())]
        return signed


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
