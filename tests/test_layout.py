"""The house's rooms and the one way imports run between them (read from the source, every file of every
package, imports inside functions included):

- the core (``pipeline/*.py``, ``pipeline/presets``) imports only the core;
- a service (``pipeline/collector``, ``pipeline/console``) imports the core and itself, never another
  service, the CLI, the tooling or the Celery shells;
- the CLI (``pipeline/cli``) imports the core and starts the services, never the tooling or the shells;
- the Celery shells (``tasks/``) import the core only;
- the tooling (``pipeline/local``) may use anything, and nothing of the product imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("collector", "console")


def room_of(path: Path) -> str:
    """``core``, ``cli``, a service's name, ``local`` or ``tasks`` for a source file."""
    parts = path.relative_to(ROOT).parts
    if parts[0] == "tasks":
        return "tasks"
    if parts[1] == "__main__.py":  # python -m pipeline: the CLI's other door
        return "cli"
    if len(parts) == 2 or parts[1] == "presets":
        return "core"
    return parts[1]


def target_room(module: str) -> str | None:
    """The room an imported module lives in (None: not ours)."""
    parts = module.split(".")
    if parts[0] == "tasks":
        return "tasks"
    if parts[0] != "pipeline":
        return None
    if len(parts) == 1:
        return "core"
    return parts[1] if parts[1] in (*SERVICES, "cli", "local") else "core"


ALLOWED = {
    "core": {"core"},
    "tasks": {"core", "tasks"},
    "cli": {"core", "cli", *SERVICES},
    **{service: {"core", service} for service in SERVICES},
}


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path.relative_to(ROOT)}: relative import; name the module in full")
    return found


def sources() -> list[Path]:
    return sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")])


def test_every_room_is_read() -> None:
    rooms = {room_of(p) for p in sources()}
    assert rooms == {"core", "cli", "local", "tasks", *SERVICES}
    assert len([p for p in sources() if room_of(p) == "console"]) >= 5  # the walk goes into packages


@pytest.mark.parametrize(
    "path", [p for p in sources() if room_of(p) != "local"], ids=lambda p: str(p.relative_to(ROOT))
)
def test_imports_run_one_way(path: Path) -> None:
    room = room_of(path)
    wrong = {m for m in imports(path) if (to := target_room(m)) is not None and to not in ALLOWED[room]}
    assert not wrong, f"{path.relative_to(ROOT)} ({room}) imports {sorted(wrong)}"


def test_the_check_catches_a_service_importing_another(tmp_path: Path) -> None:
    planted = tmp_path / "x.py"
    planted.write_text(
        "from pipeline.collector.core import Collector\n"
        "def f():\n    import pipeline.local.emulator\n    from pipeline.cli import registry\n"
    )
    found = imports(planted)
    wrong = {m for m in found if (to := target_room(m)) is not None and to not in ALLOWED["console"]}
    assert {"pipeline.collector.core", "pipeline.local.emulator", "pipeline.cli"} <= wrong
