"""Nodes of a chaos run execute the code the run started with (seed 18, reliability.md finding 5).

Seed 18 was invalid because nodes restarted mid-run imported an edited storage/state.py from
the shared working tree (editable install): replicas replayed one Raft log with two versions of
apply() and diverged. The harness now copies the node packages at the first start and runs
every node, restarts included, from that copy. No root needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chaos.cluster import FROZEN_PACKAGES, PROJECT_ROOT, Cluster, freeze_code
from chaos.netns import Network

PROBE = "import node.cli, replication.journal, storage.state; print(storage.state.__file__)"


def _fake_root(root: Path, body: str) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text(body)
    return root


def test_an_edit_after_the_freeze_never_reaches_the_frozen_copy(tmp_path: Path) -> None:
    root = _fake_root(tmp_path / "src", "RULE = 'max of stamps'\n")
    first = freeze_code(tmp_path / "run1", root, ("pkg",))
    (root / "pkg" / "__init__.py").write_text("RULE = 'capped by ticks'\n")  # a colleague edits
    assert (tmp_path / "run1" / "pkg" / "__init__.py").read_text() == "RULE = 'max of stamps'\n"
    second = freeze_code(tmp_path / "run2", root, ("pkg",))
    assert second != first, "the fingerprint must tell two code versions apart"
    assert freeze_code(tmp_path / "run3", root, ("pkg",)) == second, "same code, same print"


def test_a_node_process_imports_the_frozen_copy_not_the_working_tree(tmp_path: Path) -> None:
    cluster = Cluster(Network(1), tmp_path)  # no namespaces are created
    env = {**os.environ, **cluster._frozen_code_env()}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=60)
    loaded = Path(out.stdout.strip())
    assert loaded.is_relative_to(tmp_path / "code"), loaded
    assert not loaded.is_relative_to(PROJECT_ROOT), loaded
    assert len(cluster.code_fingerprint) == 64
    assert (tmp_path / "code-fingerprint").read_text().strip() == cluster.code_fingerprint
    assert sorted(p.name for p in (tmp_path / "code").iterdir()) == sorted(FROZEN_PACKAGES)
    before = cluster.code_fingerprint
    cluster._frozen_code_env()  # a restart: the same copy, not a new one
    assert cluster.code_fingerprint == before
