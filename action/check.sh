#!/usr/bin/env bash
# Runs `weissi check` for the weissi check action, one pass over each checkpoint: workflow
# annotations in the log, the Markdown summary appended to the job summary, JUnit written
# for the upload. The exit code goes to the step's outputs, and this step succeeds, so that
# the upload runs before the action's last step fails the job.
set -uo pipefail

outputs="${GITHUB_OUTPUT:-/dev/null}"
set -f  # globs reach weissi as written: it expands them itself
# shellcheck disable=SC2206
paths=(${WEISSI_PATHS:-})
# shellcheck disable=SC2206
extra=(${WEISSI_ARGS:-})
set +f
if [ "${#paths[@]}" -eq 0 ]; then
  echo "::error title=weissi check::no checkpoints given: set the action's paths input"
  echo "exit-code=2" >>"$outputs"
  exit 0
fi

junit="$(realpath -m -- "${WEISSI_JUNIT:-weissi-junit.xml}")"
scratch="$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/weissi.XXXXXX")"
summary="$scratch/summary.md"

weissi check "${paths[@]}" "${extra[@]}" --github --junit "$junit" --markdown "$summary" --force
code=$?

if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  if [ -s "$summary" ]; then
    cat "$summary" >>"$GITHUB_STEP_SUMMARY"
  else
    printf '## ⛔ weissi check stopped (exit %s)\n\nNo report was written: the log says why.\n' \
      "$code" >>"$GITHUB_STEP_SUMMARY"
  fi
fi
rm -rf -- "$scratch"
echo "exit-code=$code" >>"$outputs"
if [ -f "$junit" ]; then
  echo "junit=$junit" >>"$outputs"
fi
exit 0
