"""Which files a scan sees: ignore files, hidden files, OS junk, --exclude, symlinks."""

import os

from conftest import write_files

from recall_cli.index.scan import ScanOptions, scan_roots


def seen(root, **options) -> set[str]:
    report = scan_roots([str(root)], ScanOptions(**options))
    return {os.path.relpath(entry.path, root) for entry in report.files}


def make_tree(root):
    write_files(
        root,
        {
            "keep.md": "kept",
            "notes/a.txt": "kept",
            ".gitignore": "build/\n*.tmp\n",
            "build/out.txt": "ignored by .gitignore dir rule",
            "scratch.tmp": "ignored by .gitignore glob",
            "logs/.ignore": "*.log\n!important.log\n",
            "logs/debug.log": "ignored by nested .ignore",
            "logs/important.log": "re-included by negation",
            "drafts/.recallignore": "secret*\n",
            "drafts/secret-plan.md": "ignored by .recallignore",
            "drafts/public.md": "kept",
            ".hidden.md": "hidden file",
            ".config/settings.md": "hidden dir",
            ".DS_Store": "junk",
            "._keep.md": "mac resource fork junk",
            "node_modules/pkg/readme.md": "junk dir",
            "@eaDir/thumb.txt": "synology junk",
        },
    )


def test_ignore_files_hidden_and_junk_are_skipped(tmp_path):
    make_tree(tmp_path)
    assert seen(tmp_path) == {"keep.md", "notes/a.txt", "logs/important.log", "drafts/public.md"}


def test_hidden_flag_includes_dotfiles_but_not_junk(tmp_path):
    make_tree(tmp_path)
    files = seen(tmp_path, hidden=True)
    assert {".hidden.md", ".config/settings.md"} <= files
    assert ".DS_Store" not in files and "node_modules/pkg/readme.md" not in files
    assert "build/out.txt" not in files  # ignore files still apply


def test_no_ignore_disables_ignore_files_and_junk_list(tmp_path):
    make_tree(tmp_path)
    files = seen(tmp_path, no_ignore=True)
    assert {
        "build/out.txt",
        "scratch.tmp",
        "logs/debug.log",
        "drafts/secret-plan.md",
        "node_modules/pkg/readme.md",
        "@eaDir/thumb.txt",
    } <= files
    assert ".hidden.md" not in files  # hidden is a separate switch


def test_exclude_globs(tmp_path):
    make_tree(tmp_path)
    assert seen(tmp_path, excludes=("notes/", "*.log")) == {"keep.md", "drafts/public.md"}


def test_symlinks_never_lead_out_of_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_files(root, {"inside.md": "in", "sub/real.md": "real"})
    write_files(outside, {"secret.md": "outside the root"})
    os.symlink(outside / "secret.md", root / "link-out.md")
    os.symlink(outside, root / "dir-out")
    os.symlink(root / "sub", root / "loop")  # a directory link inside the root: not descended
    os.symlink(root / "inside.md", root / "alias.md")  # a file link inside the root: kept
    os.symlink(root / "missing.md", root / "broken.md")
    report = scan_roots([str(root)])
    files = {os.path.relpath(entry.path, root) for entry in report.files}
    assert files == {"inside.md", "sub/real.md", "alias.md"}
    assert [(os.path.basename(path), reason) for path, reason in report.problems] == [("broken.md", "broken symlink")]


def test_follow_enters_links_out_of_the_root_once_and_cuts_loops(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_files(root, {"inside.md": "in"})
    write_files(outside, {"secret.md": "outside the root", "deeper/more.md": "further out"})
    os.symlink(outside / "secret.md", root / "link-out.md")
    os.symlink(outside, root / "dir-out")
    os.symlink(outside, root / "dir-out-again")  # a second link to the same target: walked once
    os.symlink(outside, outside / "deeper" / "back-up")  # a cycle out there
    os.symlink(root, outside / "back-in")  # a link back into the root: reached anyway, not twice
    files = seen(root, follow=True)
    assert files == {"inside.md", "link-out.md", "dir-out/secret.md", "dir-out/deeper/more.md"}
    assert seen(root) == {"inside.md"}  # without --follow nothing outside is read


def test_scan_reports_size_and_mtime(tmp_path):
    write_files(tmp_path, {"a.md": "12345"})
    (entry,) = scan_roots([str(tmp_path)]).files
    assert entry.size == 5 and entry.mtime_ns == os.stat(tmp_path / "a.md").st_mtime_ns
    assert entry.root == os.path.realpath(tmp_path)
