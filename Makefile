# Entry points for a fresh clone (see README and docs/install.md):
#   make setup        # .venv with Python 3.10 + the pinned stack (requirements-lock.txt) + detr_d2 (editable)
#   make test         # sets up if needed, then runs the test suite in that venv
#   make setup-latest # .venv-latest with Python 3.12 + the newest stack (requirements-latest.txt) + Detectron2
#                     # built from source (D2_SOURCE: git URL (default), local checkout or .tar.gz) + detr_d2
#   make test-latest  # sets up the newest stack if needed, then runs the test suite in it
#   make lint         # ruff check + ruff format --check (Detectron2's lint rules, ruff.toml); make format fixes
#   make quickstart   # sets up if needed, trains + evaluates the CPU quickstart, writes overlays next to the
#                     # per-class PQ chart and prints where they are
# Every target runs `make setup` first; a second setup is a no-op (stamp of requirements-lock.txt + setup.py).
PYTHON_VENV := .venv/bin/python
QUICKSTART_CFG := configs/quickstart/detr_r18_quickstart.yaml
QUICKSTART_OUT := output/quickstart
QUICKSTART_EVAL := $(QUICKSTART_OUT)/inference/detr_quickstart_val
QUICKSTART_VAL_IMAGES := $(or $(DETR_D2_QUICKSTART_ROOT),$(or $(DETECTRON2_DATASETS),datasets)/detr_d2_quickstart)/val

.PHONY: setup test setup-latest test-latest lint format quickstart
setup:
	bash scripts/setup.sh
test: setup
	$(PYTHON_VENV) -m pytest -q tests
setup-latest:
	bash scripts/setup.sh latest
test-latest: setup-latest
	.venv-latest/bin/python -m pytest -q tests
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .
quickstart: setup
	$(PYTHON_VENV) tools/train_net.py --config-file $(QUICKSTART_CFG) --resume OUTPUT_DIR $(QUICKSTART_OUT)
	images=$$(ls $(QUICKSTART_VAL_IMAGES)/*.jpg | head -n 8) && \
	$(PYTHON_VENV) tools/demo.py --config-file $(QUICKSTART_CFG) --input $$images \
		--output $(QUICKSTART_EVAL)/overlays --overwrite --opts MODEL.WEIGHTS $(QUICKSTART_OUT)/model_final.pth
	@echo "quickstart done:"
	@echo "  PQ table:              $(QUICKSTART_OUT)/log.txt (end)"
	@echo "  per-class PQ chart:    $(QUICKSTART_EVAL)/panoptic_per_class_pq.png"
	@echo "  training curves:       $(QUICKSTART_OUT)/training_curves.png (redraw: tools/plot_training.py $(QUICKSTART_OUT))"
	@echo "  overlays (8 val imgs): $(QUICKSTART_EVAL)/overlays/"
	@echo "  model:                 $(QUICKSTART_OUT)/model_final.pth"
