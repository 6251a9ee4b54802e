"""The command line (appliance.cli) through click's CliRunner."""
