"""Walk the roots: which files exist, honouring ignore files, hidden files and OS junk.

Ignore files (`.gitignore`, `.ignore`, `.recallignore`) apply to their own directory and below,
with git's semantics (later and deeper rules win, `!` re-includes).  Symlinks are never followed
out of the roots: a symlinked file is kept only if its target lies inside an indexed root, and
symlinked directories are not descended (which also rules out loops).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat as statmod
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pathspec

from recall_cli.errors import RecallError, first_line

log = logging.getLogger("recall")

IGNORE_FILES = (".gitignore", ".ignore", ".recallignore")

# Skipped by default: OS and tool litter that is never a person's content.
JUNK_NAMES = {
    ".DS_Store",
    "@eaDir",
    ".thumbnails",
    "System Volume Information",
    "node_modules",
    ".git",
    "Thumbs.db",
    "desktop.ini",
    "$RECYCLE.BIN",
    ".Trashes",
    ".Spotlight-V100",
    ".fseventsd",
    "__pycache__",
    ".hg",
    ".svn",
}
JUNK_PREFIXES = ("._", ".Trash-")


@dataclass(frozen=True)
class ScanOptions:
    hidden: bool = False  # include dotfiles and dot-directories
    no_ignore: bool = False  # disregard ignore files and the junk list
    excludes: tuple[str, ...] = ()  # extra gitignore-style globs, relative to each root
    follow: bool = False  # follow symlinks that lead out of the roots (--follow); loops are cut


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
    followed_dirs: set[str] = field(default_factory=set)  # --follow: link targets already walked


def normalize_root(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def is_junk(name: str) -> bool:
    return name in JUNK_NAMES or name.startswith(JUNK_PREFIXES)


class _IgnoreStack:
    """Ignore specs from the root down to the current directory; the deepest decision wins."""

    def __init__(self, layers: list[tuple[str, pathspec.PathSpec]]):
        self.layers = layers

    def push(self, directory: str) -> _IgnoreStack:
        lines: list[tuple[str, int, str]] = []  # (ignore file, line number, pattern)
        for name in IGNORE_FILES:
            source = os.path.join(directory, name)
            try:
                with open(source, encoding="utf-8", errors="replace") as handle:
                    lines.extend((source, number, line) for number, line in enumerate(handle.read().splitlines(), 1))
            except OSError:
                continue
        if not lines:
            return self
        return _IgnoreStack(self.layers + [(directory, _ignore_spec(lines))])

    def ignored(self, path: str, is_dir: bool) -> bool:
        for base, spec in reversed(self.layers):
            relative = os.path.relpath(path, base).replace(os.sep, "/")
            result = spec.check_file(relative + "/" if is_dir else relative)
            if result.include is not None:
                return bool(result.include)
        return False


# what pathspec raises for a line it cannot compile: `!`, a trailing backslash, `[z-a]`
_BAD_PATTERN = (ValueError, re.error)


def _compile(lines: list[str]) -> pathspec.PathSpec:
    # `[[x]` compiles, with a FutureWarning from `re` that Python would print as two stray lines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return pathspec.GitIgnoreSpec.from_lines(lines)


def _ignore_spec(lines: list[tuple[str, int, str]]) -> pathspec.PathSpec:
    """The spec of an ignore file's lines.  A line that does not compile is skipped with a
    one-line warning (git skips it silently), so one typo in a .gitignore never stops a scan."""
    try:
        return _compile([line for _, _, line in lines])
    except _BAD_PATTERN:
        pass  # rare: find the bad lines one by one
    good = []
    for source, number, line in lines:
        try:
            _compile([line])
        except _BAD_PATTERN as error:
            log.warning("%s:%d: skipped bad ignore pattern %r (%s)", source, number, line, first_line(error))
            continue
        good.append(line)
    return _compile(good)


def _exclude_stack(root: str, excludes: tuple[str, ...]) -> _IgnoreStack:
    """--exclude globs as an ignore layer of the root.  A bad glob is the user's typo on the command
    line: refused in one line rather than skipped."""
    if not excludes:
        return _IgnoreStack([])
    for pattern in excludes:
        try:
            _compile([pattern])
        except _BAD_PATTERN as error:
            raise RecallError(f"bad --exclude pattern {pattern!r}: {first_line(error)}") from None
    return _IgnoreStack([(root, _compile(list(excludes)))])


def scan_roots(roots: list[str], options: ScanOptions = ScanOptions()) -> ScanReport:
    report = ScanReport()
    normalized = [normalize_root(root) for root in roots]
    for root in normalized:
        # --exclude globs are a layer of their own, checked before (and so overriding) ignore files
        excludes = _exclude_stack(root, options.excludes)
        report.files.extend(_walk(root, root, _IgnoreStack([]), excludes, options, normalized, report))
    return report


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _walk(
    root: str,
    directory: str,
    stack: _IgnoreStack,
    excludes: _IgnoreStack,
    options: ScanOptions,
    all_roots: list[str],
    report: ScanReport,
) -> Iterator[FileEntry]:
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
            stack.layers and stack.ignored(entry.path, is_dir)
        ):
            report.ignored += 1
            continue
        if is_dir:
            yield from _walk(root, entry.path, stack, excludes, options, all_roots, report)
            continue
        if is_link and options.follow and _enter_linked_dir(entry.path, all_roots, report):
            yield from _walk(root, entry.path, stack, excludes, options, all_roots, report)
            continue
        found = _file_entry(entry, root, is_link, all_roots, report, options.follow)
        if found is not None:
            yield found


def _enter_linked_dir(path: str, all_roots: list[str], report: ScanReport) -> bool:
    """--follow: walk a directory link whose target lies outside the roots (inside, the walk
    reaches it anyway), once per target, so a link back to an ancestor cannot loop."""
    target = os.path.realpath(path)
    if not os.path.isdir(target) or _inside(target, all_roots) or target in report.followed_dirs:
        return False
    report.followed_dirs.add(target)
    return True


def _file_entry(
    entry: os.DirEntry, root: str, is_link: bool, all_roots: list[str], report: ScanReport, follow: bool = False
) -> FileEntry | None:
    if is_link and not follow:
        target = os.path.realpath(entry.path)
        if not _inside(target, all_roots):
            report.ignored += 1  # never follow a link out of the indexed roots unless asked
            return None
    try:
        info = os.stat(entry.path)  # follows an allowed link to its target
    except OSError as error:
        if error.errno == errno.ELOOP:
            reason = "symlink loop"
        else:
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
        self._excludes = {root: _exclude_stack(root, options.excludes) for root in self.roots}

    def root_of(self, path: str) -> str | None:
        return next(
            (root for root in self.roots if path == root or path.startswith(root.rstrip(os.sep) + os.sep)), None
        )

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
            if (
                name in IGNORE_FILES
                or (not self.options.hidden and name.startswith("."))
                or (not self.options.no_ignore and is_junk(name))
            ):
                return True
            stack = self._stack(current, root)
            if (excludes.layers and excludes.ignored(child, child_is_dir)) or (
                stack.layers and stack.ignored(child, child_is_dir)
            ):
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
        return _file_entry(
            _PathOnly(path), root, statmod.S_ISLNK(info.st_mode), self.roots, report, self.options.follow
        )


@dataclass(frozen=True)
class _PathOnly:
    path: str  # what _file_entry reads of an os.DirEntry
