# Two entry points for a newcomer on a fresh Debian machine: `make demo` and `make test`.
# Each sets up what it needs: Debian packages (when missing), a virtualenv, the package itself.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DEB_PACKAGES = gcc libc6-dev make gdb openssl libssl-dev nginx-light zlib1g-dev perl tmux chromium \
               python3-twisted python3-openssl nodejs libjemalloc2 libtcmalloc-minimal4 \
               apache2 haproxy postgresql postgresql-15 stunnel4 mosquitto util-linux \
               python3-requests gunicorn lighttpd lighttpd-mod-openssl uwsgi-core uwsgi-plugin-python3

# golang-go: `go tool pprof` reads the pprof exports back (tests/integration/test_pprof.py)
DEB_PACKAGES += golang-go
# clang-format: `make lint` checks hooks/ against .clang-format
DEB_PACKAGES += clang-format

# 0: `make lint` skips the formatting checks (ruff format, clang-format)
FORMAT_CHECK ?= 1

.PHONY: demo test lint bench bench-overhead deps venv clean

deps:
	@bash scripts/install-deps.sh $(DEB_PACKAGES)

$(VENV)/.installed: pyproject.toml setup.py $(wildcard hooks/*.c hooks/*.h)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

demo: deps venv
	$(VENV)/bin/tlsprof demo

lint: deps venv
	PY=$(PY) FORMAT_CHECK=$(FORMAT_CHECK) bash scripts/lint.sh

test: deps venv lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: deps venv
	$(PY) bench/run_all.py

# issue 18: every row of the overhead goal table against its goal (~4 min; QUICK=1: ~1.5 min)
bench-overhead: deps venv
	$(PY) bench/overhead_goals.py $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) build *.egg-info tlsprof/_shim*.so
