"""deploy/ is data: stack configs, the Maven pom, connector JSON, Prometheus and Grafana provisioning,
compose, k8s, the example jobs file.

This file only makes the folder a package, ``crawlstream_deploy`` (setup.py maps the name onto this
folder), so these very files ship inside the wheel and code finds them with ``importlib.resources``
from any directory (control/stack/deploy_data.py). Put no code here.
"""
