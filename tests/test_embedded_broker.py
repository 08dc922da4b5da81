"""The embedded broker: a consumer polling while big messages are written only ever reads whole ones."""

from __future__ import annotations

import threading

from kombu import Connection

from omlweb import kombu_filesystem

MESSAGES = 60
PAYLOAD = "x" * 2_000_000


def exchange(transport: str, folder) -> tuple[int, list[Exception]]:
    """Publish MESSAGES big messages from one thread while another consumes as fast as it can."""
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    received, errors = [], []
    done = threading.Event()

    def consume() -> None:
        with Connection(transport=transport, transport_options=options) as connection:
            queue = connection.SimpleQueue("q")
            while len(received) < MESSAGES and not done.is_set():
                try:
                    received.append(queue.get(timeout=0.01).payload)
                except queue.Empty:
                    continue
                except Exception as error:  # a half-written message
                    errors.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    with Connection(transport=transport, transport_options=options) as connection:
        queue = connection.SimpleQueue("q")
        for number in range(MESSAGES):
            queue.put({"n": number, "body": PAYLOAD})
    consumer.join(timeout=60)
    done.set()
    return len(received), errors


def test_messages_appear_whole(tmp_path):
    received, errors = exchange(f"{kombu_filesystem.__name__}:Transport", tmp_path)
    assert errors == []
    assert received == MESSAGES
    assert not list(tmp_path.glob("*.part"))
