"""Celery app and thin tasks. ``celery -A tasks worker`` finds ``tasks.app``."""

from tasks.celeryapp import app

__all__ = ["app"]
