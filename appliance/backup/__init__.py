"""Backups of a data home: a content-addressed repository of snapshots, taken online.

``repository`` stores objects by SHA-256 and snapshot manifests; ``snapshot`` takes one
while the appliance runs (SQLite online backup, Orthanc's instances through its REST API)
and restores one into an empty home; ``status`` records the last backup's result.
"""
