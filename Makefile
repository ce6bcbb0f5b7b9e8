# Two commands on a fresh Debian machine as root:  make demo  and  make test.
# Both install everything first (system TTS engines and sox, a .venv with the CPU
# torch 2.13.0 installed before anything else, then this package) and are
# idempotent: once .venv/.installed is newer than pyproject.toml, nothing is redone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox libsndfile1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: install system demo test bench clean

install: $(STAMP)

# apt packages the project needs, and fresh package lists for the text builder's
# `apt-get download`; skipped when all are there
system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then \
	  echo "apt: installing$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel first: with it installed, no dependency can pull a CUDA torch
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Until the speech translator lands: build the text corpus and a tiny speech sample,
# and show what was built.
demo: install
	$(VENV)/bin/interpres data text
	$(VENV)/bin/interpres data speech --size tiny
	@d=$$($(PY) -c 'from speech.data.cache import interpres_home as h; print(h() / "speech/tiny/en-de/data/train")'); \
	echo "first utterances of $$d:"; \
	paste -d'|' <(head -3 $$d/txt/train.yaml) <(head -3 $$d/txt/train.en) <(head -3 $$d/txt/train.de) | sed 's/|/\n    /g'

test: install
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: install
	$(PY) benchmarks/bench_data.py

clean:
	rm -rf $(VENV) build *.egg-info
