"""The documentation: every relative link between tracked Markdown files resolves to a tracked file (and to a
heading of it when it names one), nothing points outside the repository, and the README stays short."""

from __future__ import annotations

import posixpath
import re
import subprocess

import pytest

from models import spec

README_MAX_LINES = 200
FENCE = re.compile(r"^ *(```|~~~).*?^ *\1 *$", flags=re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#* *$", flags=re.M)


def tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=spec.ROOT, capture_output=True, check=True)
    return {p for p in out.stdout.decode().split("\0") if p}


def docs(files: set[str]) -> list[str]:
    """The project's Markdown, not the fixtures of generated reports under tests/."""
    return sorted(p for p in files if p.endswith(".md") and not p.startswith("tests/"))


def prose(text: str) -> str:
    """Markdown without code: links are only links outside code blocks and inline code."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: str) -> list[str]:
    return [t for t in LINK.findall(prose((spec.ROOT / path).read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.fixture(scope="module")
def files() -> set[str]:
    return tracked()


def test_the_docs_are_found(files):
    found = docs(files)
    for name in ("README.md", "export/README.md", "serving/README.md", "clients/README.md", "perf/README.md",
                 "deploy/README.md", "RELIABILITY.md", "docs/design.md", "docs/gpu.md"):  # fmt: skip
        assert name in found, f"{name} is not tracked"
    readme_links = {posixpath.normpath(t.split("#")[0]) for t in links("README.md")}
    for name in found:
        if name != "README.md":
            assert name in readme_links, f"README.md does not link {name}"


def test_every_relative_link_resolves_to_a_tracked_file_and_heading(files):
    dirs = set()
    for p in files:
        while p := posixpath.dirname(p):
            dirs.add(p)
    broken = []
    for path in docs(files):
        for target in links(path):
            file, _, anchor = target.partition("#")
            where = posixpath.normpath(posixpath.join(posixpath.dirname(path), file)) if file else path
            if where.startswith("../") or where == ".." or posixpath.isabs(where):
                broken.append(f"{path}: {target} points outside the repository")
            elif where not in files and where not in dirs:
                broken.append(f"{path}: {target} is not a tracked file")
            elif anchor and where.endswith(".md") and anchor not in anchors((spec.ROOT / where).read_text()):
                broken.append(f"{path}: {target} names no heading of {where}")
    assert not broken, "\n".join(broken)


def test_the_anchor_rule_is_githubs():
    text = "# A: b, c\n## `make perf` (two)\n## Same\n## Same\n```\n# not a heading\n```\n"
    assert anchors(text) == {"a-b-c", "make-perf-two", "same", "same-1"}


def test_no_doc_points_outside_the_repository(files):
    outside = []
    for path in docs(files):
        for n, line in enumerate((spec.ROOT / path).read_text().splitlines(), 1):
            if re.search(r"\.\./shared|(^|[\s`(\"'])/(work|home|root)/", line):
                outside.append(f"{path}:{n}: {line.strip()}")
    assert not outside, "\n".join(outside)


def test_the_readme_is_short():
    lines = (spec.ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail next to its code"
