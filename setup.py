"""Packaging: the repository's top-level folders install under one namespace of ours, so the installed
import names are xmodal.engine, xmodal.indexer and xmodal.data (shipped weights and sample photos)."""
from setuptools import find_packages, setup

ROOTS = {"engine": "engine", "indexer": "indexer", "data": "data"}

packages = [f"xmodal.{p}" for p in find_packages(include=["engine", "engine.*", "indexer", "indexer.*"])]
packages.append("xmodal.data")

setup(
    packages=packages,
    package_dir={f"xmodal.{name}": folder for name, folder in ROOTS.items()},
    package_data={
        "xmodal.engine": ["web/static/*"],
        # lite's weights only: base's (data/base-*.pt when trained in a checkout) ship in the companion wheel
        # built from packaging/xmodal-base/, never in this one
        "xmodal.data": ["lite-*.pt", "*.json", "MODEL_CARD.md", "samples/*"],
    },
)
