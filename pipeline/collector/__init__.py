"""The collector (``clevertap-pipeline collect``): the Segment HTTP Tracking API in front of ``ingest``.

- :mod:`.core`: the framework-free logic, :class:`~.core.Collector` (write keys, bodies, answers), tested
  without a server;
- :mod:`.app`: the Starlette app uvicorn serves, which reads bodies within bounds and hands them to it.

It uses the core (``pipeline/*.py``) and nothing else of the product: no other service, no tooling.
"""
