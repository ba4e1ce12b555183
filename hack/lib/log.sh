# shellcheck shell=bash
# Sourced, never run: the logging and waiting every hack/ script shares, so their messages look
# alike and a fix lands once. Each script sources it relative to its own location:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/log.sh"
# and then sets (read at every call, so a script may change them as it goes):
#   LOG_TAG    the prefix's name: LOG_TAG=images logs "[images] message" (on stderr)
#   LOG_CLOCK  1: the time of day follows the prefix ("[images] 03:14:15 message") [0]
#   DIE_WORD   what `die` puts before its message [ERROR]

# log MESSAGE...: one line on stderr (stdout stays for what a script prints for its caller).
log() {
  if [[ "${LOG_CLOCK:-0}" == 1 ]]; then
    printf '[%s] %s %s\n' "${LOG_TAG:-hack}" "$(date +%H:%M:%S)" "$*" >&2
  else
    printf '[%s] %s\n' "${LOG_TAG:-hack}" "$*" >&2
  fi
}

# die MESSAGE...: log it and exit 1.
die() {
  log "${DIE_WORD:-ERROR}: $*"
  exit 1
}

# timed LABEL CMD...: run CMD, then log "LABEL in Ns"; the seconds stay in TIMED_SECONDS.
timed() {
  local label="$1" start="${SECONDS}"
  shift
  "$@"
  TIMED_SECONDS=$((SECONDS - start))
  log "${label} in ${TIMED_SECONDS}s"
}

# wait_until TIMEOUT INTERVAL DESCRIPTION CMD...: run CMD (output discarded) every INTERVAL
# seconds until it succeeds; after TIMEOUT seconds log what was awaited and return 1.
wait_until() {
  local timeout="$1" interval="$2" desc="$3" deadline
  shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for ${desc}"
      return 1
    fi
    sleep "${interval}"
  done
}
