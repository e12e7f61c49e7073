"""Walk the roots: which files exist, honouring ignore files, hidden files and OS junk.

Ignore files (`.gitignore`, `.ignore`, `.recallignore`) apply to their own directory and below,
with git's semantics (later and deeper rules win, `!` re-includes).  Symlinks are never followed
out of the roots: a symlinked file is kept only if its target lies inside an indexed root, and
symlinked directories are not descended (which also rules out loops).
"""

from __future__ import annotations

import os
import stat as statmod
from dataclasses import dataclass, field
from typing import Iterator

import pathspec

IGNORE_FILES = (".gitignore", ".ignore", ".recallignore")

# Skipped by default: OS and tool litter that is never a person's content.
JUNK_NAMES = {
    ".DS_Store", "@eaDir", ".thumbnails", "System Volume Information", "node_modules", ".git",
    "Thumbs.db", "desktop.ini", "$RECYCLE.BIN", ".Trashes", ".Spotlight-V100", ".fseventsd",
    "__pycache__", ".hg", ".svn",
}
JUNK_PREFIXES = ("._", ".Trash-")


@dataclass(frozen=True)
class ScanOptions:
    hidden: bool = False  # include dotfiles and dot-directories
    no_ignore: bool = False  # disregard ignore files and the junk list
    excludes: tuple[str, ...] = ()  # extra gitignore-style globs, relative to each root


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute path (inside root; symlinks not resolved)
    root: str
    size: int
    mtime_ns: int


@dataclass
class ScanReport:
    files: list[FileEntry] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    ignored: int = 0


def normalize_root(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def is_junk(name: str) -> bool:
    return name in JUNK_NAMES or name.startswith(JUNK_PREFIXES)


class _IgnoreStack:
    """Ignore specs from the root down to the current directory; the deepest decision wins."""

    def __init__(self, layers: list[tuple[str, pathspec.PathSpec]]):
        self.layers = layers

    def push(self, directory: str) -> "_IgnoreStack":
        lines: list[str] = []
        for name in IGNORE_FILES:
            try:
                with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as handle:
                    lines.extend(handle.read().splitlines())
            except OSError:
                continue
        if not lines:
            return self
        return _IgnoreStack(self.layers + [(directory, pathspec.GitIgnoreSpec.from_lines(lines))])

    def ignored(self, path: str, is_dir: bool) -> bool:
        for base, spec in reversed(self.layers):
            relative = os.path.relpath(path, base).replace(os.sep, "/")
            result = spec.check_file(relative + "/" if is_dir else relative)
            if result.include is not None:
                return bool(result.include)
        return False


def scan_roots(roots: list[str], options: ScanOptions = ScanOptions()) -> ScanReport:
    report = ScanReport()
    normalized = [normalize_root(root) for root in roots]
    for root in normalized:
        # --exclude globs are a layer of their own, checked before (and so overriding) ignore files
        excludes = _IgnoreStack([(root, pathspec.GitIgnoreSpec.from_lines(list(options.excludes)))]
                                if options.excludes else [])
        report.files.extend(_walk(root, root, _IgnoreStack([]), excludes, options, normalized, report))
    return report


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _walk(root: str, directory: str, stack: _IgnoreStack, excludes: _IgnoreStack,
          options: ScanOptions, all_roots: list[str], report: ScanReport) -> Iterator[FileEntry]:
    if not options.no_ignore:
        stack = stack.push(directory)
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as error:
        report.problems.append((directory, f"cannot list directory: {error.strerror or error}"))
        return
    for entry in entries:
        name = entry.name
        if name in IGNORE_FILES:
            continue
        if not options.hidden and name.startswith("."):
            report.ignored += 1
            continue
        if not options.no_ignore and is_junk(name):
            report.ignored += 1
            continue
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError as error:
            report.problems.append((entry.path, f"cannot stat: {error.strerror or error}"))
            continue
        if (excludes.layers and excludes.ignored(entry.path, is_dir)) or (
                stack.layers and stack.ignored(entry.path, is_dir)):
            report.ignored += 1
            continue
        if is_dir:
            yield from _walk(root, entry.path, stack, excludes, options, all_roots, report)
            continue
        found = _file_entry(entry, root, is_link, all_roots, report)
        if found is not None:
            yield found


def _file_entry(entry: os.DirEntry, root: str, is_link: bool, all_roots: list[str],
                report: ScanReport) -> FileEntry | None:
    if is_link:
        target = os.path.realpath(entry.path)
        if not _inside(target, all_roots):
            report.ignored += 1  # never follow a link out of the indexed roots
            return None
    try:
        info = os.stat(entry.path)  # follows an allowed link to its target
    except OSError as error:
        reason = "broken symlink" if is_link else f"cannot stat: {error.strerror or error}"
        report.problems.append((entry.path, reason))
        return None
    if not statmod.S_ISREG(info.st_mode):
        if is_link and statmod.S_ISDIR(info.st_mode):
            report.ignored += 1  # directory links are not descended (no loops, no escapes)
        return None
    return FileEntry(path=entry.path, root=root, size=info.st_size, mtime_ns=info.st_mtime_ns)


class PathFilter:
    """The walk's decisions for single paths (watch events): which root a path belongs to, whether
    it is ignored (hidden, junk, --exclude, ignore files of every ancestor), and a walk of one
    subtree with the right inherited ignore rules.  Ignore specs are cached per directory;
    `forget(directory)` drops the cache at and below a directory whose ignore file changed."""

    def __init__(self, roots: list[str], options: ScanOptions = ScanOptions()):
        self.roots = sorted((normalize_root(root) for root in roots), key=len, reverse=True)
        self.options = options
        self._stacks: dict[str, _IgnoreStack] = {}
        self._excludes = {root: _IgnoreStack([(root, pathspec.GitIgnoreSpec.from_lines(list(options.excludes)))]
                                             if options.excludes else []) for root in self.roots}

    def root_of(self, path: str) -> str | None:
        return next((root for root in self.roots if path == root or path.startswith(root.rstrip(os.sep) + os.sep)),
                    None)

    def forget(self, directory: str) -> None:
        prefix = directory.rstrip(os.sep) + os.sep
        for key in [key for key in self._stacks if key == directory or key.startswith(prefix)]:
            del self._stacks[key]

    def _stack(self, directory: str, root: str) -> _IgnoreStack:
        """Ignore rules in force inside `directory` (its own ignore files included)."""
        cached = self._stacks.get(directory)
        if cached is None:
            parent = _IgnoreStack([]) if directory == root else self._stack(os.path.dirname(directory), root)
            cached = parent if self.options.no_ignore else parent.push(directory)
            self._stacks[directory] = cached
        return cached

    def ignored(self, path: str, is_dir: bool) -> bool:
        """True when scan_roots would not reach `path` (or it lies outside every root)."""
        root = self.root_of(path)
        if root is None:
            return True
        if path == root:
            return False
        parts = os.path.relpath(path, root).split(os.sep)
        current, excludes = root, self._excludes[root]
        for depth, name in enumerate(parts):
            last = depth == len(parts) - 1
            child, child_is_dir = os.path.join(current, name), (is_dir if last else True)
            if name in IGNORE_FILES or (not self.options.hidden and name.startswith(".")) or (
                    not self.options.no_ignore and is_junk(name)):
                return True
            stack = self._stack(current, root)
            if (excludes.layers and excludes.ignored(child, child_is_dir)) or (
                    stack.layers and stack.ignored(child, child_is_dir)):
                return True
            current = child
        return False

    def walk(self, directory: str) -> ScanReport:
        """What scan_roots finds under `directory` (a directory inside a root, not ignored)."""
        report = ScanReport()
        root = self.root_of(directory)
        if root is None or self.ignored(directory, True):
            return report
        stack = _IgnoreStack([]) if directory == root else self._stack(os.path.dirname(directory), root)
        report.files.extend(_walk(root, directory, stack, self._excludes[root], self.options, self.roots, report))
        return report

    def file(self, path: str, report: ScanReport) -> FileEntry | None:
        """The entry scan_roots would give for the file at `path` (None: not an indexable file)."""
        root = self.root_of(path)
        if root is None or self.ignored(path, False):
            return None
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if statmod.S_ISDIR(info.st_mode):
            return None
        return _file_entry(_PathOnly(path), root, statmod.S_ISLNK(info.st_mode), self.roots, report)


@dataclass(frozen=True)
class _PathOnly:
    path: str  # what _file_entry reads of an os.DirEntry
