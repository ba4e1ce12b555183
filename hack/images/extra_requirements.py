"""Print the pinned requirements of pyproject.toml extras, one per line (for `pip install -r`).

The image builds read every version from pyproject.toml, so each one is declared once:

    python hack/images/extra_requirements.py pyproject.toml ml     # the torch stack (images/base)
    python hack/images/extra_requirements.py pyproject.toml server --core --exclude ml
                                                                   # the server's own part

Self-references such as "zthumb[ml]" are expanded; extras named by --exclude (and everything
they pull in) are left out; --core adds the project's own dependencies. Standard library only:
it runs in the bare image before pip.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib

_SELF_REF = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*\[([^\]]+)\]\s*$")


def expand(project: dict, extra: str, seen: set[str]) -> list[str]:
    """The requirements of one extra, self-references expanded (each extra at most once)."""
    if extra in seen:
        return []
    seen.add(extra)
    out: list[str] = []
    for req in project["optional-dependencies"][extra]:
        match = _SELF_REF.match(req)
        if match and match.group(1).lower() == project["name"].lower():
            for sub in match.group(2).split(","):
                out += expand(project, sub.strip(), seen)
        else:
            out.append(req)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("extras", nargs="+")
    parser.add_argument("--exclude", action="append", default=[], help="extra to leave out")
    parser.add_argument("--core", action="store_true", help="add [project] dependencies")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    excluded: set[str] = set()
    skip = {req for extra in args.exclude for req in expand(project, extra, excluded)}
    seen: set[str] = set(excluded)
    lines: list[str] = list(project.get("dependencies", [])) if args.core else []
    for extra in args.extras:
        lines += [req for req in expand(project, extra, seen) if req not in skip]
    sys.stdout.write("".join(f"{req}\n" for req in dict.fromkeys(lines)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
