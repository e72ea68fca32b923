"""What the Celery worker runs (`tasks`): each task claims its job, runs a service under a
heartbeat and records the outcome."""
