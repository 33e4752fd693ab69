"""What `img2img enhance` reads and where it writes: files and folders given on the command line
-> the images to enhance (folders recursed), the files left out (with their reasons, as ingest
lists them) and the folder whose layout the outputs keep under `-o`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.files import IMAGE_SUFFIXES
from translator.video import VIDEO_SUFFIXES

EXTENSIONS = {"jpeg": "jpg", "tif": "tiff"}


@dataclass
class Inputs:
    """files: the images, in the order given (a folder's in sorted path order), each once.
    root: the deepest folder holding every input; an output keeps its image's path relative to it
    (`photos/a/IMG_1.jpg` given as `photos/` -> `OUT/a/IMG_1.enhanced.png`).
    skipped: files left out, each {"file", "reason"}: not an image by its suffix, hidden (a name
    starting with a dot), or inside the output folder (outputs of an earlier run)."""

    files: list[Path]
    root: Path
    skipped: list[dict[str, str]] = field(default_factory=list)


def _not_image(path: Path) -> str:
    """Why a file with a suffix that is not an image's is left out (a video: where it goes)."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "a video: the endpoint takes images; enhance it with `img2img batch FILE -o OUT --model NAME`"
    return f"not an image file (suffix {path.suffix or 'none'!r})"


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path == folder or folder in path.parents)


def collect(paths: list[Path], out_dir: Path | None = None) -> Inputs:
    """Expand `paths` (files and folders) into the images to enhance.

    A folder is walked recursively; hidden files and folders are skipped (a hidden folder is
    listed once, not descended into; a named file whose path below the root has a hidden part,
    as `find` lists them, too), and so is `out_dir` when it lies inside an input folder.
    Any file, named or found, whose suffix is not an image's (IMAGE_SUFFIXES, as ingest) is
    skipped and listed (a video with a pointer to `img2img batch`). Raises Img2ImgError for a path that does not exist, and when no image
    is left (naming what was skipped)."""
    out = Path(os.path.abspath(out_dir)) if out_dir is not None else None
    images: list[Path] = []
    skipped: list[dict[str, str]] = []
    anchors: list[str] = []  # the folders the inputs sit in: their common path is the root
    for given in paths:
        if not given.exists():
            raise Img2ImgError(f"no such file or folder: {given}")
        absolute = Path(os.path.abspath(given))
        if not given.is_dir():
            anchors.append(str(absolute.parent))
            if given.suffix.lower() in IMAGE_SUFFIXES or given.name.startswith("."):  # hidden: after the root
                images.append(given)
            else:
                skipped.append({"file": str(given), "reason": _not_image(given)})
            continue
        anchors.append(str(absolute))
        for dirpath, dirnames, names in os.walk(given):
            here = Path(dirpath)
            for d in sorted(dirnames):
                if d.startswith("."):
                    skipped.append({"file": str(here / d) + "/", "reason": "hidden folder (name starts with a dot)"})
                elif _inside(Path(os.path.abspath(here / d)), out):
                    skipped.append({"file": str(here / d) + "/", "reason": "the output folder (-o) of this run"})
            dirnames[:] = sorted(d for d in dirnames
                                 if not d.startswith(".") and not _inside(Path(os.path.abspath(here / d)), out))
            for name in sorted(names):
                path = here / name
                if name.startswith("."):
                    skipped.append({"file": str(path), "reason": "hidden file (name starts with a dot)"})
                elif path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped.append({"file": str(path), "reason": _not_image(path)})
                else:
                    images.append(path)
    root = Path(os.path.commonpath(anchors))
    unique = []
    for f in unique_files(images):  # a file named twice (`photos/ photos/a.jpg`) is enhanced once
        if any(part.startswith(".") for part in Path(os.path.abspath(f)).relative_to(root).parts):
            skipped.append({"file": str(f), "reason": "hidden (a name in its path starts with a dot)"})
        else:
            unique.append(f)
    if not unique:
        listed = "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise Img2ImgError(f"no image to enhance (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
                           + (f"; skipped {len(skipped)}: {listed}{more}" if skipped else ""))
    return Inputs(unique, root, skipped)


def output_path(src: Path, out_dir: Path, fmt: str, root: Path | None = None) -> Path:
    """Where the enhanced `src` goes: `out_dir/REL/STEM.enhanced.EXT`, REL being `src`'s folder
    relative to `root` (none without a root)."""
    name = f"{src.stem}.enhanced.{EXTENSIONS.get(fmt, fmt)}"
    if root is None:
        return out_dir / name
    rel = Path(os.path.abspath(src)).relative_to(root).parent
    return out_dir / rel / name


def check_outputs(files: list[Path], out_dir: Path, fmt: str, root: Path | None = None) -> None:
    """Raises Img2ImgError when two inputs would write the same output file (`x.jpg` and `x.png`
    in one folder, or `a/x.jpg b/x.jpg` without a common root: both `x.enhanced.png`), naming
    them, before anything is sent."""
    seen: dict[Path, Path] = {}
    for src in files:
        dest = output_path(src, out_dir, fmt, root)
        if dest in seen and seen[dest].resolve() != src.resolve():
            raise Img2ImgError(f"{seen[dest]} and {src} would both be written to {dest}; "
                               "rename one, or enhance them into different --out folders")
        seen[dest] = src


def unique_files(files: list[Path]) -> list[Path]:
    """`files` without repeats of the same file (by resolved path), first mention kept, in order."""
    seen: set[Path] = set()
    out = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            out.append(f)
    return out
