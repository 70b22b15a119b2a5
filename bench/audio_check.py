"""``python -m bench.audio_check``: what the structural check costs per recording (a row of ``make bench``).

The check the planner runs before each claim (``vocwatch.edges.audio.structure``: open_regular, a few preads
of headers and frame headers, close) on a ~5 MB MP3 (128 kbps stereo, LAME) and a ~5 MB WAV, from the page
cache; the median of many runs. No assertion: the figure goes in the table and in results.json.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from vocwatch.core.audio import Complete
from vocwatch.edges.audio import structure
from vocwatch.testing.samples import RATE, pcm_tone, whole_frames, write_wav

HERE = Path(__file__).resolve().parent
TARGET = 5_000_000


def _mp3(path: Path) -> Path:
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(128)
    encoder.set_in_sample_rate(44100)
    encoder.set_channels(2)
    encoder.set_quality(7)
    mono = pcm_tone(2.0, rate=44100)
    data = bytes(encoder.encode(b"".join(mono[i : i + 2] * 2 for i in range(0, len(mono), 2))) + encoder.flush())
    path.write_bytes(whole_frames(data * (TARGET // len(data) + 1), TARGET))
    return path


def measure(work: Path, runs: int = 2000) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    files = {"mp3": _mp3(work / "check-5mb.mp3"), "wav": write_wav(work / "check-5mb.wav", target_bytes=TARGET)}
    out: dict[str, Any] = {"runs": runs, "sample_rate_wav": RATE}
    for kind, path in files.items():
        assert isinstance(structure(path), Complete), path
        times = []
        for _ in range(runs):
            began = time.perf_counter_ns()
            structure(path)
            times.append(time.perf_counter_ns() - began)
        out[kind] = {
            "bytes": path.stat().st_size,
            "median_us": round(statistics.median(times) / 1000, 1),
            "p99_us": round(sorted(times)[int(runs * 0.99)] / 1000, 1),
        }
    return out


def line(result: dict[str, Any]) -> str:
    mp3, wav = result["mp3"], result["wav"]
    return (
        f"structure check before a claim (open, preads, close): {mp3['bytes'] / 1e6:.1f} MB MP3 median "
        f"{mp3['median_us']} us (p99 {mp3['p99_us']} us), {wav['bytes'] / 1e6:.1f} MB WAV median {wav['median_us']} us"
        f" (p99 {wav['p99_us']} us), over {result['runs']} runs (goal < 1000 us)"
    )


def main() -> int:
    print(line(measure(HERE / "work" / "audio")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
