"""``python -m pipeline.local.lualint``: luacheck on every Lua script as Redis runs it, its ``--! include``
lines expanded (``pipeline.store.SCRIPTS``), so a snippet that reads a local its includer does not define,
or a script that writes a global, fails ``make lint``. The snippets themselves are checked as files, with
the locals they expect declared in ``.luacheckrc``.

Names a snippet defines and an includer leaves unused (``remove_dead`` in a script that only adds dead
letters) are not warnings here; anything else luacheck finds is. Exits with luacheck's status (0: clean).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from pipeline.store import SCRIPTS

_DEFINED = re.compile(r"^local (?:function )?([\w, ]+?)(?: =|\()", re.MULTILINE)


def snippet_names() -> set[str]:
    """Every local a ``lua/lib`` snippet defines."""
    names: set[str] = set()
    for snippet in resources.files("pipeline").joinpath("lua/lib").iterdir():
        if snippet.name.endswith(".lua"):
            for match in _DEFINED.finditer(snippet.read_text("utf-8")):
                names.update(n.strip() for n in match.group(1).split(","))
    return names


def main() -> int:
    luacheck = shutil.which("luacheck")
    if luacheck is None:
        print("luacheck is not installed (Debian: apt-get install lua-check)", file=sys.stderr)
        return 2
    config = Path(__file__).resolve().parents[2] / ".luacheckrc"
    ignore = [f"21[12]/{name}" for name in sorted(snippet_names())]  # unused variable / function
    with tempfile.TemporaryDirectory(prefix="lualint-") as tmp:
        paths = []
        for name, text in sorted(SCRIPTS.items()):
            path = Path(tmp) / f"{name}.lua"
            path.write_text(text, "utf-8")
            paths.append(str(path))
        done = subprocess.run(
            [luacheck, "--config", str(config), "--no-color", "--codes", "--ignore", *ignore, "--", *paths],
            check=False,
            capture_output=True,
            text=True,
        )
    lines = [line for line in done.stdout.splitlines() if not line.startswith("Checking") or "OK" not in line]
    print("\n".join(lines).replace(tmp + "/", "expanded "))
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
