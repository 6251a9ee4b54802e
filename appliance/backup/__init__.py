"""Backups of a data home: an encrypted, content-addressed repository of snapshots, taken online.

``crypto`` holds the encryption (keys wrapped by the home's backup key, AES-256-GCM
chunks); ``repository`` stores encrypted objects under keyed names and encrypted snapshot
manifests; ``manifest`` validates a manifest as untrusted input; ``snapshot`` takes one
while the appliance runs (SQLite online backup, Orthanc's instances through its REST API)
and restores one into an empty home; ``legacy`` reads repositories from before
encryption and ``migrate`` encrypts them; ``prune`` and ``offsite`` keep the retention
here and on an rclone remote; ``daily`` and ``status`` run and record the daily backup.
"""
