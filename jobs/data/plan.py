"""Planning an ingest: the options, and the deterministic list of rows (file, crop, copy, seed)
cut into shards (`plan_shards`), for the source layouts `img2img data ingest` accepts. Nothing
here reads an image or writes to the store."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from cluster.errors import Img2ImgError
from jobs.data.sources import SourceFile
from registry.manifest import PAIRED_KINDS
from translator import degrade

DEFAULT_DEGRADE = "gaussian:1.5"
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ALIGNED_LAYOUTS = ("side-by-side A|B images (width twice the height) in any folders; "
                   "A/ + B/ folders holding files of the same names; "
                   "LR/ + HR/ folders of super-resolution pairs (HR N times the LR size) holding files of the same names; "
                   "trainA/ + trainB/ (optionally testA/ + testB/ for validation) holding files of the same names")
# (input folder, target folder, split) of the aligned folder layouts, lower-cased
PAIR_FOLDERS = (("a", "b", "train"), ("traina", "trainb", "train"), ("testa", "testb", "val"),
                ("vala", "valb", "val"), ("lr", "hr", "train"))
MAX_SCALE = degrade.MAX_DOWN


@dataclass
class IngestOptions:
    name: str
    kind: str = "synth"  # synth | aligned | unaligned
    degrade: str | None = None  # synth only; None -> DEFAULT_DEGRADE
    copies: int = 1
    direction: str = "AtoB"
    size: int | None = 256
    crops: int = 0
    val_fraction: float = 0.1
    seed: int = 0
    shard_rows: int = 256
    source_label: str | None = None  # what the manifest records as the source, when not the path itself
    # target size / input size. synth: the spec's (`degrade.scale_of`); LR/ + HR/ folders: given, or
    # the first pair's ratio (`jobs.data.ingest.prepare` settles it); 1 for every other layout.
    scale: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "synth" and self.degrade is None:
            self.degrade = DEFAULT_DEGRADE

    def validate(self) -> None:
        if self.kind not in PAIRED_KINDS:
            raise Img2ImgError(f"unknown kind {self.kind!r}: use synth, aligned or unaligned")
        if self.kind == "synth":
            if not self.degrade:
                raise Img2ImgError("--kind synth needs --degrade SPEC, e.g. gaussian:1.5")
            degrade.parse(self.degrade)
        elif self.degrade is not None:
            raise Img2ImgError(f"--degrade applies to --kind synth only: --kind {self.kind} pairs come from the "
                               "files themselves; drop --degrade")
        if self.direction not in ("AtoB", "BtoA"):
            raise Img2ImgError("--direction must be AtoB or BtoA")
        if self.direction == "BtoA" and self.kind != "aligned":
            raise Img2ImgError(f"--direction applies to --kind aligned only (got --kind {self.kind}); drop it")
        if self.copies != 1 and self.kind != "synth":
            raise Img2ImgError(f"--copies applies to --kind synth only (got --kind {self.kind}); drop it")
        if not 0 <= self.val_fraction < 1:
            raise Img2ImgError(f"--val-fraction must be at least 0 and below 1 (got {self.val_fraction})")
        for flag, value, low in (("--copies", self.copies, 1), ("--shard-rows", self.shard_rows, 1),
                                 ("--crops", self.crops, 0)):
            if value < low:
                raise Img2ImgError(f"{flag} must be at least {low} (got {value})")
        if self.scale is not None and not 1 <= self.scale <= MAX_SCALE:
            raise Img2ImgError(f"--scale must be a whole number from 1 to {MAX_SCALE} (got {self.scale})")
        if self.kind == "synth":
            spec_scale = degrade.scale_of(self.degrade)
            if self.scale is not None and self.scale != spec_scale:
                raise Img2ImgError(f"--scale {self.scale} does not match --degrade {self.degrade!r}, whose down:N "
                                   f"steps make {spec_scale}x pairs; drop --scale (the spec sets it)")
            if spec_scale > 1 and self.size is not None and self.size % spec_scale:
                raise Img2ImgError(f"--size {self.size} is the high-resolution crop: with a {spec_scale}x "
                                   f"degradation it must be a multiple of {spec_scale} (e.g. "
                                   f"--size {self.size - self.size % spec_scale or spec_scale})")
        elif self.kind == "unaligned" and self.scale not in (None, 1):
            raise Img2ImgError("--scale applies to --kind synth and LR/ + HR/ folders only; drop it")
        if self.size is not None and self.size < 8:
            raise Img2ImgError(f"--size must be at least 8 pixels, or 0 to keep the size (got {self.size})")
        if self.size is None and self.crops:  # random crops of the whole image would all be the whole image
            raise Img2ImgError(f"--crops {self.crops} cuts random SIZE x SIZE crops, so it needs a --size above 0 "
                               "(--size 0 keeps each whole image, one row a photo)")
        if not NAME_RULE.fullmatch(self.name or ""):
            raise Img2ImgError(f"bad dataset name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                               "starting with a letter or digit")


@dataclass
class Row:
    key: str
    files: tuple[SourceFile, ...]  # one file, or (A, B) for aligned folders
    crop: int = 0
    copy: int = 0
    domain: str | None = None


@dataclass
class ShardPlan:
    split: str
    index: int
    rows: list[Row]
    domain: str | None = None
    version: str = ""  # set by `run`: keeps a new dataset's shard names apart from the one it replaces

    @property
    def path(self) -> str:
        stem = f"{self.domain}-{self.index:05d}" if self.domain else f"shard-{self.index:05d}"
        return f"{self.split}/{stem}.{self.version}.parquet" if self.version else f"{self.split}/{stem}.parquet"

    @property
    def marker(self) -> str:
        """The progress marker's key relative to the dataset prefix."""
        return f"_ingest/{self.path.replace('/', '-')}.json"


def stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


# ---- planning ---------------------------------------------------------------------------------
def _split_keys(keys: list[str], fraction: float, seed: int) -> set[str]:
    """The keys that go to validation: a seeded choice of whole source files (no leakage)."""
    if fraction <= 0 or len(keys) < 2:
        return set()
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    return set(order[: max(1, round(len(keys) * fraction))])


def _top(f: SourceFile) -> str:
    return f.key.split("/")[0].lower() if "/" in f.key else ""


def _aligned_folders(files: list[SourceFile]) -> tuple[dict[str, tuple[str, tuple]], list[dict[str, str]]] | None:
    """Aligned pairs from A/+B/ or trainA/+trainB/ (+ testA/+testB/) folders, matched by file
    name -> ({name: (split, (input file, target file))}, skips), or None when the source has
    none of those folders (side-by-side A|B images)."""
    tops = {_top(f) for f in files}
    present = [p for p in PAIR_FOLDERS if p[0] in tops or p[1] in tops]
    if not present:
        return None
    shown = {_top(f): f.key.split("/")[0] for f in files}  # folder names as the user spelled them
    for a, b, _ in present:
        if a not in tops or b not in tops:
            have, missing = (a, b) if a in tops else (b, a)
            missing = missing[:-1] + missing[-1].upper()  # traina -> trainA
            raise Img2ImgError(f"--kind aligned: found folder {shown[have]}/ but no {missing}/ beside it; "
                               f"accepted layouts: {ALIGNED_LAYOUTS}")
    if not any(split == "train" for *_, split in present):
        raise Img2ImgError(f"--kind aligned: found only test/val folders; accepted layouts: {ALIGNED_LAYOUTS}")
    groups: dict[str, tuple[str, tuple]] = {}
    skipped = []
    folders = {x for a, b, _ in present for x in (a, b)}
    for f in files:
        if _top(f) not in folders:
            skipped.append({"file": f.key, "reason": "outside the paired folders "
                                                     f"({', '.join(sorted(shown[x] + '/' for x in folders))})"})
    for a, b, split in present:
        side_a = {f.key.split("/", 1)[1]: f for f in files if _top(f) == a}
        side_b = {f.key.split("/", 1)[1]: f for f in files if _top(f) == b}
        for n in sorted(set(side_a) ^ set(side_b)):
            f, other = (side_a[n], b) if n in side_a else (side_b[n], a)
            skipped.append({"file": f.key, "reason": f"no file of the same name in {shown[other]}/"})
        for n in sorted(set(side_a) & set(side_b)):  # matched by file name, never by position
            groups[f"{side_a[n].key.split('/')[0]}/{n}"] = (split, (side_a[n], side_b[n]))
    if not groups:
        raise Img2ImgError("--kind aligned: the paired folders share no file names (pairs are matched by name); "
                           f"accepted layouts: {ALIGNED_LAYOUTS}")
    return groups, skipped


def _unaligned_domains(files: list[SourceFile]) -> dict[str, tuple[list[SourceFile], list[SourceFile]]]:
    """domain ('a'/'b') -> (train files, test files) from trainA/ trainB/ [testA/ testB/]."""
    out = {}
    for domain in ("a", "b"):
        train = [f for f in files if _top(f) == f"train{domain}"]
        test = [f for f in files if _top(f) == f"test{domain}"]
        if not train:
            found = sorted({f.key.split("/")[0] + "/" for f in files if "/" in f.key}) or ["no folders"]
            raise Img2ImgError(f"--kind unaligned needs folders trainA/ and trainB/ (optionally testA/ and "
                               f"testB/ for validation); there is no train{domain.upper()}/ (found: {', '.join(found)})")
        out[domain] = (train, test)
    return out


def plan_rows(files: list[SourceFile], opts: IngestOptions) -> dict[tuple[str, str | None], list[Row]]:
    """(split, domain) -> rows, in a deterministic order."""
    out: dict[tuple[str, str | None], list[Row]] = {}
    n_crops = max(1, opts.crops)
    if opts.kind == "unaligned":
        for domain, (train, test) in _unaligned_domains(files).items():
            val_keys = set() if test else _split_keys([f.key for f in train], opts.val_fraction, opts.seed)
            for f in train + test:
                split = "val" if f in test or f.key in val_keys else "train"
                for c in range(n_crops):
                    out.setdefault((split, domain), []).append(Row(f"{f.key}#{c}", (f,), c, 0, domain))
        return out
    folders = _aligned_folders(files) if opts.kind == "aligned" else None
    if folders is not None:
        named = folders[0]
        groups = {k: fs for k, (_, fs) in named.items()}
        held_out = {k for k, (split, _) in named.items() if split == "val"}
        val_keys = held_out or _split_keys(list(groups), opts.val_fraction, opts.seed)
    else:
        groups = {f.key: (f,) for f in files}
        val_keys = _split_keys(list(groups), opts.val_fraction, opts.seed)
    copies = opts.copies if opts.kind == "synth" else 1
    for key, fs in groups.items():
        split = "val" if key in val_keys else "train"
        for c in range(n_crops):
            for k in range(copies):
                out.setdefault((split, None), []).append(Row(f"{key}#{c}#{k}", fs, c, k))
    return out


def super_resolution(files: list[SourceFile], opts: IngestOptions) -> bool:
    """True for an aligned ingest from LR/ + HR/ folders (super-resolution pairs)."""
    return opts.kind == "aligned" and {"lr", "hr"} <= {_top(f) for f in files}


def unmatched(files: list[SourceFile], opts: IngestOptions) -> list[dict[str, str]]:
    """Files the layout leaves out, each with the reason (no partner, outside the folders)."""
    if opts.kind == "aligned":
        folders = _aligned_folders(files)
        return folders[1] if folders else []
    if opts.kind == "unaligned":
        return [{"file": f.key, "reason": "outside trainA/, trainB/, testA/, testB/"} for f in files
                if _top(f) not in ("traina", "trainb", "testa", "testb")]
    return []


def plan_shards(files: list[SourceFile], opts: IngestOptions) -> list[ShardPlan]:
    shards = []
    for (split, domain), rows in sorted(plan_rows(files, opts).items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        for i in range(0, len(rows), opts.shard_rows):
            shards.append(ShardPlan(split, i // opts.shard_rows, rows[i:i + opts.shard_rows], domain))
    return shards
