"""Accounts, sessions, tokens, secrets, the audit trail and the HTTPS certificate."""
