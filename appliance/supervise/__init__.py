"""Starting and supervising the appliance's processes: nginx, Orthanc, app, worker, receiver."""
