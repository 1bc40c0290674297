"""kombu's filesystem transport, with messages that appear whole or not at all.

The stock transport creates a message file and then writes into it. A worker
listing the queue folder in between takes the empty file, fails to decode it
and stops with "Unrecoverable error: JSONDecodeError" (celery/kombu#1551).
Here a message is written under a name readers skip and renamed into place.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's base channel calls the second argument "message", its filesystem channel "payload".
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        filename = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, filename)
        partial = path + ".part"  # not "<queue>.msg": readers pass it by
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, path)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
