"""The ``clevertap-pipeline`` command (also ``python -m pipeline``): parsing and printing; what a verb does
lives in the core.

The rooms: :mod:`.registry` (the verb registry, shared arguments, :class:`~.registry.Context`, ``main``),
then one module per verb group: :mod:`.ingesting` (check-config, ingest, preview), :mod:`.observing`
(status, debugger, metrics), :mod:`.dead_letters`, :mod:`.forgetting`, :mod:`.serving` (collect,
console). Importing this package registers them all.
"""

from pipeline.cli import dead_letters, forgetting, importing, ingesting, observing, serving
from pipeline.cli.registry import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    Handler,
    arg,
    build_parser,
    err,
    main,
    verb,
    verb_group,
    verbs,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "Handler",
    "arg",
    "build_parser",
    "dead_letters",
    "err",
    "forgetting",
    "importing",
    "ingesting",
    "main",
    "observing",
    "serving",
    "verb",
    "verb_group",
    "verbs",
]
