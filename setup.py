"""tf_cartoon: Cartoon-StyleGAN2 fine-tuning in TensorFlow 2 / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="tf_cartoon",
    version="0.1.0",
    description="Fine-tuning StyleGAN2 for cartoon face generation (Back, 2021) in TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tf_cartoon", "tf_cartoon.*"]),
    # the shipped checkpoints (--ckpt=builtin:<name>, tf_cartoon/assets): converted directories
    package_data={"tf_cartoon.assets": ["*/config.json", "*/weights/*"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10",
        "numpy>=1.26",
        "pillow>=10",
        "tensorboard>=2.21",
        "absl-py>=2.1",
    ],
    extras_require={
        # StyleCLIP (tf_cartoon.styleclip) uses keras-hub's CLIP encoders and tokenizer; 0.32 is the
        # version checked not to move tensorflow / keras / numpy.
        "clip": ["keras-hub>=0.32,<0.33"],
        # torch is optional: only the interop tests use it (our reader needs no torch).
        "test": ["pytest>=8", "keras-hub>=0.32,<0.33"],
    },
    entry_points={"console_scripts": ["tf-cartoon-convert=tf_cartoon.convert:main"]},
)
