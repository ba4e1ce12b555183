"""Print the replace directives a wrapper module of k8s.io/kubernetes needs.

    python3 hack/cluster/k8s_replaces.py PATH/TO/kubernetes/go.mod STAGING_VERSION

k8s.io/kubernetes replaces every staging module (k8s.io/api, client-go, ...) with
./staging/src/k8s.io/<name>; a module that requires it must state those replaces again,
pointing at the published v0.x.y versions. Generated from the release's own go.mod
(hack/cluster/build-k8s.sh), so the list cannot drift from the release: staging replaces are rewritten,
other replaces are copied verbatim, and any other local (./ or ../) replace is refused.
Standard library only: it runs with the host's python3.
"""

from __future__ import annotations

import re
import sys

_STAGING = re.compile(r"\./staging/src/(k8s\.io/[^\s]+)")


def replace_entries(gomod_text: str) -> list[str]:
    """The ``old => new`` part of every replace directive, single-line or in a block."""
    entries: list[str] = []
    in_block = False
    for raw in gomod_text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if in_block:
            if line == ")":
                in_block = False
            else:
                entries.append(line)
        elif line == "replace (":
            in_block = True
        elif line.startswith("replace "):
            entries.append(line[len("replace ") :].strip())
    return entries


def wrapper_replaces(gomod_text: str, staging_version: str) -> list[str]:
    """The wrapper module's replace lines. Raises ValueError on a local replace that is not a
    staging module (the wrapper could not resolve it)."""
    lines = []
    for entry in replace_entries(gomod_text):
        old, new = (side.strip() for side in entry.split("=>", 1))
        staging = _STAGING.fullmatch(new)
        if staging:
            lines.append(f"replace {old} => {staging.group(1)} {staging_version}")
        elif new.startswith(("./", "../")):
            raise ValueError(f"unexpected local replace in k8s.io/kubernetes go.mod: {entry}")
        else:
            lines.append(f"replace {entry}")
    return lines


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: k8s_replaces.py GO_MOD STAGING_VERSION")
    path, staging_version = argv
    with open(path, encoding="utf-8") as gomod:
        text = gomod.read()
    try:
        lines = wrapper_replaces(text, staging_version)
    except ValueError as exc:
        sys.exit(str(exc))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
