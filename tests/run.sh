#!/usr/bin/env bash
# The suite's one test command (README "Run the tests"; .ci/run calls it).
# Installs the Debian packages the tests need when they are missing, then
# checks formatting and lints, builds every target and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/slapd ] || need+=(slapd)
command -v ldapadd >/dev/null || need+=(ldap-utils)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v ipvsadm >/dev/null || [ -x /usr/sbin/ipvsadm ] || need+=(ipvsadm)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${need[*]}"
  # slapd must not configure or start a system instance: the tests run
  # their own, unprivileged, on loopback high ports.
  echo "slapd slapd/no_configuration boolean true" | $sudo debconf-set-selections
  # Nor a system PostgreSQL cluster: the tests initdb their own.
  $sudo mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.d/cgp-tests.conf >/dev/null
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --all-targets --quiet
cargo test --workspace --quiet
