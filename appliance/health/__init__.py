"""Probes of each service and the health report built from them."""
