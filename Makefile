# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create (once) a local virtual environment in .venv with the project and its dependencies.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,milvus,serve,ray
DATA ?=

.PHONY: install demo test test-all bench browser clean-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[$(EXTRAS)]'
	touch $@

install: $(BIN)/.installed

# The demo on the built-in synthetic catalogue; DATA=path/to/catalogue runs it on real photos instead.
# It ends by serving the web page (Ctrl+C stops); NO_SERVE=1 stops after the example search.
demo: install
	$(BIN)/vestis demo $(if $(DATA),--data $(DATA)) $(if $(NO_SERVE),--no-serve) $(if $(PORT),--port $(PORT))

# The default test suite (fast; skips what needs ../shared data when it is absent). Exit 5 = no tests collected.
test: install
	$(BIN)/pytest -q -p no:cacheprovider || [ $$? -eq 5 ]

# Everything, including the slow tests.
test-all: install
	$(BIN)/pytest -q -p no:cacheprovider -m '' || [ $$? -eq 5 ]

# Debian's Chromium for the web page's browser test (tests/test_serve_browser.py installs it the same way when
# it runs as root; elsewhere that test is skipped with the reason).
browser:
	test -x /usr/bin/chromium || (apt-get install -y -q --no-install-recommends chromium || \
		(apt-get update -q && apt-get install -y -q --no-install-recommends chromium))

# Speed benchmarks (minutes; not part of the test suite).
bench: install
	$(BIN)/vestis bench extract $(if $(DATA),--catalog $(DATA))

clean-venv:
	rm -rf $(VENV)
