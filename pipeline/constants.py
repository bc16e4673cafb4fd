"""CleverTap's limits and the pipeline's defaults, each with the reason it sits where it does.

Sources: ``docs/clevertap-api.md`` (what the real Upload API enforces, with references) and the product spec.
"""

from __future__ import annotations

#: Regions CleverTap provisions accounts in. The region becomes part of a host name, so nothing
#: outside this tuple is ever interpolated into a URL.
REGIONS: tuple[str, ...] = ("us1", "in1", "eu1", "sg1", "aps3", "mec1", "sk1")

#: Push token types CleverTap's Upload Device Tokens takes (tokenData.type); chrome ones carry their keys.
TOKEN_TYPES: tuple[str, ...] = ("fcm", "gcm", "apns", "wns", "mpns", "chrome")
#: Where a token record's objectId may come from (CleverTap requires one on each).
TOKEN_OBJECT_ID_SOURCES: tuple[str, ...] = ("anonymousId", "userId", "context.device.id")
#: Token records in one upload request: CleverTap takes at most 100 (1,000 for events and profiles).
MAX_TOKEN_BATCH = 100

#: ``POST /1/upload`` accepts at most 1,000 records per request.
MAX_BATCH_SIZE = 1000
#: CleverTap answers 429 past 15 concurrent requests per account.
MAX_CONCURRENCY = 15

#: Property values may be at most 512 bytes (UTF-8), keys at most 120 characters.
MAX_VALUE_BYTES = 512
MAX_KEY_CHARS = 120
#: Older docs say 256 properties per event, newer ones "100 by default, configurable per account".
#: 256 is the default here; accounts with a lower limit set ``max_event_properties``.
DEFAULT_MAX_EVENT_PROPERTIES = 256

#: ``ts`` is epoch seconds, ten digits at most: CleverTap answers 525 for anything else.
MAX_EPOCH_S = 10_000_000_000

#: Characters CleverTap does not allow in event names.
FORBIDDEN_EVENT_NAME_CHARS = frozenset("%><!|&.:;$'\"\\")

#: System event names CleverTap reserves (error 513). Compared case- and space-insensitively,
#: because CleverTap counts names that differ only in case or spaces as one event.
RESERVED_EVENT_NAMES: frozenset[str] = frozenset(
    name.replace(" ", "").lower()
    for name in (
        "App Launched",
        "App Installed",
        "App Uninstalled",
        "Notification Sent",
        "Notification Viewed",
        "Notification Clicked",
        "Notification Replied",
        "UTM Visited",
        "Stayed",
        "Identity Set",
        "Identity Reset",
        "Identity Error",
        "Push Impressions",
        "Channel Unsubscribed",
        "Geocluster Entered",
        "Geocluster Exited",
        "State Transitioned",
        "Session Concluded",
        "Reply Received",
        "Message Sent",
        "Message Delivered",
        "Message Read",
    )
)

#: The only evtData key CleverTap lets hold a nested structure (a list of objects), on Charged.
ITEMS_KEY = "Items"

#: Default messageId de-duplication window: an upstream job that retries its own submission within a
#: day does not double-send.
DEFAULT_DEDUP_WINDOW_S = 24 * 3600
#: A batch that keeps failing transiently is dead-lettered after this age (6 h), long enough to ride
#: out an outage, short enough that nothing retries forever silently.
DEFAULT_GIVE_UP_AGE_S = 6 * 3600
#: Forgetting a user: later events naming them are filtered this long (forget_suppress_days).
DEFAULT_FORGET_SUPPRESS_DAYS = 30.0
#: Imports: records of one import in Redis at once (import_window), and how often a chunk is mapped again
#: when the suppression list moved meanwhile.
DEFAULT_IMPORT_WINDOW = 100_000
IMPORT_STALE_TRIES = 5
#: CleverTap's Delete User Profile API takes at most this many identities (or guids) a request.
MAX_DELETE_VALUES = 100

#: HTTP timeouts. The token lease must outlive the longest request, so a worker that dies mid-request
#: frees its slot soon after the request could have ended anyway.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_TOKEN_LEASE_S = 120.0
#: A batch lease (how long one worker owns a batch while sending it) is this times the token lease: longer,
#: so a token is always free again before another worker can take over a batch whose sender died.
BATCH_LEASE_FACTOR = 1.5

#: Broker visibility timeout (Redis transport). Every countdown the tasks use stays below it, so an
#: ETA message is never redelivered while its countdown is still running.
VISIBILITY_TIMEOUT_S = 3600
MAX_COUNTDOWN_S = 600.0

#: How long a batch may sit past its due time, unleased, before the sweep re-publishes it.
DEFAULT_SWEEP_GRACE_S = 60.0
#: How often a batch is tried again while an integration fails authentication.
DEFAULT_AUTH_PROBE_INTERVAL_S = 60.0

#: A userId's remembered email lasts 90 days after its last identify (0: for ever).
DEFAULT_IDENTITY_RETENTION_S = 90 * 86400
#: Ingest refuses more once this many records wait for one integration (0: no mark): about 3 GB of Redis
#: at ~300 bytes a record, far from the 24 GB a machine like this one has, and hours of one account's quota.
DEFAULT_MAX_PENDING = 10_000_000
#: Dead letters are kept 30 days, and at most a million per integration (oldest go first; 0: no limit).
DEFAULT_DEAD_LETTER_MAX_AGE_S = 30 * 86400
DEFAULT_DEAD_LETTER_MAX_COUNT = 1_000_000

#: Buckets (upper bounds, s) of clevertap_request_duration_seconds: CleverTap answers in tens of ms to a few
#: seconds; the requests are cut at connect + read timeout (65 s by default).
REQUEST_DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: The event debugger keeps the last 200 attempts of an integration by default, and at most 100,000 (each up
#: to 64 KB of CleverTap's answer: a debugger that big is for a short investigation, not for keeping).
DEFAULT_DEBUGGER_SIZE = 200
MAX_DEBUGGER_SIZE = 100_000

#: How long status and the console report an integration that the workers found queued but do not serve
#: after an assembler last found it so (the assembler looks at every flush interval).
UNSERVED_KEPT_S = 60.0
#: The warning for it is logged once a minute per integration and process, not on every assemble tick.
UNSERVED_WARN_EVERY_S = 60.0

#: A browser's page sends a few requests a page view (batched by the SDK); 20 a second with a burst of 40 per
#: client address leaves a busy page room and makes a public write key useless for flooding.
DEFAULT_BROWSER_RATE_LIMIT = 20.0
DEFAULT_BROWSER_RATE_BURST = 40

#: anonymous = "hold": a visitor's anonymous events wait 30 minutes (most logins come within a visit) for an
#: event that says who they are; at most 100,000 per integration (about 50 MB of Redis at ~500 bytes each),
#: and 1,000 per visitor (a page that loops cannot fill the hold alone).
DEFAULT_ANONYMOUS_HOLD_S = 1800.0
DEFAULT_ANONYMOUS_HOLD_MAX = 100_000
MAX_HELD_PER_VISITOR = 1000

DEFAULT_KEY_PREFIX = "ctp"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
SEND_QUEUE = "clevertap.send"
#: The queue clevertap.ingest (and the other tasks but send_batch) go to: tasks/celeryapp.py's default.
INGEST_QUEUE = "clevertap"

#: Custom profile keys CleverTap keeps per profile (Upload User Profiles API page).
MAX_PROFILE_CUSTOM_KEYS = 256

#: How long an enqueue's answer is kept under its call id (P:{I}:call:<id>): redis-py sends a command again
#: after a timeout or a dropped connection (10 tries, backing off to 1 s; the collector's socket timeout is
#: 5 s, so about 55 s at most), and the repeat of a call that had run answers from here instead of queueing
#: its events twice. 165 bytes of Redis a call while kept (measured): at 1,000 calls/s, 10 MB.
ENQUEUE_ANSWER_KEPT_MS = 60_000

#: With redis_wait_replicas, how long ingest and the collector wait for the replicas to confirm a write.
WAIT_TIMEOUT_MS = 2000
