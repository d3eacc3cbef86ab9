# Two commands for a fresh machine (see README):
#   make setup   # .venv with Python 3.10 + the pinned stack (requirements-lock.txt) + detr_d2 (editable)
#   make test    # the test suite in that venv
.PHONY: setup test
setup:
	bash scripts/setup.sh
test:
	.venv/bin/python -m pytest -q tests
