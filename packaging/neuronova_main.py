"""The bundle's entry point: ``neuronova`` is ``appliance.cli:main``, as when pip installs it."""

from appliance.cli import main

if __name__ == "__main__":
    main()
