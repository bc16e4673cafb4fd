"""The CLI's registry and what every verb shares: :func:`verb` registers a verb with its arguments, declared
beside it; :func:`main` parses, runs and turns the pipeline's errors into exit codes; :class:`Context` is
what a verb works on (settings, store, the chosen integration), built once per invocation.

The verb modules (``ingesting``, ``observing``, ``dead_letters``, ``serving``) import this one, never each
other. The local tooling (``pipeline.local``: emulator, demo, run, benchmarks) registers its own verbs
through the ``clevertap_pipeline.verbs`` entry point, so the product never imports the tooling.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from typing import IO, Any

import redis

from pipeline.config import IntegrationConfig, Settings
from pipeline.errors import ConfigError, InputError, QueueFull, UnknownIntegration
from pipeline.saved import load_with_console
from pipeline.store import Store

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3
VERB_ENTRY_POINTS = "clevertap_pipeline.verbs"

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call, declared beside the verb that takes it."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Verb:
    name: str  # "status", or "dead-letters list" for an action of a verb group
    help: str
    run: Handler
    args: tuple[Arg, ...]


_VERBS: dict[str, Verb] = {}
_GROUPS: dict[str, str] = {}  # verb group -> its help


def verb(name: str, help: str, *args: Arg) -> Callable[[Handler], Handler]:
    """Register ``name`` (``"group action"`` for an action of a group) with its help and arguments."""

    def register(run: Handler) -> Handler:
        if name in _VERBS:
            raise ValueError(f"verb {name!r} is registered twice")
        _VERBS[name] = Verb(name, help, run, args)
        return run

    return register


def verb_group(name: str, help: str) -> None:
    _GROUPS[name] = help


def verbs() -> dict[str, Verb]:
    """Every verb: the product's and the ones the installed tooling registers."""
    _load_plugins()
    return dict(_VERBS)


_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group=VERB_ENTRY_POINTS):
            try:
                ep.load()
            except Exception as exc:  # a broken tool must not take the product's verbs down with it
                err(f"warning: the verbs of {ep.value} are unavailable ({type(exc).__name__}: {exc})")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        # "(default: None)" says nothing (an option's help says what leaving it out means), nor does a
        # flag's "(default: False)"
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


#: The order ``--help`` lists verbs in: what a user types every day first, then serving, then the local
#: tooling; benchmarks and the soak last.
EVERYDAY = ("ingest", "preview", "status", "dead-letters", "forget", "debugger", "check-config", "collect",
            "console", "metrics", "demo", "run", "emulator")  # fmt: skip


def _listed(v: Verb) -> tuple[int, int, str]:
    group = v.name.partition(" ")[0]
    if group in EVERYDAY:
        return (0, EVERYDAY.index(group), v.name)
    return (2 if group.startswith(("bench-", "soak")) else 1, 0, v.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clevertap-pipeline",
        description="Deliver Datafly/Segment-style events to CleverTap's Upload Events API.\n\n"
        "Configuration comes from CLEVERTAP_* environment variables or the TOML file named by "
        "CLEVERTAP_PIPELINE_CONFIG (see docs/configuration.md).",
        formatter_class=_Formatter,
    )
    top = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    groups: dict[str, Any] = {}
    for v in sorted(verbs().values(), key=_listed):
        group, _, action = v.name.partition(" ")
        sub = top
        if action:
            if group not in groups:
                help_ = _GROUPS.get(group, "")
                gp = top.add_parser(group, help=help_, description=help_, formatter_class=_Formatter)
                groups[group] = gp.add_subparsers(dest="action", required=True, metavar="ACTION")
            sub = groups[group]
        p = sub.add_parser(action or group, help=v.help, description=v.help, formatter_class=_Formatter)
        p.set_defaults(run=v.run)
        for a in v.args:
            p.add_argument(*a.flags, **a.options)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        err("configuration errors:")
        for path, msg in exc.errors:
            err(f"  {path}: {msg}")
        return EXIT_CONFIG
    except UnknownIntegration as exc:
        err(f"error: {exc}")
        return EXIT_CONFIG
    except InputError as exc:
        err(f"error: {exc}")
        return EXIT_FAILED
    except QueueFull as exc:
        err(f"error: {exc}")
        return EXIT_UNAVAILABLE
    except redis.RedisError as exc:
        err(f"error: Redis is not reachable ({type(exc).__name__}: {exc}); check REDIS_URL")
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        err("interrupted")
        return 130


# ------------------------------------------------------------------------------------------ shared


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Context:
    """What a verb works on: the settings (the environment, the file and the console's integrations),
    the store, and the integration ``--integration`` names (checked when the context is built)."""

    settings: Settings
    chosen: str | None = None

    @cached_property
    def store(self) -> Store:
        return Store.for_settings(self.settings)

    @property
    def integration(self) -> IntegrationConfig:
        """The integration ``--integration`` names (``default`` unless the verb has no default)."""
        return self.settings.integration(self.chosen or "default")

    @property
    def names(self) -> list[str]:
        """The one integration named, or every integration (sorted) when none is."""
        return [self.chosen] if self.chosen else sorted(self.settings.integrations)


def context(args: argparse.Namespace) -> Context:
    """The verb's context, built once: settings loaded (every error at once), ``--integration`` checked."""
    ctx = Context(load_with_console(), getattr(args, "integration", None))
    if ctx.chosen is not None:
        ctx.settings.integration(ctx.chosen)  # an unknown name is an error now, naming the known ones
    return ctx


def open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


INPUT = arg("file", nargs="?", default="-", help="input file, or - for standard input")


def integration_arg(help: str = "integration", default: str | None = "default") -> Arg:
    return arg("--integration", "-i", default=default, help=help)


def port(text: str) -> int:
    """An argparse type: a TCP port to listen on."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {text!r}")
    return int(text)
