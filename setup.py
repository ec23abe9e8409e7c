"""What pyproject.toml cannot say: ``deploy/`` ships inside the wheel as the package ``crawlstream_deploy``.

pyproject.toml holds everything else (metadata, dependencies, package data). The packages are found
here rather than with ``[tool.setuptools.packages.find]`` because a package whose directory is not its
name (``deploy/`` -> ``crawlstream_deploy``) must be listed beside the found ones, and find cannot list
it. The repository's ``deploy/`` files are the packaged files: nothing is copied or generated, so the
two cannot drift; code finds them with ``importlib.resources`` (control/stack/deploy_data.py), in an
editable install (the repository's folder) and in an installed wheel (site-packages) alike.
"""

from setuptools import find_namespace_packages, setup

# Folders of data (deploy/*, sinks/migrations) are listed as packages too: setuptools installs
# data only from listed packages, and warns that it will stop guessing them.
SKIP = ["*__pycache__*", "*.egg-info*"]
CODE = find_namespace_packages(
    include=["crawlstream*", "crawlers*", "streams*", "sinks*", "control*", "follow*"], exclude=SKIP
)
DEPLOY = [f"crawlstream_deploy.{name}" for name in find_namespace_packages(where="deploy", exclude=SKIP)]

setup(
    packages=[*CODE, "crawlstream_deploy", *DEPLOY],
    package_dir={"crawlstream_deploy": "deploy"},
)
