"""Wire format of the queued jobs: small JSON documents, one per chat, message or index entry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from chatd.domain import ChatJob, MessageJob, SearchDocument

CHATS = "chats"
MESSAGES = "messages"
INDEX = "index"
TOPICS = (CHATS, MESSAGES, INDEX)


class PoisonJob(ValueError):
    """A queued body that can never be processed (malformed or from an unknown version)."""


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as every response shows times."""
    # isoformat is several times cheaper than strftime, and this runs for every job and row.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def encode_chat(job: ChatJob) -> bytes:
    return orjson.dumps(
        {
            "application_id": job.application_id,
            "chat_number": job.chat_number,
            "created_at": format_time(job.created_at),
        }
    )


def encode_message(job: MessageJob) -> bytes:
    fields = {
        "application_id": job.application_id,
        "chat_number": job.chat_number,
        "message_number": job.message_number,
        "content": job.content,
        "created_at": format_time(job.created_at),
    }
    # The trace context travels in the job itself, not in AMQP headers: an envelope carries
    # many jobs under one set of headers, and a job is copied between messages (retries, splits).
    if job.trace:
        fields["trace"] = job.trace
    return orjson.dumps(fields)


def encode_document(doc: SearchDocument) -> bytes:
    fields = {
        "application_id": doc.application_id,
        "chat_number": doc.chat_number,
        "message_number": doc.message_number,
        "content": doc.content,
        "created_at": format_time(doc.created_at),
        "revision": doc.revision,
    }
    if doc.trace:
        fields["trace"] = doc.trace
    if doc.fresh:
        fields["fresh"] = True
    return orjson.dumps(fields)


def _fields(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PoisonJob(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PoisonJob("not a JSON object")
    return data


def decode_chat(body: bytes) -> ChatJob:
    data = _fields(body)
    try:
        return ChatJob(int(data["application_id"]), int(data["chat_number"]), parse_time(data["created_at"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise PoisonJob(f"bad chat job: {exc!r}") from exc


def decode_message(body: bytes) -> MessageJob:
    data = _fields(body)
    try:
        return MessageJob(
            int(data["application_id"]),
            int(data["chat_number"]),
            int(data["message_number"]),
            str(data["content"]),
            parse_time(data["created_at"]),
            _trace(data),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PoisonJob(f"bad message job: {exc!r}") from exc


def decode_document(body: bytes) -> SearchDocument:
    data = _fields(body)
    try:
        return SearchDocument(
            int(data["application_id"]),
            int(data["chat_number"]),
            int(data["message_number"]),
            str(data["content"]),
            parse_time(data["created_at"]),
            int(data["revision"]),
            _trace(data),
            data.get("fresh") is True,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PoisonJob(f"bad index job: {exc!r}") from exc


def _trace(data: dict[str, Any]) -> str | None:
    trace = data.get("trace")
    return trace if isinstance(trace, str) else None
