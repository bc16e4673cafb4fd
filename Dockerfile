# The one image every pipeline service runs: worker, beat, flower and the emulator.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 pipeline
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY tasks ./tasks
RUN pip install '.[flower]'

USER pipeline
CMD ["celery", "-A", "tasks", "worker", "--pool", "threads", "--concurrency", "16", "--loglevel", "INFO"]
