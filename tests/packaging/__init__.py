"""The bundle, .deb, apt repository, release, deploy and cloud profile (packaging/)."""
