"""Receiving objects: the DICOM receiver, the spool, the journal and the intake into the queue."""
