"""hack/cluster/k8s_replaces.py: the replace lines of the wrapper module that builds Kubernetes."""

from __future__ import annotations

from types import ModuleType

import pytest

GO_MOD = """module k8s.io/kubernetes

go 1.26.0

require k8s.io/api v0.0.0 // indirect

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\t// a comment line
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // trailing comment
\tgithub.com/example/fork => github.com/example/fork v1.2.3
)

replace k8s.io/kubectl => ./staging/src/k8s.io/kubectl
"""


@pytest.fixture
def k8s_replaces(hack_script) -> ModuleType:
    return hack_script("k8s_replaces")


def test_staging_replaces_point_at_the_published_version_others_are_copied(k8s_replaces):
    assert k8s_replaces.wrapper_replaces(GO_MOD, "v0.36.3") == [
        "replace k8s.io/api => k8s.io/api v0.36.3",
        "replace k8s.io/client-go => k8s.io/client-go v0.36.3",
        "replace github.com/example/fork => github.com/example/fork v1.2.3",
        "replace k8s.io/kubectl => k8s.io/kubectl v0.36.3",
    ]


def test_a_local_replace_outside_staging_is_refused(k8s_replaces):
    with pytest.raises(ValueError, match=r"unexpected local replace .*: k8s\.io/x => \.\./x"):
        k8s_replaces.wrapper_replaces("replace k8s.io/x => ../x\n", "v0.36.3")


def test_main_prints_one_line_each_and_exits_with_the_reason(k8s_replaces, tmp_path, capsys):
    gomod = tmp_path / "go.mod"
    gomod.write_text(GO_MOD)
    k8s_replaces.main([str(gomod), "v0.1.0"])
    assert capsys.readouterr().out.splitlines()[0] == "replace k8s.io/api => k8s.io/api v0.1.0"
    gomod.write_text("replace k8s.io/x => ./x\n")
    with pytest.raises(SystemExit, match="unexpected local replace"):
        k8s_replaces.main([str(gomod), "v0.1.0"])
