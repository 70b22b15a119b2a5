"""Every reason a recording can land in failed/, as written in ``NAME.error.json``'s ``reason``."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a recording landed in failed/: ``reason`` in NAME.error.json, and the ledger's error prefix."""

    UNSUPPORTED_FORMAT = "unsupported_format"
    CONTENT_MISMATCH = "content_mismatch"
    EMPTY_FILE = "empty_file"
    STILL_OPEN = "still_open"
    TOO_LARGE = "too_large"
    NOT_REGULAR_FILE = "not_regular_file"
    UNREADABLE = "unreadable"
    INVALID_NAME = "invalid_name"
    SIDECAR_NOT_JSON = "sidecar_not_json"
    SIDECAR_NOT_OBJECT = "sidecar_not_object"
    SIDECAR_TOO_LARGE = "sidecar_too_large"
    MISSING_ID = "missing_id"
    INVALID_ID = "invalid_id"
    MISSING_SIDECAR = "missing_sidecar"
    MISSING_RECORDING = "missing_recording"
    AMBIGUOUS_SIDECAR = "ambiguous_sidecar"
    CONFLICT = "conflict"
    TRUNCATED = "truncated"
    REJECTED = "rejected"
    NAME_TOO_LONG = "name_too_long"
    GAVE_UP = "gave_up"
    JOB_FAILED = "job_failed"
    JOB_UNKNOWN = "job_unknown"


REASONS: dict[Reason, str] = {
    Reason.UNSUPPORTED_FORMAT: "The recording is not .mp3 or .wav. Convert it, or keep it out of the inbox.",
    Reason.CONTENT_MISMATCH: "The bytes do not match the extension (no RIFF/WAVE header for .wav, no ID3 tag "
    "or MPEG frame sync for .mp3). Check the recorder's export format.",
    Reason.EMPTY_FILE: "The recording still had zero bytes when watch.pair_timeout_seconds ran out (an empty file "
    "waits that long, as a recorder that buffers its output writes nothing for a while). The recorder failed "
    "to write it; export it again.",
    Reason.STILL_OPEN: "A writer still held the recording open, without changing it, watch.settle_seconds + "
    "watch.pair_timeout_seconds after its last change: the recorder never closed it (hung, or it keeps "
    "files open after the call). Make it close the file when the call ends; it may still be writing "
    "into the copy in failed/, so drop it again once it is closed.",
    Reason.TOO_LARGE: "The recording exceeds upload.max_bytes (the API takes at most 25 MiB). Split or "
    "re-encode it (e.g. mp3 at a lower bit rate).",
    Reason.NOT_REGULAR_FILE: "A symlink, FIFO, socket or device was named like a recording or sidecar. "
    "vocwatch never follows links; copy the real file into the inbox.",
    Reason.UNREADABLE: "The file could not be read (permissions or I/O error). Check ownership and the disk.",
    Reason.INVALID_NAME: "The file or folder name is not valid UTF-8, so it can be neither sent nor recorded. "
    "Rename it (e.g. convmv -f latin1 -t utf8 NAME) and drop it again.",
    Reason.SIDECAR_NOT_JSON: "The sidecar is not valid UTF-8 JSON (a BOM is fine; NaN, Infinity, numbers too large "
    "to be finite such as 1e400, lone \\ud800 escapes and absurd nesting are not). Fix the JSON and drop the "
    "pair again.",
    Reason.SIDECAR_NOT_OBJECT: "The sidecar's JSON is not an object ({...}).",
    Reason.SIDECAR_TOO_LARGE: "The sidecar exceeds 64 KiB. Trim the metadata.",
    Reason.MISSING_ID: 'The sidecar has no string "id". Add the recording\'s id.',
    Reason.INVALID_ID: "The id must be 1-255 letters, digits, '.', '-' or '_' (not '.' or '..'). Without a "
    "sidecar (watch.require_sidecar = false) the id is the file name's stem, so the same rule applies to it.",
    Reason.MISSING_SIDECAR: "The recording's sidecar (NAME.json or NAME.mp3.json) never arrived within "
    "watch.pair_timeout_seconds of the recording being complete. Drop both again.",
    Reason.MISSING_RECORDING: "The sidecar's recording never arrived within watch.pair_timeout_seconds of the "
    "sidecar being complete. Drop both again.",
    Reason.AMBIGUOUS_SIDECAR: "One NAME.json could belong to several recordings; name it NAME.mp3.json or "
    "NAME.wav.json.",
    Reason.CONFLICT: "The ledger shows this recording id already uploaded with different content. Give the "
    'new recording its own id, or set upload.on_conflict = "upload".',
    Reason.TRUNCATED: "The recording's own structure says bytes are missing (a WAV header declaring more than the file "
    "holds, or an MP3 whose last frame runs past the end), and it stayed so for watch.incomplete_timeout_seconds; "
    "the error file says declared vs present bytes, or where the frame was cut. Export it again, or set "
    'watch.truncated = "upload" to send such recordings as they are.',
    Reason.REJECTED: "Crescendo refused the upload (4xx); the error file holds its status, code and message.",
    Reason.NAME_TOO_LONG: "The file system refused a name or path as too long (ENAMETOOLONG), so the file could "
    "not be moved where it belongs; it was put at the top of failed/, and the error file's path field holds "
    "where it was. Shorten the file or folder names (file names count in bytes: 255 at most) and drop it again.",
    Reason.GAVE_UP: "Transient errors lasted longer than upload.give_up_after_seconds.",
    Reason.JOB_FAILED: "Crescendo accepted the upload but its processing job failed; see the error.",
    Reason.JOB_UNKNOWN: "Crescendo accepted the upload, then answered 404 for its job for longer than "
    "status.unknown_job_seconds: the API no longer knows it. Ask Crescendo about the job id in the error file.",
}
