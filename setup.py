"""Package layout for setuptools; every other setting is in pyproject.toml.

The shipped device profiles, export presets and recipes stay at the repository root (``devices/``,
``export/``, ``recipes/``), where the docs and the recipes' header comments name them, and install
as data folders of the package: ``edgeft/profiles``, ``edgeft/presets`` and ``edgeft/recipes``
(read by edgeft/config/resources.py through importlib.resources). A ``package-dir`` mapping does
this, but pyproject.toml can only combine it with an explicit package list (``packages.find``
cannot add mapped packages), which every new subpackage would have to join by hand; here the list
is found, so a new subpackage cannot be left out of the wheel. ``package_data`` also ships report.html's
Jinja2 templates (``edgeft/validate/templates``), which are not Python files.
"""

from setuptools import find_namespace_packages, setup

#: installed package -> folder in the repository
SHIPPED = {"edgeft.profiles": "devices", "edgeft.presets": "export", "edgeft.recipes": "recipes"}

setup(
    packages=find_namespace_packages(include=["edgeft", "edgeft.*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={**{pkg: ["*.yaml", "*.yml", "*.example"] for pkg in SHIPPED},
                  "edgeft.validate": ["templates/*.j2", "templates/*.css"]},  # report.html's templates
)
