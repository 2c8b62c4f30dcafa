"""The scoring service: FastAPI app, batch jobs on Celery, metrics. Never imports torch."""
