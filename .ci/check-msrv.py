#!/usr/bin/env python3
"""Fails when a locked dependency needs a newer Rust than the workspace's `rust-version`.

Reads `cargo metadata --locked` (every package of Cargo.lock, for every platform) and compares
each registry package's declared `rust-version` with the workspace's. Packages that declare
none are listed but pass. This is the check an old toolchain cannot run here: only the
installed stable and nightly are available, so the claim is held to what the dependencies
themselves declare, and clippy's `incompatible_msrv` lint holds our own code to it.

Usage: .ci/check-msrv.py  (exits 1 and lists every offending package)
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def version_key(text):
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        manifest = f.read()
    claimed = re.search(r'^rust-version\s*=\s*"([^"]+)"', manifest, re.M)
    if not claimed:
        print("check-msrv: no rust-version in the workspace manifest")
        return 1
    msrv = claimed.group(1)
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    too_new, undeclared, checked = [], [], 0
    for package in meta["packages"]:
        if package["source"] is None:
            continue  # a workspace member: its rust-version is ours
        checked += 1
        needs = package.get("rust_version")
        if needs is None:
            undeclared.append(f"{package['name']} {package['version']}")
        elif version_key(needs) > version_key(msrv):
            too_new.append(f"{package['name']} {package['version']} needs Rust {needs}")
    for line in sorted(too_new):
        print(f"check-msrv: {line}, above the claimed {msrv}")
    print(
        f"check-msrv: {checked} locked packages, {len(too_new)} above rust-version {msrv}, "
        f"{len(undeclared)} declare none"
    )
    return 1 if too_new else 0


if __name__ == "__main__":
    sys.exit(main())
