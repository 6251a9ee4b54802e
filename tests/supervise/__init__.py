"""neuronova run: the supervised services, their logs and network exposure."""
