#!/usr/bin/env bash
# Installs the system packages the embedded stack and the tests need, when they are missing:
# a Java 17+ runtime and Maven (Kafka, Kafka Connect, Debezium come from Maven Central),
# the PostgreSQL server, Debian's python3.11-doc (a real site for e2e tests), Prometheus, nginx-light
# (the static server of bench/bench_crawl.py) and kcat (the e2e tests write garbage to every topic
# with a Kafka client nobody here wrote).
# Debian/Ubuntu with apt only; elsewhere it prints what to install and stops.
set -euo pipefail

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
[ -d /usr/share/doc/python3.11/html ] || need+=(python3.11-doc)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)  # bench/bench_crawl.py
command -v kcat >/dev/null 2>&1 || need+=(kcat)  # tests/e2e/test_garbage_topics.py
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages: ${need[*]} (install the equivalents for your OS)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "missing: ${need[*]}; run as root: apt-get install ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing system packages: ${need[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
# Debian starts the packaged cluster on 5432; crawlstream runs its own cluster and needs none.
