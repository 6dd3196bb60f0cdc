#!/usr/bin/env python3
"""Fails when a link or file reference in the repository does not resolve inside it.

Checked, in every tracked Markdown file and in the doc comments of every tracked Rust file:
- a relative Markdown link or image must name an existing file or directory inside the
  repository (Rust doc comments may not use relative file links at all: they break on
  docs.rs, so they must use the repository URL);
- a link to this repository on GitHub (REPO_URL/blob/main/<path> or /tree/main/<path>) must
  name an existing path;
- a `*.md` file named anywhere in those texts must exist somewhere in the repository;
- nothing may refer outside the repository: no relative path (link or plain text) that
  climbs above the root, and no absolute path into the directory that holds the checkout.

Usage: .ci/check-links.py [repository root]  (default: this script's repository; exits 1 and
lists every problem)
"""
import os
import re
import subprocess
import sys

REPO_URL = "https://github.com/usageflow/usageflow-socket"
ROOT = subprocess.run(
    ["git", "rev-parse", "--show-toplevel"],
    cwd=sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)),
    capture_output=True,
    text=True,
    check=True,
).stdout.strip()

INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
MD_NAME = re.compile(r"(?<![\w./-])([\w./-]*[\w-]\.md)\b")
# A relative path that climbs (`../x`, `../../x/y`), in a link or in plain text.
CLIMBING_PATH = re.compile(r"(?<![\w./-])((?:\.\./)+[\w.-][\w./-]*)")
# The directory that holds the checkout: an absolute path into it names files beside the
# repository (skipped when the checkout sits at the filesystem's root).
PARENT_DIR = os.path.dirname(os.path.realpath(ROOT))
REPO_LINK = re.compile(re.escape(REPO_URL) + r"/(?:blob|tree)/main/([^)\s#>\"']+)")


def tracked_files():
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(p for p in out.split("\0") if p and os.path.exists(os.path.join(ROOT, p)))


def text_lines(path):
    """The checked lines of a file: Markdown outside code fences; Rust doc comments."""
    with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    in_fence = False
    for number, line in enumerate(lines, 1):
        if path.endswith(".rs"):
            stripped = line.lstrip()
            if not (stripped.startswith("///") or stripped.startswith("//!")):
                continue
            line = stripped[3:]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, line


def inside_root(path):
    root = os.path.realpath(ROOT)
    return os.path.realpath(path) == root or os.path.realpath(path).startswith(root + os.sep)


def main():
    files = tracked_files()
    md_names = {os.path.basename(p) for p in files if p.endswith(".md")}
    problems = []
    checked_links = 0
    for path in files:
        is_md = path.endswith(".md")
        is_rs = path.endswith(".rs")
        if not (is_md or is_rs) or path.startswith(("target/", "fuzz/target/")):
            continue
        base = os.path.dirname(os.path.join(ROOT, path))
        for number, line in text_lines(path):
            where = f"{path}:{number}"
            climbs_out = any(
                not inside_root(os.path.normpath(os.path.join(base, m.group(1))))
                for m in CLIMBING_PATH.finditer(line)
            )
            if climbs_out or (PARENT_DIR != os.sep and PARENT_DIR + os.sep in line):
                problems.append(f"{where}: refers outside the repository: {line.strip()}")
            for match in REPO_LINK.finditer(line):
                checked_links += 1
                if not os.path.exists(os.path.join(ROOT, match.group(1))):
                    problems.append(f"{where}: {match.group(0)} names no file of the repository")
            for match in MD_NAME.finditer(line):
                name = os.path.basename(match.group(1))
                if name not in md_names:
                    problems.append(f"{where}: mentions {match.group(1)}, which is not in the repository")
            targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
            if is_md:
                targets += [m.group(1) for m in REFERENCE_DEF.finditer(line)]
            for target in targets:
                if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # a URL (checked above when it is ours), or an anchor
                file_part = target.split("#", 1)[0].split("?", 1)[0]
                if is_rs:
                    # Intra-doc links name Rust items (`crate::x`, `Self::y`, `Foo`); a link
                    # with a slash or a file extension is a file link, which docs.rs breaks.
                    if "/" in file_part or re.search(r"\.(md|rs|toml|svg|txt|sh)$", file_part):
                        problems.append(
                            f"{where}: relative file link {target!r} in rustdoc; use {REPO_URL}/blob/main/<path>"
                        )
                    continue
                checked_links += 1
                resolved = os.path.normpath(os.path.join(base, file_part))
                if not inside_root(resolved):
                    problems.append(f"{where}: link {target!r} leaves the repository")
                elif not os.path.exists(resolved):
                    problems.append(f"{where}: link {target!r} names no file")
    for problem in problems:
        print(problem)
    print(f"check-links: {checked_links} links checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
