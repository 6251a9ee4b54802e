"""The job system: the task queue (Huey on SQLite, or Redis in the cloud profile) and its
one list of tasks (``queue``), the wake-up of an idle worker (``wakeup``), the worker
process (``worker``) and the work it gives the tasks (``work``), what each worker runs
(``activity``) and the queue's state by kind of task (``monitor``).

Each task is declared beside the code it runs (``transcode.tasks``, ``fhir.tasks``,
``lifecycle.tasks``, ``backup.tasks``); this package composes them.
"""
