"""clevertap-pipeline: a server-side delivery pipeline for CleverTap's Upload Events API."""

from pipeline.ingest import IngestResult, ingest

__all__ = ["IngestResult", "__version__", "ingest"]
__version__ = "0.1.0"
