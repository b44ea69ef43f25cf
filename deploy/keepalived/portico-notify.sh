#!/bin/sh
# keepalived's notify script for Portico: logs each VRRP transition, to syslog (tag
# portico-vrrp) and, when a file is given as the first argument, to that file as one line:
#   2026-12-06T03:40:00.123Z portico_vip MASTER (was notified by keepalived pid 1234)
# keepalived appends: TYPE ("INSTANCE" or "GROUP"), NAME, STATE (MASTER|BACKUP|FAULT|STOP),
# PRIORITY. Install: /etc/keepalived/portico-notify.sh, mode 0755, owned by root.
log_file=""
if [ $# -ge 5 ]; then log_file="$1"; shift; fi
type="${1:-?}" name="${2:-?}" state="${3:-?}" priority="${4:-?}"
line="$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) $name $state (priority $priority, $type)"
command -v logger >/dev/null 2>&1 && logger -t portico-vrrp "$line"
if [ -n "$log_file" ]; then
  printf '%s\n' "$line" >> "$log_file"
fi
exit 0
