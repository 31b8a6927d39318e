"""Start gcp-storage-emulator with fixes for media uploads (test setup only).

gcp-storage-emulator 2026.7.19 mishandles two kinds of simple ("media") uploads
that real GCS stores as given, so the emulator, not the library, is patched
here before it starts:

- an empty body is read as ``None`` and the upload fails with ``TypeError:
  object of type 'NoneType' has no len()``, dropping the connection (panpath's
  ``mkdir`` marker on gs://, or an empty job.stdout, are such uploads);
- a body sent as ``application/json`` (any ``*.json`` object, such as a Batch
  job's JSON) is parsed into a dict and the upload fails computing a checksum.

Both come from the emulator's request-body reader; for media uploads it now
returns the bytes as sent.

Its single-threaded server also listens with Python's default backlog of 5
connections, so twenty clients connecting at once see SYNs dropped and retried
a second later; the backlog is raised (it still serves one request at a time).

Usage: python scripts/gcs_emulator.py start --host=127.0.0.1 --port=9023 --in-memory
(the arguments are the emulator's own).
"""

from __future__ import annotations

import sys

from gcp_storage_emulator import __main__ as emulator_main
from gcp_storage_emulator import server


def _patch_media_upload_body() -> None:
    """Give media uploads their body as bytes: empty or JSON included."""
    original_read_data = server._read_data

    def read_data_keeping_media_bytes(request_handler, query):
        if query.get("uploadType") == ["media"]:
            raw = server._read_raw_data(request_handler)
            return server._decode_raw_data(raw, request_handler) or b""
        return original_read_data(request_handler, query)

    server._read_data = read_data_keeping_media_bytes


def _raise_listen_backlog() -> None:
    server.server.HTTPServer.request_queue_size = 128


if __name__ == "__main__":
    _patch_media_upload_body()
    _raise_listen_backlog()
    emulator_main.main(sys.argv[1:])
