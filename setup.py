"""detr_d2: DETR with a panoptic mask head as a Detectron2 extension.

Detectron2 is a prerequisite and is deliberately *not* listed in install_requires (it is usually
built from source against the user's own torch/CUDA); scripts/setup.sh installs the verified stack
from requirements-lock.txt.
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
        # the converter tests build transformers DETR models (timm backbones) to compare against
        "test": ["pytest", "pytest-xdist", "safetensors", "transformers>=4.40,<5", "timm>=1.0"],
    },
    include_package_data=True,
)
