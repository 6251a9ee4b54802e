"""What the appliance keeps: the Orthanc client, the prepared frame files, the worklist index."""
