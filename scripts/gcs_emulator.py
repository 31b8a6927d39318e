"""Start gcp-storage-emulator with a fix for empty uploads (test setup only).

gcp-storage-emulator 2026.7.19 reads an empty request body as ``None`` and then
fails with ``TypeError: object of type 'NoneType' has no len()`` on a media
upload of zero bytes, dropping the connection.  Real GCS stores an empty object
(panpath's ``mkdir`` marker on gs://, or an empty job.stdout, are such uploads),
so the emulator, not the library, is patched here before it starts.

Usage: python scripts/gcs_emulator.py start --host=127.0.0.1 --port=9023 --in-memory
(the arguments are the emulator's own).
"""

from __future__ import annotations

import sys

from gcp_storage_emulator import __main__ as emulator_main
from gcp_storage_emulator.handlers import objects


def _patch_empty_media_upload() -> None:
    """Make a zero-byte media upload store an empty object instead of crashing."""
    original_media_upload = objects._media_upload

    def media_upload_allowing_empty(request, response, storage):
        if request.data is None:
            # The body was empty: what the client meant is b"".
            request._data = b""
        return original_media_upload(request, response, storage)

    objects._media_upload = media_upload_allowing_empty


if __name__ == "__main__":
    _patch_empty_media_upload()
    emulator_main.main(sys.argv[1:])
