"""The operator's metrics move when the pipeline works: driven step by step, on both backend sets."""

from __future__ import annotations

from chatd import jobs
from tests.factories import eventually
from tests.operating.scrape import scrape, value


async def test_backlog_lag_batches_and_reconciler_move_with_the_pipeline(api) -> None:  # type: ignore[no-untyped-def]
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.settle()
    before = await scrape(api.client)

    for index in range(3):
        await api.create_message(token, chat, f"hello {index}")
    queued = await scrape(api.client)
    # The three jobs wait in the messages queue: the depth an operator watches.
    assert value(queued, "chatd_queue_depth", topic="messages") == 3
    assert value(queued, "chatd_queue_depth", topic="index") == 0

    await api.settle()
    after = await scrape(api.client)
    assert value(after, "chatd_queue_depth", topic="messages") == 0
    assert value(after, "chatd_queue_depth", topic="index") == 0
    grew = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert grew("chatd_stored_lag_seconds_count", kind="message") == 3
    assert grew("chatd_searchable_lag_seconds_count") == 3
    # Every lag is below the 5-minute bucket: measured from the 201, not from some old time.
    assert grew("chatd_searchable_lag_seconds_bucket", le="300.0") == 3
    assert grew("chatd_batch_jobs_sum", topic="messages") == 3
    assert grew("chatd_batch_jobs_sum", topic="index") == 3
    assert grew("chatd_batch_seconds_count", topic="messages") >= 1
    assert grew("chatd_jobs_done_total", topic="index") == 3
    assert grew("chatd_reconciler_runs_total", outcome="done") >= 1
    assert grew("chatd_reconciler_run_seconds_count") >= 1
    assert value(after, "chatd_reconciler_last_success_timestamp_seconds") > 0
    assert value(after, "chatd_queue_oldest_job_age_seconds", topic="messages") == 0


async def test_an_edit_is_not_counted_as_searchable_lag(api) -> None:  # type: ignore[no-untyped-def]
    token = await api.create_application()
    chat = await api.create_chat(token)
    number = await api.create_message(token, chat, "first")
    await api.settle()
    before = await scrape(api.client)
    response = await api.client.patch(
        f"/applications/{token}/chats/{chat}/messages/{number}", json={"content": "second"}
    )
    assert response.status == 200
    await api.settle()
    after = await scrape(api.client)
    assert (
        value(after, "chatd_jobs_done_total", topic="index") - value(before, "chatd_jobs_done_total", topic="index")
        == 1
    )
    assert value(after, "chatd_searchable_lag_seconds_count") == value(before, "chatd_searchable_lag_seconds_count")


async def test_dead_letters_are_counted_per_topic(api) -> None:  # type: ignore[no-untyped-def]
    await api.create_application()  # the queues exist
    before = await scrape(api.client)
    queue = api.pipeline.backends.queue
    await queue.publish(jobs.MESSAGES, [b"not a job"])
    assert await api.pipeline.messages.run_once(max_wait=5.0) == 1

    async def dead_letters() -> float:
        samples = await scrape(api.client)
        return value(samples, "chatd_queue_dead_letters", topic="messages") - value(
            before, "chatd_queue_dead_letters", topic="messages"
        )

    assert await eventually(dead_letters, timeout=10) == 1
    samples = await scrape(api.client)
    assert value(samples, "chatd_queue_depth", topic="messages") == 0


async def test_every_backend_reports_up(api) -> None:  # type: ignore[no-untyped-def]
    samples = await scrape(api.client)
    up = {dict(labels)["backend"]: sample for (name, labels), sample in samples.items() if name == "chatd_backend_up"}
    assert up and set(up.values()) == {1.0}, up
