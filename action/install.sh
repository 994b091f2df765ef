#!/usr/bin/env bash
# Installs weissi for the weissi check action: the action's own copy (WEISSI_INSTALL=action),
# a pip requirement, or nothing (skip); WEISSI_PIP_ARGS are passed to pip.
set -euo pipefail

install="${WEISSI_INSTALL:-action}"
set -f  # the arguments are words, never file patterns
# shellcheck disable=SC2206
pip_args=(${WEISSI_PIP_ARGS:-})
set +f
case "$install" in
  skip) ;;
  action) python -m pip install "${pip_args[@]}" "${GITHUB_ACTION_PATH:?is not set}" ;;
  *) python -m pip install "${pip_args[@]}" "$install" ;;
esac
weissi --version
