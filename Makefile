# The commands of the README: `make book`, `make test` and `make lab`. Each sets up .venv on its own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Optional: a PyTorch wheel index for a GPU build, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_INDEX ?=
# MathJax, require.js and the widget manager, served from the book itself (book/_ext/reader_fixes.py)
JS_PACKAGES := mathjax@3.2.2 requirejs@2.3.8 @jupyter-widgets/html-manager@1.0.15
NBVAL  := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env

.PHONY: setup book book-stored book-ko pot lab test unit nbval browser test-lab test-colab chromium bench claims colab oldest \
        clean repository

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install -q torch==2.13.0 --index-url $(TORCH_INDEX),)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	if command -v npm >/dev/null; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/js $(JS_PACKAGES); \
	else echo "npm not found: the book will load MathJax and the widget manager from CDNs"; fi
	touch $(STAMP)

setup: $(STAMP)

# The book, every notebook executed (cached in _build/.jupyter_cache); no network needed. Then the
# Korean edition into _build/html/ko/ (book-ko).
book: setup
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	$(MAKE) book-ko
	@echo "Open _build/html/index.html (English) or _build/html/ko/index.html (Korean) in a browser."

# _config.yml with the notebooks' stored outputs (no execution) and an absolute path to book/_ext
# (jupyter-book reads a --config file from where it lies).
_build/_config_stored.yml: _config.yml
	mkdir -p _build
	sed -e 's/execute_notebooks: cache/execute_notebooks: "off"/' -e 's|: book/_ext|: $(CURDIR)/book/_ext|' \
	  _config.yml > $@

# The same book from the notebooks' stored outputs (which nbval checks against a fresh run), both editions.
book-stored: setup _build/_config_stored.yml
	$(BIN)/jupyter-book build . --config _build/_config_stored.yml --warningiserror --keep-going
	$(MAKE) book-ko

# The Korean edition, from the same notebooks and their stored outputs, with the translations of
# locales/ko/ (an entry left untranslated shows in English; tests/test_korean.py counts them).
# Its own build folder (sharing _build/.doctrees with the English build fails), copied into
# _build/html/ko/. The overlay locales/ko/_config.yml sets the language, the title and the theme's strings.
book-ko: setup _build/_config_stored.yml
	$(BIN)/python book/_ext/korean.py overlay _build/_config_stored.yml locales/ko/_config.yml _build/_config_ko.yml
	$(BIN)/jupyter-book build . --config _build/_config_ko.yml --path-output _build/ko --warningiserror --keep-going
	rm -rf _build/html/ko && mkdir -p _build/html && cp -r _build/ko/_build/html _build/html/ko

# The translation catalogues: every page's text as gettext messages (_build/gettext/), then
# locales/ko/LC_MESSAGES/<page>.po refreshed from them (new entries empty, changed ones fuzzy, the
# rest kept). Translate the .po files (CONTRIBUTING.md, "Korean edition").
pot: setup _build/_config_stored.yml
	rm -rf _build/gettext
	$(BIN)/jupyter-book build . --config _build/_config_stored.yml --path-output _build/gettext \
	  --builder custom --custom-builder gettext --warningiserror --keep-going
	$(BIN)/sphinx-intl update -p _build/gettext/_build/gettext -l ko -d locales -w 0

# JupyterLab on the reading edition (colab/, the chapters with their quoted numbers filled in), from
# .venv: the notebooks' kernel (python3) is .venv's own Python, the widgets are live (the widget
# manager and anywidget's front end come with the pinned packages) and jupyterlab-myst renders the
# markdown. `make lab LAB_DIR=book` opens the source notebooks (MyST rendered, glued numbers not:
# only the built book and the reading edition show those). Extra server options in LAB_ARGS.
LAB_DIR ?= colab
LAB_ARGS ?=
lab: setup
	$(BIN)/jupyter lab --ip=127.0.0.1 $(LAB_ARGS) $(LAB_DIR)/

test: unit nbval browser test-lab test-colab

unit: setup
	$(BIN)/python -m pytest tests -q --ignore=tests/test_browser.py --ignore=tests/test_lab.py --ignore=tests/test_colab_setup.py

nbval: setup
	$(BIN)/python -m pytest $(NBVAL) book -q

# Chromium and a font that covers Hangul (the glossary's Korean terms) from the system's packages,
# where we may install them (as root with apt, as in CI); elsewhere the browser test skips and says
# why (and the Korean check fails, naming the missing font, if Chromium is there but no CJK font).
chromium:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "could not install chromium: the browser test will be skipped"; fi
	@if ! fc-list 2>/dev/null | grep -qi "CJK KR" && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk >/dev/null) \
	  || echo "could not install fonts-noto-cjk: Korean will show as empty boxes"; fi

browser: book-stored chromium
	$(BIN)/python -m pytest tests/test_browser.py tests/test_reading_edition.py::test_links_resolve_in_built_book -v -rs
	$(BIN)/python -m pytest tests/test_korean.py -k test_built_ -v -rs   # the Korean edition just built

# The reading edition for Colab (colab/NAME.ipynb, from book/NAME.ipynb and its stored outputs):
# glued numbers substituted, MyST roles and directives turned into CommonMark with links to the
# rendered book. Run it after executing a chapter; `make unit` fails while colab/ is stale.
colab: setup
	$(BIN)/python tools/reading_edition.py

# The README's "Locally" step in headless Chromium: JupyterLab from .venv, chapter 3's widget run
# and its slider moved (tests/test_lab.py; about a minute).
test-lab: setup chromium
	$(BIN)/python -m pytest tests/test_lab.py -v -rs

# The Colab set-up cell as Colab runs it (tests/test_colab_setup.py; a few minutes): a fresh venv
# with another torch (Colab's own), a google.colab stub, no checkout; the cell installs rlnotes
# from the release tag (git fetches it from this repository's HEAD) and chapter 1 runs to the end.
test-colab: setup
	$(BIN)/python -m pytest tests/test_colab_setup.py -v -rs

# Every chapter executed under several numeric variants (the CPU's own kernels, then torch's
# AVX2 and its portable default kernels, a cheap stand-in for another CPU): fails on any exception,
# so a claim that holds only on the machine that stored the outputs fails here. About 3x `make book`.
CLAIMS_ARGS ?=
claims: setup
	$(BIN)/python tools/claims.py $(CLAIMS_ARGS)

bench: setup
	$(BIN)/python -m pip install -q -r bench/requirements.txt
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

# The unit tests against the lowest versions pyproject.toml allows (what an older Colab image may
# have), in a venv of their own, with the CPU build of torch 2.6 (the security floor);
# run by hand when a lower bound in pyproject.toml changes.
OLDEST := "numpy==1.26.*" "matplotlib==3.8.*" "gymnasium==1.4.*" "transformers==4.46.*" "tokenizers==0.20.*" \
          "ipywidgets==8.1.*" "anywidget==0.11.*" "tqdm==4.60.*" pytest pyyaml
oldest:
	test -x .venv-oldest/bin/python || $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install -q "torch==2.6.*" $(OLDEST) --extra-index-url https://download.pytorch.org/whl/cpu
	.venv-oldest/bin/python -m pip install -q --no-deps -e .
	.venv-oldest/bin/python -m pytest tests -q --ignore=tests/test_browser.py --ignore=tests/test_lab.py --ignore=tests/test_colab_setup.py

# Publish under another repository: `make repository URL=https://github.com/OWNER/NAME` rewrites
# _config.yml's repository.url, the README and every set-up cell (tests/test_release.py checks them).
repository:
	@test -n "$(URL)" || (echo "usage: make repository URL=https://github.com/OWNER/NAME" && exit 2)
	$(PYTHON) tools/set_repository.py $(URL)
	$(MAKE) colab   # the reading edition quotes the set-up cells it rewrote

clean:
	rm -rf _build
