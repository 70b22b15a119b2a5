"""Every reason a recording can land in failed/, as written in ``NAME.error.json``'s ``reason``."""

from __future__ import annotations

REASONS: dict[str, str] = {
    "unsupported_format": "The recording is not .mp3 or .wav. Convert it, or keep it out of the inbox.",
    "content_mismatch": "The bytes do not match the extension (no RIFF/WAVE header for .wav, no ID3 tag "
    "or MPEG frame sync for .mp3). Check the recorder's export format.",
    "empty_file": "The recording has zero bytes. The recorder failed to write it; export it again.",
    "too_large": "The recording exceeds upload.max_bytes (the API takes at most 25 MiB). Split or "
    "re-encode it (e.g. mp3 at a lower bit rate).",
    "not_regular_file": "A symlink, FIFO, socket or device was named like a recording or sidecar. "
    "vocwatch never follows links; copy the real file into the inbox.",
    "unreadable": "The file could not be read (permissions or I/O error). Check ownership and the disk.",
    "invalid_name": "The file or folder name is not valid UTF-8, so it can be neither sent nor recorded. "
    "Rename it (e.g. convmv -f latin1 -t utf8 NAME) and drop it again.",
    "sidecar_not_json": "The sidecar is not valid UTF-8 JSON (a BOM is fine; NaN, Infinity, numbers too large "
    "to be finite such as 1e400, lone \\ud800 escapes and absurd nesting are not). Fix the JSON and drop the "
    "pair again.",
    "sidecar_not_object": "The sidecar's JSON is not an object ({...}).",
    "sidecar_too_large": "The sidecar exceeds 64 KiB. Trim the metadata.",
    "missing_id": 'The sidecar has no string "id". Add the recording\'s id.',
    "invalid_id": "The id must be 1-255 letters, digits, '.', '-' or '_' (not '.' or '..'). Without a "
    "sidecar (watch.require_sidecar = false) the id is the file name's stem, so the same rule applies to it.",
    "missing_sidecar": "The recording's sidecar (NAME.json or NAME.mp3.json) never arrived within "
    "watch.pair_timeout_seconds of the recording being complete. Drop both again.",
    "missing_recording": "The sidecar's recording never arrived within watch.pair_timeout_seconds of the "
    "sidecar being complete. Drop both again.",
    "ambiguous_sidecar": "One NAME.json could belong to several recordings; name it NAME.mp3.json or NAME.wav.json.",
    "conflict": "The ledger shows this recording id already uploaded with different content. Give the "
    'new recording its own id, or set upload.on_conflict = "upload".',
    "truncated": "The recording's own structure says bytes are missing (a WAV header declaring more than the file "
    "holds, or an MP3 whose last frame runs past the end), and it stayed so for watch.incomplete_timeout_seconds; "
    "the error file says declared vs present bytes, or where the frame was cut. Export it again, or set "
    'watch.truncated = "upload" to send such recordings as they are.',
    "rejected": "Crescendo refused the upload (4xx); the error file holds its status, code and message.",
    "name_too_long": "The file system refused a name or path as too long (ENAMETOOLONG), so the file could "
    "not be moved where it belongs; it was put at the top of failed/, and the error file's path field holds "
    "where it was. Shorten the file or folder names (file names count in bytes: 255 at most) and drop it again.",
    "gave_up": "Transient errors lasted longer than upload.give_up_after_seconds.",
    "job_failed": "Crescendo accepted the upload but its processing job failed; see the error.",
    "job_unknown": "Crescendo accepted the upload, then answered 404 for its job for longer than "
    "status.unknown_job_seconds: the API no longer knows it. Ask Crescendo about the job id in the error file.",
}
