"""The embedded broker (kombu's filesystem transport), with messages that appear whole.

kombu writes a message straight into the queue folder under its final name and locks it with flock,
but a consumer takes a file by moving it, which no flock stops: a worker polling at that moment
moves a file still being written and reads half a JSON document (JSONDecodeError, and the worker
dies with the message consumed). Here a message is written under a name no queue matches and then
renamed into place, which is atomic within one folder, so a consumer only ever sees whole files.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]  # as kombu's
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # "<name>.part" is not "<anything>.<queue>.msg": no consumer takes it while it is written.
        partial = final + ".part"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    """Make `filesystem://` broker URLs use this transport (in every process that imports the app)."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
