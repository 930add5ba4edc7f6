"""Celery workers that deliver notifications through Microsoft Graph."""
