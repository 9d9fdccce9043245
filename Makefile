# Build and test entry points. Targets from other parts of the project go alongside these.
.PHONY: deb vm-test

# dist/jobworkerd_<version>_<arch>.deb from the working tree, checked with lintian (root, Debian 12)
deb:
	scripts/build-deb.sh

# the VM tier: the .deb in a throwaway Debian 12 guest (systemd, pure cgroup v2) under qemu
vm-test: deb
	JOBWORKERD_DEB_PREBUILT=1 .venv/bin/python -m pytest -m vm -v tests/integration/vm
