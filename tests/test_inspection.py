"""What a job handle tells about the job: ``meta`` (set at enqueue, updated by the job), its
call (``args``, ``kwargs``, ``description``) read only once its signature is checked."""
from __future__ import annotations

import pytest

import nbq_tasks
from nbqueue import EnqueueError, Job, Queue, SignatureError, keys


@pytest.mark.parametrize("mode", [[], ["--inline"]], ids=["fork", "inline"])
def test_meta_set_at_enqueue_and_updated_by_the_job(redis_client, start_worker, mode):
    start_worker("meta", *mode)
    q = Queue("meta", redis_client)
    job = q.enqueue_call(nbq_tasks.bump_meta, ("runs",), meta={"runs": 4, "owner": "ada"})
    assert job.meta == {"runs": 4, "owner": "ada"}
    assert job.result(timeout=20) == 5
    assert Job.fetch(job.id, redis_client).meta == {"runs": 5, "owner": "ada", "seen": ["owner", "runs"]}
    assert job.refresh_meta()["runs"] == 5
    assert q.enqueue(nbq_tasks.add, 1, 2).meta == {}
    group = q.map(nbq_tasks.bump_meta, ["a", "b"], meta={"batch": 1})
    assert group.results(timeout=20) == [1, 1] and group[1].refresh_meta()["batch"] == 1


@pytest.mark.parametrize("meta", [[1], "not json", {"x": float("nan")}, {"x": object()}, {"x": "y" * 70_000}])
def test_meta_that_json_cannot_keep_is_refused(redis_client, meta):
    with pytest.raises(EnqueueError, match="meta"):
        Queue("meta", redis_client).enqueue_call(nbq_tasks.add, (1, 2), meta=meta)
    assert not redis_client.keys("nbq:{*}:job:*")


def test_junk_meta_in_redis_reads_as_empty(redis_client):
    job = Queue("meta", redis_client).enqueue(nbq_tasks.add, 1, 2)
    for junk in (b"[1, 2]", b"{not json", b"\xff\xfe"):
        redis_client.hset(keys.job(job.id), "meta", junk)
        assert job.refresh_meta() == {}


def test_args_kwargs_and_description(redis_client):
    q = Queue("inspect", redis_client)
    job = Job.fetch(q.enqueue(nbq_tasks.echo, 20, "x" * 100, [1] * 50, key={"a": 1}).id, redis_client)
    assert job.args == (20, "x" * 100, [1] * 50) and job.kwargs == {"key": {"a": 1}}
    assert job.description.startswith("nbq_tasks.echo(20, 'xxxx") and "key={'a': 1}" in job.description
    assert len(job.description) <= 200
    huge = q.enqueue(nbq_tasks.echo, *range(500))
    assert len(huge.description) == 200 and huge.description.endswith("…")


def test_a_tampered_call_is_not_unpickled(redis_client):
    job = Queue("inspect", redis_client).enqueue(nbq_tasks.add, 1, 2)
    redis_client.hset(keys.job(job.id), "data", b"\x80\x04K\x01.")  # a different pickle
    with pytest.raises(SignatureError, match="not imported or unpickled"):
        _ = Job.fetch(job.id, redis_client).args
    assert Job.fetch(job.id, redis_client).description == "nbq_tasks.add(…)"
