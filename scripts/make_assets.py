"""Write the window icon and one thumbnail per dflows preset into the repository's assets/.

Run it again after adding or changing a preset:

    python scripts/make_assets.py            # writes assets/*.png
    python scripts/make_assets.py --out DIR  # writes into DIR instead

The app draws any missing image at run time in the same way, so the files are a cache of
what ``explorer.assets`` would draw, not a separate design.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

# Let the script run from a plain checkout, where the packages are not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dflows  # noqa: E402
from explorer.icons import (  # noqa: E402
    ICON_FILE,
    SOURCE_ASSETS,
    icon_pixels,
    thumbnail_file,
    thumbnail_pixels,
)


def write_png(pixels, path: Path) -> None:
    Image.fromarray(pixels, mode="RGBA").save(path, optimize=True)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=SOURCE_ASSETS, help=f"output folder (default: {SOURCE_ASSETS})"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    write_png(icon_pixels(), args.out / ICON_FILE)
    for name in dflows.PRESETS:
        write_png(thumbnail_pixels(name), args.out / thumbnail_file(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
