"""FHIR R4: the appliance's studies as ImagingStudy, Patient and Endpoint resources
(read and search at ``/api/fhir/``), and their push to a clinic's FHIR server."""
