"""hack/images/image_inputs.py: the build context files a Dockerfile reads, which the inputs hash covers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def image_inputs(hack_script) -> ModuleType:
    return hack_script("image_inputs")


def write(root: Path, rel: str, text: str = "x") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_sources_are_copy_add_and_bind_mounts_from_the_context(image_inputs):
    dockerfile = (
        "FROM base\n"
        "COPY --chown=1:1 pyproject.toml README.md /src/\n"
        "ADD data.tar /opt/\n"
        "COPY --from=builder /out /out\n"
        "COPY ops \\\n  /srv/ops\n"
        "RUN --mount=type=bind,source=hack/req.py,target=/r.py \\\n"
        "    --mount=type=cache,target=/root/.cache/pip \\\n"
        "    --mount=source=tools,target=/t \\\n"
        "    --mount=type=bind,from=builder,source=/bin/x,target=/x true\n"
    )
    assert image_inputs.context_sources(dockerfile) == {
        "pyproject.toml",
        "README.md",
        "data.tar",
        "ops",
        "hack/req.py",
        "tools",
    }


@pytest.mark.parametrize(
    ("rel", "ignored"),
    [
        ("pkg/__pycache__", True),  # **/ pattern: any component
        ("pkg/sub/__pycache__/mod.cpython-311.pyc", True),
        ("pkg/mod.pyc", True),  # **/*.py[cod] against the file's own name
        ("pkg/mod.py", False),
        ("models", True),  # a bare name drops that component anywhere, not only at the root
        ("pkg/models/weights.bin", True),
        ("pkg/my_models.py", False),
        (".git/config", True),
        ("zthumb.egg-info/PKG-INFO", True),
    ],
)
def test_dockerignore_matching(image_inputs, rel, ignored):
    patterns = [".git", "**/__pycache__", "**/*.py[cod]", "**/*.egg-info", "models"]
    assert image_inputs.is_ignored(rel, patterns) is ignored


def test_dockerignore_file_skips_comments_and_blank_lines(image_inputs, tmp_path):
    (tmp_path / ".dockerignore").write_text("# why\n\n.git\n  dist  \n")
    assert image_inputs.read_dockerignore(str(tmp_path / ".dockerignore")) == [".git", "dist"]
    assert image_inputs.read_dockerignore(str(tmp_path / "missing")) == []


def test_listing_hashes_each_context_file_once_sorted_and_without_ignored_ones(image_inputs, tmp_path):
    write(tmp_path, ".dockerignore", "**/__pycache__\n**/*.pyc\n")
    write(tmp_path, "images/app/Dockerfile", "FROM b\nCOPY src /app/src\nCOPY src/a.py ./README.md /app/\n")
    write(tmp_path, "README.md", "readme")
    write(tmp_path, "src/a.py", "a")
    write(tmp_path, "src/pkg/b.py", "b")
    write(tmp_path, "src/pkg/b.pyc", "compiled")
    write(tmp_path, "src/__pycache__/a.cpython-311.pyc", "compiled")
    lines = image_inputs.listing(str(tmp_path), "images/app/Dockerfile")
    sha = {
        name: hashlib.sha256(text.encode()).hexdigest()
        for name, text in [("a", "a"), ("b", "b"), ("r", "readme")]
    }
    assert lines == [f"{sha['r']} README.md", f"{sha['a']} src/a.py", f"{sha['b']} src/pkg/b.py"]


def test_a_missing_context_path_names_the_dockerfile(image_inputs, tmp_path):
    write(tmp_path, "Dockerfile", "FROM b\nCOPY nowhere /x\n")
    with pytest.raises(SystemExit, match=r"Dockerfile: build context path 'nowhere' does not exist"):
        image_inputs.context_files(str(tmp_path), "Dockerfile")


def test_main_prints_the_listing(image_inputs, tmp_path, capsys):
    write(tmp_path, "Dockerfile", "FROM b\nCOPY f /f\n")
    write(tmp_path, "f", "content")
    image_inputs.main([str(tmp_path), "Dockerfile"])
    assert capsys.readouterr().out == f"{hashlib.sha256(b'content').hexdigest()} f\n"
