"""How should a batch of jobs travel through RabbitMQ? `python -m bench.amqp_batching`.

Publishes ``--jobs`` jobs of ``--size`` bytes in calls of ``--per-call`` to a quorum queue
declared as AmqpQueue declares it, then consumes and acks them all, for each way a batch can
travel:

- ``messages``: one persistent message per job, a call's messages under one confirm wait
  (concurrent publishes, then every confirm), one ack per message;
- ``envelope``: one persistent message per call carrying all its jobs, length-prefixed;
  one ack per call;
- ``adapter``: whatever ``AmqpQueue.publish``/``receive``/``ack`` do now (receive batches of
  ``--per-call``).

For each it prints jobs/s for publishing and for consuming+acking, and CPU seconds per 1,000
jobs of this Python process (``time.process_time``) and of the RabbitMQ server (its beam.smp
process, from /proc/PID/stat; pass ``--broker-pid``, or it is read from the test services'
pid file). The broker is shared: its idle CPU is measured first and shown, not subtracted.
Only the 127.0.0.1 broker is used, and each run is bounded (a few seconds per variant).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from chatd.backends.amqp_queue import AmqpQueue

URL = os.environ.get("CHATD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PID_FILE = Path(os.environ.get("CHATD_SERVICES_DIR", "/var/lib/chatd-test")) / "rabbitmq" / "rabbit.pid"
TICK = os.sysconf("SC_CLK_TCK")
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
LENGTH = struct.Struct(">I")


def broker_cpu(pid: int) -> float:
    """CPU seconds (user + system) the broker process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime: fields 14 and 15 of stat(5)


@dataclass
class Phase:
    jobs: int
    wall: float = 0.0
    python_cpu: float = 0.0
    broker_cpu: float = 0.0

    def row(self) -> str:
        per_k = 1000 / self.jobs
        return (
            f"{self.jobs / self.wall:9.0f} jobs/s  python {self.python_cpu * per_k * 1000:6.1f} ms/1k"
            f"  broker {self.broker_cpu * per_k * 1000:6.1f} ms/1k"
        )


async def measured(jobs: int, pid: int, work: Callable[[], Awaitable[None]]) -> Phase:
    phase = Phase(jobs)
    wall, python, broker = time.perf_counter(), time.process_time(), broker_cpu(pid)
    await work()
    phase.wall = time.perf_counter() - wall
    phase.python_cpu = time.process_time() - python
    phase.broker_cpu = broker_cpu(pid) - broker
    return phase


def frame(bodies: list[bytes]) -> bytes:
    return b"".join(LENGTH.pack(len(body)) + body for body in bodies)


def unframe(data: bytes) -> list[bytes]:
    bodies, at = [], 0
    while at < len(data):
        (size,) = LENGTH.unpack_from(data, at)
        bodies.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return bodies


async def raw_variant(name: str, args: argparse.Namespace, pid: int, work_queue: str) -> tuple[Phase, Phase]:
    jobs = [os.urandom(args.size) for _ in range(args.jobs)]
    calls = [jobs[at : at + args.per_call] for at in range(0, len(jobs), args.per_call)]
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel(publisher_confirms=True)

        async def publish() -> None:
            for call in calls:
                if name == "envelope":
                    message = aio_pika.Message(frame(call), delivery_mode=PERSISTENT, headers={"x-jobs": len(call)})
                    await channel.default_exchange.publish(message, work_queue, mandatory=True)
                else:
                    await asyncio.gather(
                        *(
                            channel.default_exchange.publish(
                                aio_pika.Message(body, delivery_mode=PERSISTENT), work_queue, mandatory=True
                            )
                            for body in call
                        )
                    )

        published = await measured(len(jobs), pid, publish)

        consuming = await connection.channel(publisher_confirms=False)
        await consuming.set_qos(prefetch_count=args.prefetch)
        queue = await consuming.declare_queue(work_queue, passive=True)
        arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def consume() -> None:
            tag = await queue.consume(arrived.put)
            done = 0
            while done < len(jobs):
                message = await asyncio.wait_for(arrived.get(), 30)
                batch = [message]
                while not arrived.empty() and len(batch) < args.per_call:
                    batch.append(arrived.get_nowait())
                count = sum(len(unframe(m.body)) for m in batch) if name == "envelope" else len(batch)
                await asyncio.gather(*(m.ack() for m in batch))
                done += count
            await queue.cancel(tag)

        consumed = await measured(len(jobs), pid, consume)
    finally:
        await connection.close()
    return published, consumed


async def adapter_variant(args: argparse.Namespace, pid: int, adapter: AmqpQueue) -> tuple[Phase, Phase]:
    jobs = [os.urandom(args.size) for _ in range(args.jobs)]
    calls = [jobs[at : at + args.per_call] for at in range(0, len(jobs), args.per_call)]

    async def publish() -> None:
        for call in calls:
            await adapter.publish("index", call)

    async def consume() -> None:
        done = 0
        deadline = time.monotonic() + 60
        while done < len(jobs) and time.monotonic() < deadline:
            batch = await adapter.receive("index", args.per_call, 1.0)
            await adapter.ack("index", batch)
            done += len(batch)
        assert done == len(jobs), f"consumed {done} of {len(jobs)}"

    return await measured(len(jobs), pid, publish), await measured(len(jobs), pid, consume)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--per-call", type=int, default=64)
    parser.add_argument("--prefetch", type=int, default=256, help="consumer prefetch (messages), raw variants")
    parser.add_argument("--variants", default="messages,envelope,adapter")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--broker-pid", type=int, default=0)
    args = parser.parse_args()
    pid = args.broker_pid or int(PID_FILE.read_text().strip())

    idle = await measured(1000, pid, lambda: asyncio.sleep(2.0))
    print(f"broker idle: {idle.broker_cpu / idle.wall * 1000:.1f} ms CPU per s", flush=True)
    for round_ in range(args.rounds):
        for name in args.variants.split(","):
            # A fresh namespace per variant: queues declared exactly as the adapter declares them.
            adapter = AmqpQueue(URL, prefix="chatd_bench_" + uuid.uuid4().hex[:8])
            await adapter.open()
            try:
                await adapter.depth("index")  # declares the topic's queues
                if name == "adapter":
                    published, consumed = await adapter_variant(args, pid, adapter)
                else:
                    published, consumed = await raw_variant(name, args, pid, f"{adapter.prefix}.index")
            finally:
                await adapter.destroy()
                await adapter.close()
            print(f"{round_ + 1} {name:9s} publish {published.row()}", flush=True)
            print(f"{round_ + 1} {name:9s} consume {consumed.row()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
