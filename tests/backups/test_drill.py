"""The restore drill, on both backend sets: back up while writing, write more, lose the store, restore.

What must hold afterwards: every message the backup holds reads back as it was written, counts
and search agree with the rows, and no number acked before the loss (after the backup too) is
handed out again. On the real set the queues and the index outlive the lost database, so every
acked message comes back; on the embedded set the queue and the index were on the lost disk
with the store, so messages acked after the snapshot are gone, and only their numbers are kept.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from chatd.backups import restoring, taking
from tests.backups.conftest import lose_the_store
from tests.conftest import Api, Namespace

WORD = "kangaroo"


async def _write(api: Api, token: str, chat: int, label: str, count: int, into: dict[tuple[int, int], str]) -> None:
    for i in range(count):
        text = f"{label} {i} {WORD}"
        into[(chat, await api.create_message(token, chat, text))] = text


async def test_restore_drill(namespace: Namespace, make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = await namespace.settings()
    api: Api = await make_api()
    token = await api.create_application()
    chats = [await api.create_chat(token) for _ in range(3)]
    before: dict[tuple[int, int], str] = {}
    for chat in chats:
        await _write(api, token, chat, f"before {chat}", 10, before)
    await api.settle()

    during: dict[tuple[int, int], str] = {}
    backups = tmp_path / "backups"
    taken, _ = await asyncio.gather(
        taking.take_backup(settings, backups), _write(api, token, chats[0], "during", 20, during)
    )
    await api.settle()
    after: dict[tuple[int, int], str] = {}  # stored and indexed after the backup
    await _write(api, token, chats[1], "after", 15, after)
    new_chat = await api.create_chat(token)
    await _write(api, token, new_chat, "after in a new chat", 5, after)
    await api.settle()
    queued: dict[tuple[int, int], str] = {}  # acked, still queued when the store is lost
    await _write(api, token, chats[2], "queued", 10, queued)
    await api.client.close()
    acked = {**before, **during, **after, **queued}
    await lose_the_store(namespace)  # on the embedded set the queue and the index are on that disk too

    report = await restoring.restore(settings, backups, out=io.StringIO())
    assert report.folder == taken.folder
    assert report.reindexed >= len(before)
    if namespace.backend_set == "real":
        # The queued jobs came back through the replay, the stored and indexed ones from the index.
        assert report.survivors.replayed >= len(queued)
        assert report.survivors.recovered >= len(after)
        assert report.survivors.orphaned == 0

    api = await make_api()
    base = f"/applications/{token}/chats"
    real = namespace.backend_set == "real"
    # What must be back: all of it on the real set; what the snapshot held on the embedded set.
    must = acked if real else before
    for (chat, number), text in must.items():
        message = await api.get_json(f"{base}/{chat}/messages/{number}")
        assert message["content"] == text, (chat, number)
    present = {}
    for chat in {*chats, new_chat}:
        if (await api.client.get(f"{base}/{chat}")).status == 404:
            assert not real and chat == new_chat  # a chat created after the snapshot, gone with the disk
            continue
        listed = await api.get_json(f"{base}/{chat}/messages?per_page=100")
        numbers = {item["number"] for item in listed["data"]}
        for number in numbers:
            present[(chat, number)] = True
            # Nothing half-restored: each message read back is one that was acked, as it was written.
            assert (chat, number) in acked
        chat_json = await api.get_json(f"{base}/{chat}")
        assert chat_json["messages_count"] == len(numbers)
    assert set(must) <= set(present)
    found = await api.get_json(f"{base}/{chats[0]}/messages/search?query={WORD}&per_page=100")
    assert found["total"] == sum(1 for chat, _ in present if chat == chats[0])
    assert (await api.get_json(f"/applications/{token}"))["chats_count"] == len({chat for chat, _ in present})

    # What was lost is gone, not "accepted and not stored yet" for ever: its numbers were burnt.
    for chat, number in set(acked) - set(present):
        gone = await api.get_json(f"{base}/{chat}/messages/{number}", status=404)
        assert gone["error"]["code"] in ("message_not_found", "chat_not_found"), (chat, number)
    if not real:
        assert (await api.get_json(f"{base}/{new_chat}", status=404))["error"]["code"] == "chat_not_found"
        response = await api.client.post(f"{base}/{new_chat}/messages", json={"content": "into a lost chat"})
        assert response.status == 404

    # New numbers never collide with any number acked before the loss, after the backup too.
    highest_chat = max([*chats, new_chat])
    assert await api.create_chat(token) > highest_chat
    for chat in chats:
        highest = max(number for (c, number) in acked if c == chat)
        assert await api.create_message(token, chat, "after the restore") > highest
    await api.settle()
