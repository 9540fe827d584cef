"""The package list, which pyproject.toml cannot express: detlab's packages plus conf/ as `detlab.conf`.

conf/ stays at the top of the checkout (the config tree beside the code, as the project's layout has it) and
goes into the wheel as package data under detlab/conf, so that an installed detlab finds its configs from any
folder (detlab.config.CONF_DIR). Each folder of conf/ is listed as a package of its own: setuptools warns about
data folders that are importable but unlisted.
"""

from setuptools import find_namespace_packages, find_packages, setup

setup(
    packages=[
        *find_packages(include=["detlab*"]),
        "detlab.conf",
        *(f"detlab.conf.{p}" for p in find_namespace_packages("conf")),
    ],
    package_dir={"detlab.conf": "conf"},
    package_data={"detlab": ["py.typed"], "detlab.conf": ["**/*.yaml"]},
)
