"""The FHIR API and push (appliance.fhir)."""
