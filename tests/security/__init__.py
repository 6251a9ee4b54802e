"""Tokens, sessions, sign-on, TLS and the audit trail (appliance.security)."""
