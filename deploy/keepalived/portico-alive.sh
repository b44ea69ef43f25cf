#!/bin/sh
# keepalived's vrrp_script that notices at once that Portico died: it waits on the supervisor
# (`portico run CONFIG`) for most of keepalived's 1 s interval and fails the moment that
# process is gone (pidwait is woken by the kernel through a pidfd, no polling), or at once when
# no such process runs. keepalived 2.2 runs a script at most once a second and its own
# vrrp_track_process needs the kernel's process connector, which answers only in the initial
# network namespace; this script works in any namespace.
#   portico-alive.sh CONFIG [SECONDS]    CONFIG: the path `portico run` was given (last)
# Exit 0: the supervisor ran throughout SECONDS (default 0.9: a run ends before keepalived
# starts the next, a second after this one; a death in the 0.1 s between two runs is noticed
# when the next starts); 1: it is not running, or it ended meanwhile.
# Install: /etc/keepalived/portico-alive.sh, mode 0755, owned by root. Needs pidwait (procps).
config="${1:?usage: portico-alive.sh CONFIG [SECONDS]}"
# anchored at the end: `timeout`, whose command line ends in "yaml$", must not match
timeout "${2:-0.9}" pidwait --full -- "portico run $config\$"
[ $? -eq 124 ]  # timeout's status: pidwait was still waiting, the process lives
