"""Async jobs: Oracle's job flow on top of Run rows, executed by Celery workers.

The Run row is the truth. Celery carries only the run's id; a task claims the row with a conditional
UPDATE (QUEUED -> RUNNING), so a second delivery of the same message does nothing. While it runs, the
worker heartbeats the row and polls it for a cancel request. The reaper takes back runs whose worker
vanished and republishes queued runs whose message was lost.

By role: `submission` publishes jobs and reads, cancels and deletes them; `worker` executes them in a
Celery worker; `reaper` takes back what dead processes left and prunes old runs; `broker` answers
what the queues, workers and broker are doing.
"""
