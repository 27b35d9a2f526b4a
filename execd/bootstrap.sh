#!/bin/sh
# OpenSandbox sandbox entrypoint: starts execd, then the user's command.
#
# The server copies this file and execd into the sandbox as
# /opt/opensandbox/bootstrap.sh and /opt/opensandbox/execd, and creates the
# container with ENTRYPOINT ["/opt/opensandbox/bootstrap.sh"] and the user's
# entrypoint as CMD. POSIX sh only: user images may have no bash.
#
# In order:
#  1. When OPENSANDBOX_EGRESS_MITMPROXY_TRANSPARENT is truthy (1, true, yes,
#     on; any case), waits up to OPENSANDBOX_MITM_CA_WAIT_SECONDS (default 300)
#     for /opt/opensandbox/mitmproxy-ca-cert.pem (written by the egress
#     sidecar on the shared volume) and trusts it: update-ca-certificates or
#     update-ca-trust when present, the NSS database of $HOME when certutil is
#     present, a merged bundle /opt/opensandbox/merged-ca-certificates.pem, and
#     NODE_EXTRA_CA_CERTS, REQUESTS_CA_BUNDLE, SSL_CERT_FILE exported. If the
#     file never comes, a warning goes to stderr and the start goes on.
#  2. EXECD defaults to /opt/opensandbox/execd. It is split into words, so it
#     may carry flags (EXECD="/opt/opensandbox/execd -port=44773").
#  3. EXECD_ENVS defaults to /opt/opensandbox/.env; the file is created if
#     missing and EXECD_ENVS is exported.
#  4. EXECD_BOOTSTRAP_PRE_SCRIPT, when set and readable, is sourced (`.`), so
#     its exports reach execd and the user command.
#  5. EXECD_INIT=1 (any truthy value): execd is exec'd as the main process and
#     no user command runs (arguments are ignored, with a warning).
#  6. Otherwise execd starts in the background, then the user command, the
#     first that applies of:
#       BOOTSTRAP_CMD (a shell string)      -> $SHELL_BIN -c "$BOOTSTRAP_CMD"
#       -c "<string>" [more words]          -> $SHELL_BIN -c "<all words after -c>"
#       argv                                -> argv, as given
#       no argument (or a bare -c)          -> keep the container alive
#     where SHELL_BIN is $BOOTSTRAP_SHELL, else bash if present, else sh.
#  7. SIGTERM and SIGINT are forwarded to the user command; when it ends,
#     execd is sent SIGTERM and the script exits with the command's status
#     (so the container ends with it). With no user command, SIGTERM or
#     SIGINT ends the container with status 0. Standard input is passed to
#     the user command.
#
# Decisions, where upstream differs:
#  - No `set -e` (upstream has it). A pre-script that fails (returns non-zero)
#    is reported on stderr and the start goes on; to abort the start, the
#    pre-script must `exit N` explicitly, which ends the container with N.
#    A syntax error in a sourced pre-script ends the shell, as in any sh.
#  - Upstream starts an interactive shell when there are no arguments; in the
#    background, with standard input from /dev/null, that shell exits at
#    once. Here the container stays up until it is stopped.
#  - Upstream exits 0 after forwarding SIGTERM; here the exit status is the
#    user command's (e.g. 143 if it died of the SIGTERM, its own code if it
#    trapped it).
#  - A background command of a non-interactive sh starts with SIGINT and
#    SIGQUIT ignored (POSIX), so a forwarded SIGINT would do nothing. When
#    `env --default-signal` (GNU coreutils >= 8.31) exists, the user command
#    is started through it to restore the default actions; elsewhere (e.g.
#    busybox) a forwarded SIGINT only reaches commands that reset it.
#
# Variables of this script are prefixed _bs_ so that a sourced pre-script
# does not clash with them.

_bs_log() { printf 'bootstrap: %s\n' "$*" >&2; }

_bs_truthy() {
	case "${1:-}" in
	1 | [Tt][Rr][Uu][Ee] | [Yy][Ee][Ss] | [Oo][Nn]) return 0 ;;
	*) return 1 ;;
	esac
}

# Until the user command runs, SIGTERM/SIGINT end the start (PID 1 has no
# default action for them: without a trap they would be ignored).
trap '_bs_log "SIGTERM before the user command started; exiting"; exit 143' TERM
trap '_bs_log "SIGINT before the user command started; exiting"; exit 130' INT

_bs_sudo() {
	if [ "$(id -u 2>/dev/null || echo 0)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		"$@"
	fi
}

# Trusts the MITM CA $1; sets _bs_merged to the merged bundle when one was written.
_bs_trust_ca() {
	_bs_cert=$1
	_bs_merged=
	if command -v update-ca-certificates >/dev/null 2>&1; then
		{ _bs_sudo mkdir -p /usr/local/share/ca-certificates &&
			_bs_sudo cp "$_bs_cert" /usr/local/share/ca-certificates/opensandbox-mitmproxy-ca.crt &&
			_bs_sudo update-ca-certificates >/dev/null 2>&1; } ||
			_bs_log "warning: update-ca-certificates failed; the system trust store may lack the MITM CA"
	elif command -v update-ca-trust >/dev/null 2>&1; then
		{ _bs_sudo mkdir -p /etc/pki/ca-trust/source/anchors &&
			_bs_sudo cp "$_bs_cert" /etc/pki/ca-trust/source/anchors/opensandbox-mitmproxy-ca.pem &&
			{ _bs_sudo update-ca-trust extract || _bs_sudo update-ca-trust; } >/dev/null 2>&1; } ||
			_bs_log "warning: update-ca-trust failed; the system trust store may lack the MITM CA"
	else
		_bs_log "warning: neither update-ca-certificates nor update-ca-trust; system trust store unchanged"
	fi

	# Chromium also reads the per-user NSS database.
	if command -v certutil >/dev/null 2>&1 && [ -n "${HOME:-}" ] && [ -d "$HOME" ] &&
		mkdir -p "$HOME/.pki/nssdb" 2>/dev/null; then
		if [ ! -f "$HOME/.pki/nssdb/cert9.db" ] && [ ! -f "$HOME/.pki/nssdb/cert8.db" ]; then
			certutil -N -d "sql:$HOME/.pki/nssdb" --empty-password >/dev/null 2>&1
		fi
		_bs_nssdb="sql:$HOME/.pki/nssdb"
		[ -f "$HOME/.pki/nssdb/cert8.db" ] && [ ! -f "$HOME/.pki/nssdb/cert9.db" ] && _bs_nssdb="dbm:$HOME/.pki/nssdb"
		certutil -D -d "$_bs_nssdb" -n opensandbox-mitmproxy >/dev/null 2>&1
		certutil -A -d "$_bs_nssdb" -n opensandbox-mitmproxy -t "C,," -i "$_bs_cert" >/dev/null 2>&1 ||
			_bs_log "warning: could not import the MITM CA into $HOME/.pki/nssdb"
	fi

	# REQUESTS_CA_BUNDLE and SSL_CERT_FILE replace the default roots, so they
	# get a full root set plus the MITM CA. certifi first (full Mozilla set).
	_bs_certifi=
	for _bs_py in python3 python; do
		if command -v "$_bs_py" >/dev/null 2>&1; then
			_bs_certifi=$("$_bs_py" -c 'import certifi; print(certifi.where())' 2>/dev/null) || _bs_certifi=
			break
		fi
	done
	for _bs_bundle in "$_bs_certifi" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt \
		/etc/ssl/cert.pem /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem; do
		if [ -n "$_bs_bundle" ] && [ -s "$_bs_bundle" ]; then
			if cat "$_bs_bundle" "$_bs_cert" >/opt/opensandbox/merged-ca-certificates.pem 2>/dev/null; then
				_bs_merged=/opt/opensandbox/merged-ca-certificates.pem
			else
				_bs_log "warning: could not write /opt/opensandbox/merged-ca-certificates.pem"
			fi
			return 0
		fi
	done
	_bs_log "warning: no CA bundle found to merge with the MITM CA"
}

if _bs_truthy "${OPENSANDBOX_EGRESS_MITMPROXY_TRANSPARENT:-}"; then
	_bs_ca=/opt/opensandbox/mitmproxy-ca-cert.pem
	_bs_wait=${OPENSANDBOX_MITM_CA_WAIT_SECONDS:-300}
	case "$_bs_wait" in
	'' | *[!0-9]*)
		_bs_log "warning: OPENSANDBOX_MITM_CA_WAIT_SECONDS=$_bs_wait is not a number of seconds; using 300"
		_bs_wait=300
		;;
	esac
	_bs_i=0
	while [ ! -s "$_bs_ca" ] && [ "$_bs_i" -lt "$_bs_wait" ]; do
		sleep 1
		_bs_i=$((_bs_i + 1))
	done
	if [ -s "$_bs_ca" ]; then
		_bs_trust_ca "$_bs_ca"
		export NODE_EXTRA_CA_CERTS="$_bs_ca" # added to Node's own roots
		if [ -n "$_bs_merged" ]; then
			export REQUESTS_CA_BUNDLE="$_bs_merged" SSL_CERT_FILE="$_bs_merged"
		else
			_bs_log "warning: no merged CA bundle; REQUESTS_CA_BUNDLE and SSL_CERT_FILE hold only the MITM CA"
			export REQUESTS_CA_BUNDLE="$_bs_ca" SSL_CERT_FILE="$_bs_ca"
		fi
	else
		_bs_log "warning: no $_bs_ca after ${_bs_wait}s (egress MITM CA export); continuing without trusting it"
	fi
fi

EXECD=${EXECD:-/opt/opensandbox/execd}

EXECD_ENVS=${EXECD_ENVS:-/opt/opensandbox/.env}
mkdir -p "$(dirname "$EXECD_ENVS")" 2>/dev/null ||
	_bs_log "warning: could not create the directory of EXECD_ENVS=$EXECD_ENVS"
(: >>"$EXECD_ENVS") 2>/dev/null || _bs_log "warning: could not create EXECD_ENVS=$EXECD_ENVS"
export EXECD_ENVS

if [ -n "${EXECD_BOOTSTRAP_PRE_SCRIPT:-}" ]; then
	if [ -f "$EXECD_BOOTSTRAP_PRE_SCRIPT" ] && [ -r "$EXECD_BOOTSTRAP_PRE_SCRIPT" ]; then
		# `.` searches PATH for a name without a slash: force the literal path.
		case "$EXECD_BOOTSTRAP_PRE_SCRIPT" in
		*/*) _bs_pre=$EXECD_BOOTSTRAP_PRE_SCRIPT ;;
		*) _bs_pre=./$EXECD_BOOTSTRAP_PRE_SCRIPT ;;
		esac
		_bs_log "sourcing pre-script $EXECD_BOOTSTRAP_PRE_SCRIPT"
		# shellcheck disable=SC1090
		. "$_bs_pre"
		_bs_rc=$?
		[ "$_bs_rc" -eq 0 ] ||
			_bs_log "warning: pre-script $EXECD_BOOTSTRAP_PRE_SCRIPT returned $_bs_rc; continuing"
	else
		_bs_log "warning: EXECD_BOOTSTRAP_PRE_SCRIPT=$EXECD_BOOTSTRAP_PRE_SCRIPT is not a readable file; skipped"
	fi
fi

if _bs_truthy "${EXECD_INIT:-}"; then
	[ "$#" -eq 0 ] || _bs_log "warning: EXECD_INIT is set: the command ($*) is ignored"
	_bs_log "exec $EXECD as the main process"
	trap - TERM INT
	set -f
	# shellcheck disable=SC2086
	exec $EXECD
fi

_bs_log "starting execd: $EXECD"
set -f
# shellcheck disable=SC2086
$EXECD &
_bs_execd=$!
set +f

# The command to run, in the positional parameters.
if [ -n "${BOOTSTRAP_CMD:-}" ] || { [ "$#" -ge 2 ] && [ "$1" = "-c" ]; }; then
	if [ -n "${BOOTSTRAP_CMD:-}" ]; then
		_bs_cmd=$BOOTSTRAP_CMD
	else
		shift
		_bs_cmd=$*
	fi
	_bs_shell=${BOOTSTRAP_SHELL:-}
	if [ -z "$_bs_shell" ]; then
		if command -v bash >/dev/null 2>&1; then _bs_shell="bash"; else _bs_shell="sh"; fi
	fi
	set -- "$_bs_shell" -c "$_bs_cmd"
elif [ "$#" -eq 1 ] && [ "$1" = "-c" ]; then
	set --
fi

if [ "$#" -eq 0 ]; then
	# Keep the container alive until SIGTERM/SIGINT (`tail -f /dev/null`
	# that reacts to signals). Without `sleep`, live as long as execd.
	_bs_log "no command: keeping the container alive"
	_bs_stop=
	_bs_sleep=
	trap '_bs_stop=1; [ -z "$_bs_sleep" ] || kill "$_bs_sleep" 2>/dev/null' TERM INT
	while [ -z "$_bs_stop" ]; do
		if command -v sleep >/dev/null 2>&1; then
			sleep 3600 &
			_bs_sleep=$!
			[ -n "$_bs_stop" ] || wait "$_bs_sleep"
			kill "$_bs_sleep" 2>/dev/null
		else
			wait "$_bs_execd"
			[ -n "$_bs_stop" ] || { _bs_log "execd ended"; exit 1; }
		fi
	done
	kill "$_bs_execd" 2>/dev/null
	exit 0
fi

# Background commands start with SIGINT/SIGQUIT ignored; restore the defaults
# where env can (see above).
if env --default-signal=INT,QUIT true >/dev/null 2>&1; then
	set -- env --default-signal=INT,QUIT "$@"
fi

# From here on, SIGTERM and SIGINT go to the user command (one that comes
# before the command has started is sent to it right after).
_bs_child=
_bs_got=
# shellcheck disable=SC2329 # called from the traps below
_bs_forward() {
	_bs_got=$1
	[ -z "$_bs_child" ] || kill -"$1" "$_bs_child" 2>/dev/null
}
trap '_bs_forward TERM' TERM
trap '_bs_forward INT' INT

# Pass standard input on: a background command would get /dev/null.
if (: <&0) 2>/dev/null; then
	exec 3<&0
	"$@" <&3 3<&- &
	_bs_child=$!
	exec 3<&-
else
	"$@" &
	_bs_child=$!
fi
[ -z "$_bs_got" ] || kill -"$_bs_got" "$_bs_child" 2>/dev/null

# A trapped signal makes `wait` return (>128) before the child has ended:
# wait again, until a `wait` ends without a signal. The shell keeps the
# child's status after it ended, so the last `wait` returns it; a shell that
# forgot it answers 127, and the previous status stands.
_bs_last=
while :; do
	_bs_got=
	wait "$_bs_child"
	_bs_rc=$?
	if [ "$_bs_rc" -eq 127 ] && [ -n "$_bs_last" ]; then
		_bs_rc=$_bs_last
		break
	fi
	if [ -z "$_bs_got" ] || [ "$_bs_rc" -le 128 ]; then
		break
	fi
	_bs_last=$_bs_rc
done

kill "$_bs_execd" 2>/dev/null
exit "$_bs_rc"
