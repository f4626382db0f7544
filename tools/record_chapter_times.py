"""Record how long each chapter took in the last `make book`, for the chapters' cost lines.

    make book TINYLIB_PROFILE=quick
    python tools/record_chapter_times.py        # writes book/results/chapter-times.json

The times come from the build's execution cache (book/_build/.jupyter_cache), the
profile and backend from the stamp `make book` leaves (book/_build/.profile), and the
device from tinylib. Only chapters executed in that build are recorded: a chapter the
cache still held from an earlier build under the same profile keeps that build's time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinylib import chapter_costs  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=ROOT / "book" / "_build", help="the book's build folder")
    args = parser.parse_args(argv)
    stamp = args.build / ".profile"
    if not stamp.is_file():
        print(f"error: {stamp} is missing: build the book with `make book` first", file=sys.stderr)
        return 2
    profile, backend = stamp.read_text().split()
    from tinylib.environment import device_name

    build = chapter_costs.record_build(args.build / ".jupyter_cache", profile, device_name(), backend)
    for chapter, seconds in build["seconds"].items():
        print(f"{chapter:32s} {seconds / 60:6.1f} min")
    print(f"total {build['total_minutes']} min, {profile} profile, {backend} on {build['device']}: "
          f"{chapter_costs.times_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
