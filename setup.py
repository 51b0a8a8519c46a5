"""remix-ds packaging.

`kernels/` and `ds_configs/` live at the top of the repository (the design card's layout) and
install as `remix_ds.kernels` and `remix_ds.ds_configs` through the symlinks `remix_ds/kernels` and
`remix_ds/ds_configs`. Neither top-level folder has an `__init__.py`: a regular package named
`kernels` at the root would shadow Hugging Face's `kernels` (a transformers dependency) for
anything run from the root; a namespace portion never does (kernels/README.md).
"""

from setuptools import setup

PACKAGES = [
    "remix_ds",
    "remix_ds.bench",
    "remix_ds.baselines",
    "remix_ds.data",
    "remix_ds.engine",
    "remix_ds.eval",
    "remix_ds.experiments",
    "remix_ds.forgetting",
    "remix_ds.kernels",
    "remix_ds.ds_configs",
]

setup(
    name="remix-ds",
    version="0.1.0",
    description="DeepSpeed training for studying and preventing forgetting in staged fine-tuning (REMIX)",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_data={"remix_ds": ["*.yaml"], "remix_ds.ds_configs": ["*.json"],
                  "remix_ds.data": ["builtin_corpus/*.jsonl.gz", "builtin_corpus/README.md"]},
    include_package_data=True,
    install_requires=[
        # torch is deliberately unpinned here: the CPU path pins torch==2.13.0 before installing
        # this package (see README); GPU users keep the CUDA build they already have.
        "torch>=2.4",
        "deepspeed>=0.19,<0.20",
        "transformers>=5.0,<6",
        "accelerate>=1.1",  # transformers needs it for HfDeepSpeedConfig (ZeRO-3 loading) and Trainer
        "tokenizers",
        "sentencepiece",
        "protobuf",
        "safetensors",
        "datasets",
        "pyarrow",
        "numpy",
        "scipy",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "wordfreq",
        "filelock",  # grids: concurrent cells share caches and results files (issue 13)
        "submitit",  # grids: `launcher: slurm` (issue 13)
    ],
    extras_require={
        "gpu": ["flash-attn>=2.6"],
        "wandb": ["wandb"],  # metrics.wandb (issue 13)
        "dev": ["pytest>=8", "import-linter>=2.1", "ruff>=0.6", "wandb"],
    },
    entry_points={"console_scripts": ["remix-ds=remix_ds.cli:main"]},
)
