"""detr_d2: DETR with a panoptic mask head as a Detectron2 extension.

Detectron2 is a prerequisite and is deliberately *not* listed in install_requires (it is usually
built from source against the user's own torch/CUDA); scripts/setup.sh installs a verified stack:
requirements-lock.txt (pinned, Python 3.10) or requirements-latest.txt (newest, Python 3.12, with
Detectron2 built from source). Every extra resolves on both without downgrading anything, except
``panopticapi``: panopticapi-lite declares numpy<2 (its code runs on numpy 2), so with numpy 2
install it with ``pip install --no-deps panopticapi-lite`` instead (docs/install.md).
"""

from setuptools import find_packages, setup

setup(
    name="detr_d2",
    version="0.1.0",
    description="DETR with the panoptic mask head as a first-class Detectron2 extension",
    license="Apache-2.0",
    # the package only: tests (and their oracles), tools and configs stay in the checkout
    packages=find_packages(include=["detr_d2", "detr_d2.*"]),
    python_requires=">=3.8",
    install_requires=[
        "torch",
        "torchvision",
        "fvcore",
        "pycocotools",
        "scipy",
        "numpy",
        "opencv-python-headless",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "panopticapi": ["panopticapi-lite"],
        # reading Hugging Face model.safetensors checkpoints (tools/convert_detr_checkpoint.py)
        "hf": ["safetensors"],
        # tools/export_model.py --format onnx (onnx) and running the exported model (onnxruntime)
        "export": ["onnx", "onnxruntime"],
        # the converter tests build transformers DETR models (timm backbones) to compare against:
        # 4.x with torch < 2.6, 5.x (needs torch >= 2.6) otherwise; the tests follow the installed
        "test": ["pytest", "pytest-xdist", "safetensors", "transformers>=4.40", "timm>=1.0"],
    },
    include_package_data=True,
)
