"""Background jobs: queued after their transaction commits, claimed by one worker, kept alive
by a heartbeat, taken back when their worker dies (`lifecycle`). The Celery tasks that run
them are the worker's (`annotation.worker`)."""
