"""The management console (``clevertap-pipeline console``): the spec's Management UI as server-rendered pages.

Integrations (add and edit, saved in Redis with the passcode encrypted: :mod:`pipeline.saved`), field
mappings with a preview, the event debugger, and the dead letters (filtered, paged, replayed, purged), on
the same core the CLI uses. Starlette with Jinja2 templates and no JavaScript at all: plain forms.

Access: a login with ``CLEVERTAP_CONSOLE_PASSWORD``; sessions in signed cookies (SameSite=Strict,
HttpOnly) whose ids also live in Redis; a CSRF token in every form; no secret and no record in a URL (ids
and filters only); security headers on every answer; request bodies limited.

The rooms: :mod:`.app` (routes, start-up), :mod:`.web` (what every page shares: state, guard, rendering,
CSRF, login check), :mod:`.auth`, :mod:`.forms` (form fields as data), :mod:`.integrations` (with the
mappings), :mod:`.debugger`, :mod:`.dead_letters`; ``templates/`` and ``static/``. Handlers are module
functions that read the app's state (``request.app.state.console``). It uses the core (``pipeline/*.py``)
and no other service.
"""

from pipeline.console.app import create_console, from_environment
from pipeline.console.auth import session_secret

__all__ = ["create_console", "from_environment", "session_secret"]
