# sockhook: build, test, try locally, install.
#
#   make run                      the demo on 127.0.0.1:7777, no root needed
#   make test                     the whole suite (system tests need root)
#   sudo make install             then: systemctl enable --now sockhook.socket
#   make install DESTDIR=/tmp/x   staged install, works unprivileged
#
# GNU directory variables; DESTDIR is prepended only in install and uninstall.
# sysconfdir is /etc for prefix /usr or /usr/local, as Debian (debhelper's
# --sysconfdir=/etc) and Fedora (%{_sysconfdir}) use and as sockhook's own
# defaults assume; for any other prefix it is $(prefix)/etc. Packagers override
# unitdir (Debian 12: /lib/systemd/system, Fedora: /usr/lib/systemd/system).

prefix      ?= /usr/local
exec_prefix ?= $(prefix)
bindir      ?= $(exec_prefix)/bin
datarootdir ?= $(prefix)/share
mandir      ?= $(datarootdir)/man
docdir      ?= $(datarootdir)/doc/sockhook
ifneq ($(filter /usr /usr/local,$(prefix)),)
sysconfdir  ?= /etc
else
sysconfdir  ?= $(prefix)/etc
endif
unitdir     ?= $(prefix)/lib/systemd/system
sysusersdir ?= $(prefix)/lib/sysusers.d
# sudo reads /etc/sudoers.d whatever the prefix.
sudoersdir  ?= /etc/sudoers.d
confdir      = $(sysconfdir)/sockhook
hooksdir     = $(confdir)/hooks.d

CARGO ?= cargo
BIN   ?= target/release/sockhook

# `make run`: loopback only. With --listen, sockhook runs until stopped
# (Ctrl-C) unless RUN_IDLE gives it an --idle-timeout.
RUN_LISTEN ?= 127.0.0.1:7777
RUN_IDLE   ?=

# PollLimit*= exist from systemd 255 on; older versions warn "Unknown key". By
# default they are kept when `systemctl --version` says 255 or more (or there
# is no systemctl to ask) and commented out otherwise; POLL_LIMIT=yes|no
# decides for packagers building on another systemd than the target's.
ifndef POLL_LIMIT
POLL_LIMIT := $(shell v=$$(systemctl --version 2>/dev/null | sed -n '1s/^systemd \([0-9][0-9]*\).*/\1/p'); \
	if [ -n "$$v" ] && [ "$$v" -lt 255 ]; then echo no; else echo yes; fi)
endif

UNITS    = sockhook.socket sockhook-https.socket sockhook.service sockhook-accept.socket sockhook-accept@.service sockhook-subscribe.service
EXAMPLES = examples/hooks.d/hello.toml examples/kodi-restart.toml examples/github-deploy.toml
# Installed into an empty hooks.d: token-protected, and its sudo rule ships.
LIVE_HOOK = examples/kodi-restart.toml
MANPAGES := $(wildcard doc/*.[1-8])

# $(call unit_sed,BINDIR): sed that turns systemd/X into the unit installed.
HASH := \#
unit_sed = sed -e 's|@bindir@|$(1)|g' -e 's|@sysconfdir@|$(sysconfdir)|g' \
	$(if $(filter no,$(POLL_LIMIT)),-e 's/^PollLimit/$(HASH)PollLimit/')

# $(call put,MODE,DEST,COMMAND): COMMAND's output becomes DEST through a temp
# file in DEST's directory, named with a leading dot and a random suffix (so
# sudo, systemd and sockhook all ignore it), given its mode, then renamed over
# DEST: DEST is never seen half-written or with the wrong mode.
put = echo "install: $(1) $(2)" && tmp=$$(mktemp "$(dir $(2)).$(notdir $(2)).XXXXXX") && \
	{ { $(3); } >"$$tmp" && chmod $(1) "$$tmp" && mv -f "$$tmp" "$(2)" || { rm -f "$$tmp"; exit 1; }; }

# $(call mkd,MODE,DIR): create DIR if missing, parents 0755 whatever the
# umask; never change an existing one (Debian's /etc/sudoers.d is 0750).
mkd = [ -d "$(2)" ] || { echo "install: $(1) $(2)/" && (umask 022 && mkdir -p "$(2)") && chmod $(1) "$(2)"; }

.PHONY: all build test attack run install uninstall check-units clean deb fuzz bench bench-attack bench-relay bench-systemd
.DELETE_ON_ERROR:

all: build

build:
	$(CARGO) build --release --locked --quiet

# Only when missing: `sudo make install` must not compile as root.
$(BIN):
	$(CARGO) build --release --locked --quiet

test:
	$(CARGO) test --release --locked

# `make attack`: only the attack tests of issue 9 (tests/attack.rs, also part
# of `make test`), printing what they measure: memory, connections held,
# latencies of valid requests. Under a minute; needs slowloris and
# slowhttptest (.ci/run installs them) and root for the Accept=yes system test.
attack:
	$(CARGO) test --release --locked --test attack -- --nocapture

run: build
	@mkdir -p target/run
	@[ -e target/run/key ] || { umask 077 && \
		{ od -An -v -tx1 -N32 /dev/urandom | tr -d ' \n'; echo; } >target/run/key.tmp && \
		mv target/run/key.tmp target/run/key; }
	@tok=$$($(BIN) token /hooks/hello --key target/run/key) && \
		printf '\nIn another terminal:\n  curl -i -u %s: -d hello http://%s/hooks/hello\n\n' "$$tok" '$(RUN_LISTEN)'
	exec $(BIN) serve --listen $(RUN_LISTEN) --hooks examples/hooks.d --key target/run/key $(if $(RUN_IDLE),--idle-timeout $(RUN_IDLE))

install: $(BIN)
	@$(call mkd,0755,$(DESTDIR)$(bindir))
	@$(call put,0755,$(DESTDIR)$(bindir)/sockhook,cat '$(BIN)')
	@$(call mkd,0755,$(DESTDIR)$(unitdir))
	@for u in $(UNITS); do \
		$(call put,0644,$(DESTDIR)$(unitdir)/$$u,$(call unit_sed,$(bindir)) "systemd/$$u") || exit 1; \
	done
	@$(call mkd,0755,$(DESTDIR)$(sysusersdir))
	@$(call put,0644,$(DESTDIR)$(sysusersdir)/sockhook.conf,cat systemd/sockhook.sysusers)
	@$(call mkd,0755,$(DESTDIR)$(docdir)/examples)
	@$(call put,0644,$(DESTDIR)$(docdir)/README.md,cat README.md)
	@for f in $(EXAMPLES); do b=$${f##*/}; \
		$(call put,0644,$(DESTDIR)$(docdir)/examples/$$b,cat "$$f") || exit 1; \
	done
	@for m in $(MANPAGES); do b=$${m##*/}; d="$(DESTDIR)$(mandir)/man$${m##*.}"; \
		$(call mkd,0755,$$d) && $(call put,0644,$$d/$$b,cat "$$m") || exit 1; \
	done
	@$(call mkd,0755,$(DESTDIR)$(confdir))
	@$(call mkd,0755,$(DESTDIR)$(hooksdir))
	@set -- '$(DESTDIR)$(hooksdir)'/*.toml; if [ ! -e "$$1" ]; then \
		$(call put,0644,$(DESTDIR)$(hooksdir)/$(notdir $(LIVE_HOOK)),cat $(LIVE_HOOK)); \
	else echo "install: $(DESTDIR)$(hooksdir) already has hooks; no example added"; fi
# The sudoers drop-in: checked by visudo as the very file that is then linked
# into place (ln never overwrites), and never replacing an existing one.
	@dest='$(DESTDIR)$(sudoersdir)/sockhook'; \
	if [ -e "$$dest" ]; then \
		cmp -s sudoers/sockhook "$$dest" || echo "install: kept $$dest (it differs from sudoers/sockhook)"; \
	elif ! command -v visudo >/dev/null && [ -z '$(DESTDIR)' ]; then \
		echo "install: no visudo (sudo not installed); skipped $$dest"; \
	else \
		$(call mkd,0750,$(DESTDIR)$(sudoersdir)) && \
		echo "install: 0440 $$dest" && \
		tmp=$$(mktemp '$(DESTDIR)$(sudoersdir)/.sockhook.XXXXXX') && \
		{ cat sudoers/sockhook >"$$tmp" && chmod 0440 "$$tmp" && \
		  { [ "$$(id -u)" != 0 ] || chown 0:0 "$$tmp"; } && \
		  if ! command -v visudo >/dev/null; then \
			echo "install: no visudo here; $$dest not syntax-checked"; \
		  elif ! visudo -cf "$$tmp" >/dev/null; then \
			echo "install: visudo rejects sudoers/sockhook; not installed" >&2; false; \
		  fi && \
		  ln "$$tmp" "$$dest"; st=$$?; rm -f "$$tmp"; exit $$st; }; \
	fi
ifeq ($(DESTDIR),)
	@if command -v systemd-sysusers >/dev/null; then \
		echo "install: systemd-sysusers $(sysusersdir)/sockhook.conf" && \
		systemd-sysusers '$(sysusersdir)/sockhook.conf'; \
	else echo "install: no systemd-sysusers; create the system user sockhook yourself"; fi
# The server key: 32 random bytes as hex, root-only (sockhook reads it through
# LoadCredential=), never overwritten (ln fails if it exists).
	@[ -e '$(confdir)/key' ] || { echo "install: 0600 $(confdir)/key (new server key)" && \
		tmp=$$(mktemp '$(confdir)/.key.XXXXXX') && \
		{ { od -An -v -tx1 -N32 /dev/urandom | tr -d ' \n'; echo; } >"$$tmp" && \
		  [ "$$(wc -c <"$$tmp")" -eq 65 ] && chmod 0600 "$$tmp" && \
		  ln "$$tmp" '$(confdir)/key'; st=$$?; rm -f "$$tmp"; exit $$st; }; }
	@if [ -d /run/systemd/system ]; then echo "install: systemctl daemon-reload" && systemctl daemon-reload; fi
	@echo
	@echo "Installed. Next:"
	@echo "  $(bindir)/sockhook check"
	@echo "  systemctl enable --now sockhook.socket"
	@echo "  $(bindir)/sockhook token /hooks/$(basename $(notdir $(LIVE_HOOK)))"
endif

uninstall:
ifeq ($(DESTDIR),)
# Stop nothing (install started nothing), but refuse rather than leave enabled
# or running units without their files.
	@if [ -d /run/systemd/system ]; then \
		for u in sockhook.socket sockhook-https.socket sockhook-accept.socket sockhook-subscribe.service; do \
			case $$(systemctl is-enabled $$u 2>/dev/null) in enabled*) busy="$$busy $$u";; esac; \
		done; \
		for u in sockhook.socket sockhook-https.socket sockhook-accept.socket sockhook.service sockhook-subscribe.service; do \
			! systemctl -q is-active $$u || busy="$$busy $$u"; \
		done; \
		if [ -n "$$busy" ]; then \
			echo "uninstall: still enabled or active:$$busy"; \
			echo "  first: systemctl disable --now sockhook.socket sockhook-https.socket sockhook-accept.socket sockhook-subscribe.service"; \
			exit 1; \
		fi; \
	fi
endif
	@rm -fv '$(DESTDIR)$(bindir)/sockhook'
	@for u in $(UNITS); do rm -fv '$(DESTDIR)$(unitdir)'/"$$u"; done
	@rm -fv '$(DESTDIR)$(sysusersdir)/sockhook.conf'
	@for f in $(EXAMPLES); do rm -fv '$(DESTDIR)$(docdir)/examples'/"$${f##*/}"; done
	@rm -fv '$(DESTDIR)$(docdir)/README.md'
	@rmdir '$(DESTDIR)$(docdir)/examples' '$(DESTDIR)$(docdir)' 2>/dev/null || :
	@for m in $(MANPAGES); do rm -fv '$(DESTDIR)$(mandir)'/man$${m##*.}/"$${m##*/}"; done
# Configuration goes only while it is exactly what was shipped; the key, other
# hooks and an edited sudoers file stay.
	@f='$(DESTDIR)$(sudoersdir)/sockhook'; \
	if cmp -s sudoers/sockhook "$$f"; then rm -fv "$$f"; \
	elif [ -e "$$f" ]; then echo "uninstall: kept $$f (edited)"; fi
	@f='$(DESTDIR)$(hooksdir)/$(notdir $(LIVE_HOOK))'; \
	if cmp -s $(LIVE_HOOK) "$$f"; then rm -fv "$$f"; \
	elif [ -e "$$f" ]; then echo "uninstall: kept $$f (edited)"; fi
	@rmdir '$(DESTDIR)$(hooksdir)' '$(DESTDIR)$(confdir)' 2>/dev/null || :
ifeq ($(DESTDIR),)
	@if [ -d /run/systemd/system ]; then echo "uninstall: systemctl daemon-reload" && systemctl daemon-reload; fi
	@[ ! -e '$(confdir)/key' ] || echo "uninstall: kept $(confdir)/key and the user sockhook"
endif

# The units as installed, but pointing at the binary in this tree, verified
# offline. systemd-analyze exits 0 even after warnings, so any stderr fails.
# Documentation=man:sockhook(8) is looked up in doc/ when the page exists
# there, and not at all otherwise (--man=no).
check-units: $(BIN)
	rm -rf target/units && mkdir -p target/units
	for u in $(UNITS); do \
		$(call unit_sed,$(abspath $(dir $(BIN)))) "systemd/$$u" >"target/units/$$u" || exit 1; \
	done
	for m in $(MANPAGES); do \
		mkdir -p "target/units/man/man$${m##*.}" && cp "$$m" "target/units/man/man$${m##*.}/" || exit 1; \
	done
	cd target/units && \
		MANPATH="$$PWD/man" systemd-analyze verify $(if $(MANPAGES),,--man=no) $(addprefix ./,$(UNITS)) 2>verify.err; \
		st=$$?; cat verify.err >&2; [ $$st -eq 0 ] && [ ! -s verify.err ]

clean:
	$(CARGO) clean

# The Debian package, target/debian/sockhook_<version>-1_<arch>.deb, made by
# cargo-deb from [package.metadata.deb] in Cargo.toml (cargo-deb is installed
# with cargo when missing; that build takes minutes, its log goes to
# target/cargo-deb-install.log). The units are those `make install` writes for
# prefix /usr, staged in target/deb/units where Cargo.toml takes them from.
DEB_UNITS     = target/deb/units
CARGO_DEB_LOG = target/cargo-deb-install.log

deb: override sysconfdir := /etc
deb:
	@$(CARGO) deb --version >/dev/null 2>&1 || { \
		echo "deb: cargo install cargo-deb --locked (log: $(CARGO_DEB_LOG))" && mkdir -p target && \
		$(CARGO) install cargo-deb --locked >$(CARGO_DEB_LOG) 2>&1 || { tail -n 30 $(CARGO_DEB_LOG) >&2; exit 1; }; }
	rm -rf $(DEB_UNITS) && mkdir -p $(DEB_UNITS)
	for u in $(UNITS); do \
		$(call unit_sed,/usr/bin) "systemd/$$u" >"$(DEB_UNITS)/$$u" || exit 1; \
	done
	cp systemd/sockhook.sysusers $(DEB_UNITS)/sockhook.sysusers
	$(CARGO) deb --locked

# `make bench`: sockhook (cold and warm) side by side with the floor
# (bench/floor/floor.c, started the same way), the seed's netcat recipe and
# adnanh/webhook, on loopback, and over HTTPS sockhook cold and warm against
# webhook -secure; installs webhook, netcat-openbsd, curl, openssl,
# python3-matplotlib, gcc and libssl-dev when missing. Writes
# bench/results/latest.{md,json,png}. BENCH_ARGS=--quick: a smoke run of
# about 100 s on 2 cores. Then the attack cases (bench-attack, below), --quick
# with it, and publish-to-run latency through a relay (serve with a publish
# hook, then sockhook subscribe) vs a direct POST (bench/relay.py, writes
# bench/results/relay-latency.{md,json}; under a minute).
BENCH_ARGS ?=

bench: build
	bench/run --sockhook $(BIN) $(BENCH_ARGS)
	bench/run --attack --sockhook $(BIN) $(if $(filter --quick,$(BENCH_ARGS)),--quick)
	bench/run --relay --sockhook $(BIN) $(if $(filter --quick,$(BENCH_ARGS)),--quick)

# `make bench-attack`: only the attack cases of issue 9 (bench/attack.py;
# also run by `make bench`): 64 fake-signed 25 MiB bodies held, and 2,000 slow
# heads + 300 slow bodies with valid deliveries timed meanwhile, against
# sockhook (shipped limits, and 128 per source) and adnanh/webhook, memory
# counted as RSS + memfds. Writes bench/results/attack.{md,json}; a few
# minutes. BENCH_ATTACK_ARGS=--quick: smaller, under a minute;
# --before PATH adds another sockhook binary (e.g. an older commit's).
BENCH_ATTACK_ARGS ?=

bench-attack: build
	bench/run --attack --sockhook $(BIN) $(BENCH_ATTACK_ARGS)

# `make bench-relay`: the relay (issue 16) with 4,000 idle subscribers and
# 20 publishes, then 1,000 with 64 KiB messages: sockhook's RSS per subscriber
# and the time from each POST to each copy (tests/relay.rs, bench_relay).
bench-relay:
	$(CARGO) test --release --locked --test relay bench_relay -- --ignored --nocapture

# `make bench-systemd` (root): the first request after idle under a real
# systemd, in the system-test sandbox: the shipped units, the floor with the
# same unit options, no sandboxing, and each option of sockhook.service
# removed by a drop-in. Needs gcc and libssl-dev (the floor); a few minutes.
# Writes bench/results/systemd.{md,json}. Not part of `make test` (#[ignore]).
bench-systemd:
	$(CARGO) test --release --locked --test bench_systemd -- --ignored --nocapture

# `make fuzz`: each fuzz target for FUZZ_SECONDS (not part of `make test`; the
# saved inputs are, through tests/fuzz_regressions.rs). cargo-fuzz passes
# -Zsanitizer=address, which stable rustc takes with RUSTC_BOOTSTRAP=1; no
# nightly needed (fuzz/README.md). Needs `cargo install cargo-fuzz --locked`.
# New inputs go to fuzz/corpus/<target>, crashes to fuzz/artifacts/<target>;
# FUZZ_FLAGS='-fork=1 -ignore_crashes=1' keeps going after a crash.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= parse_request chunked read_split signature_headers token standard_webhooks_secret payload_filter payloads
FUZZ_FLAGS   ?=

fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "fuzz: needs cargo-fuzz: $(CARGO) install cargo-fuzz --locked" >&2; exit 1; }
	@cd fuzz && for t in $(FUZZ_TARGETS); do \
		case $$t in parse_request|chunked|read_split) len='-max_len=20000 -len_control=0';; *) len=;; esac; \
		mkdir -p corpus/$$t && echo "fuzz: $$t for $(FUZZ_SECONDS) s" && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 $$len $(FUZZ_FLAGS) \
			|| failed="$$failed $$t"; \
	done; \
	[ -z "$$failed" ] || { echo "fuzz: crashed:$$failed (inputs in fuzz/artifacts/)" >&2; exit 1; }
