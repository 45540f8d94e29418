PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: test demo install data clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's package; installed only where apt-get is usable (root).
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null \
	  || echo "note: could not install dataset-fashion-mnist; demos fall back to scikit-learn digits"; \
	fi

test: install data
	$(BIN)/python -m pytest

demo: install data
	$(BIN)/darht run configs/demo.yaml

clean:
	rm -rf $(VENV) .pytest_cache
