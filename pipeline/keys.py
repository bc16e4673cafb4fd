"""The Redis key layout: every key the pipeline writes, in one table, and the one class that builds them.

Keys (``P`` is the key prefix, default ``ctp``; ``{I}`` the integration name as a Redis Cluster hash
tag, so every key of one integration lives in one slot and each script touches one slot only):

====================================  ======  ===============================================================
key                                   type    holds
====================================  ======  ===============================================================
``P:{I}:pending``                     list    queued records, pre-serialised CleverTap JSON, oldest first
                                              ('' is a forgotten record's tombstone, dropped when cut)
``P:{I}:arrivals``                    list    ``<records pushed so far>:<ms>`` marks, oldest first: when the
                                              waiting records arrived (to 10 ms), for the flush interval
``P:{I}:flow``                        hash    ``pushed``, ``cut``: records ever pushed to / cut from pending
``P:{I}:ingest:<message id>``         string  chunks of a ``clevertap.ingest`` message already queued (1 day)
``P:{I}:done:<bid>``                  string  the owner that finished a batch, so a finish sent twice counts
                                              once (10 min)
``P:{I}:call:<call id>``              string  one enqueue call's answer, so a resent call writes nothing
                                              twice (1 min)
``P:{I}:seen``                        zset    messageId -> ms first accepted (de-duplication window)
``P:{I}:ids``                         hash    userId -> email, remembered from identify calls
``P:{I}:tokens:seen``                 zset    SHA-1 of a device's push token (type, id) -> ms last queued
                                              (not again within the dedup window; no token in clear)
``P:{I}:tokens:sent``                 hash    the same SHA-1 -> SHA-1 of the token record last queued (another
                                              objectId or keys: queued again)
``P:{I}:ids:seen``                    zset    userId -> ms of its last identify (entries expire after
                                              identity_retention)
``P:{I}:batch:<bid>``                 string  the records of one assembled batch, in send order, joined by
                                              newlines
``P:{I}:meta:<bid>``                  hash    created, size, attempts, failures, throttles, first_failure,
                                              first_throttle, last_error, gen (dispatch generation),
                                              swept (re-publishes by the sweep since the last dispatch);
                                              a lane's batch: import (its id), isize (records when cut)
``P:{I}:open``                        zset    bid -> ms when the batch is next due to be sent
``P:{I}:held``                        zset    bid -> ms held, while the integration fails authentication
``P:{I}:lease:<bid>``                 string  the worker currently sending the batch (expires, PX)
``P:{I}:auth``                        hash    reason, since, next_probe, probe: present only while auth fails
``P:{I}:dead``                        hash    dead-letter id -> JSON entry (stage, code, error, record/event)
``P:{I}:dead:idx``                    zset    dead-letter id -> ms, for listing in order
``P:{I}:dead:kinds``                  hash    dead letters kept, by kind (``api:<code>``,
                                              ``mapping:<reason>``), kept by the scripts that add/remove
``P:{I}:anon:<visitor>``              list    anonymous = "hold": a visitor's held events (JSON: id, event),
                                              by sha256 of its anonymousId; released or expired whole
``P:{I}:anon:idx``                    zset    visitor -> ms its first event was held (the sweep's expiry)
``P:{I}:anon:count``                  string  events held in all (the cap, anonymous_hold_max)
``P:{I}:forgotten``                   hash    SHA-256 digest of a forgotten user's value -> ms until which
                                              events naming it are filtered (forget_suppress_days)
``P:{I}:forgotten:gen``               string  bumped on every change of ``forgotten``: an enqueue or replay
                                              filtered with an older view of the list is refused
``P:{I}:forgotten:until``             zset    digest -> ms until suppressed (the expiry's order)
``P:{I}:import:<id>``                 hash    one import: file, format, size, state (running, read, done,
                                              cancelled), rows (its checkpoint: rows of the file queued),
                                              queued, settled (records whose batch ended), cut, delivered,
                                              dead, refused, filtered, old, bytes, started, finished
``P:{I}:import:<id>:records``         list    the import's backfill lane: its records waiting to be cut
``P:{I}:import:open``                 set     the lane's batches (open or held): live batches' slots first
``P:{I}:imports``                     zset    import id -> ms started, while it reads or delivers
``P:{I}:imports:all``                 zset    import id -> ms started: the last 100, for ``import status``
``P:{I}:stats``                       hash    counters (accepted, delivered, retries_throttles, ...)
``P:{I}:debug``                       list    the event debugger: the last debugger_size send attempts, newest
                                              first (JSON: time, batch, records, attempt, HTTP status,
                                              latency, result, CleverTap's raw answer cut at 64 KB)
``P:{acct:<A>}:tokens``               zset    in-flight token id -> lease expiry ms, per CleverTap account
``P:{acct:<A>}:stats``                hash    ``peak``: the most tokens ever held at once
``P:{acct:<A>}:wake``                 list    one item per released token, for waiters blocked in BLPOP
``P:{acct:<A>}:limit``                hash    effective (AIMD limit, while another client shares the
                                              account), cut_at, cut_from, cuts
``P:{acct:<A>}:requests``             hash    requests to CleverTap by answer (HTTP status, or "error")
``P:{acct:<A>}:durations``            hash    request durations: a count per histogram bucket, and "sum"
``P:{acct:<A>}:deletes``              zset    Delete User Profile requests in flight (delete_concurrency),
                                              leases like ``tokens``; ``deletes:wake``, ``deletes:stats``,
                                              ``deletes:limit`` as for the tokens
``P:{forget}:req:<id>``               hash    one forget request: state, when asked / purged / done, its
                                              integrations, the digests, counts of copies removed by place,
                                              CleverTap's answers per account; ``who`` (the identities in
                                              clear) only until CleverTap confirmed: the one place they
                                              remain in the meantime
``P:{forget}:index``                  zset    request id -> ms asked (``forget status``)
``P:{forget}:open``                   zset    unfinished request id -> ms due (the sweep hands it to a worker)
``P:{forget}:lease:<id>``             string  the process working on a request (expires, PX)
``P:{forget}:states``                 hash    requests by state; ``P:{forget}:stats``: delete answers
``P:ready``                           set     integrations that may have records waiting
``P:assemble:lock``                   string  held by the one assembler run in progress (expires)
``P:unserved``                        hash    integration -> ms when an assembler last found records queued
                                              for it that its process does not serve (kept a minute)
``P:collector:health``                string  written by the collector's health check (expires in 10 s)
``P:console:integrations``            hash    integration name -> JSON of its settings, saved in the console
                                              (passcode and write key as Fernet tokens: ``pipeline.saved``)
``P:console:version``                 string  bumped on every console save: processes reload when it moves
``P:console:session:<sha256>``        string  a console login session, by the digest of its id (8 h)
====================================  ======  ===============================================================

Batch keys (``batch:<bid>``, ``meta:<bid>``, ``lease:<bid>``) are named inside scripts from the integration's
key base (:meth:`KeyLayout.base`); they carry the same hash tag as the declared keys, so they live in the
same slot. Global keys (``P:ready``, the locks, the console's) are never touched in the same script as an
integration's.
"""

from __future__ import annotations


class KeyLayout:
    """Builds every key of the table above for one key prefix (``P``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def base(self, integration: str) -> str:
        """``P:{I}:``: what scripts prepend to a batch's own key names."""
        return f"{self.prefix}:{{{integration}}}:"

    def key(self, integration: str, name: str) -> str:
        return f"{self.prefix}:{{{integration}}}:{name}"

    def keys(self, integration: str, *names: str) -> list[str]:
        return [self.key(integration, name) for name in names]

    def account_key(self, account: str, name: str) -> str:
        """A key of one CleverTap account (its in-flight tokens, limit and request counts)."""
        return f"{self.prefix}:{{acct:{account}}}:{name}"

    @property
    def ready_key(self) -> str:
        return f"{self.prefix}:ready"

    def lock_key(self, name: str) -> str:
        return f"{self.prefix}:{name}:lock"

    def console_key(self, name: str) -> str:
        """``P:console:<name>``: the console's integrations, their version, its sessions."""
        return f"{self.prefix}:console:{name}"

    @property
    def unserved_key(self) -> str:
        return f"{self.prefix}:unserved"

    @property
    def health_key(self) -> str:
        return f"{self.prefix}:collector:health"
