#!/usr/bin/env bash
# Installs rootfs-mount: the binary, the mount(8) helper link, the man pages, shell
# completions and the systemd unit.
#
#   sudo scripts/install.sh                  # builds target/release/rootfs-mount, installs under /usr/local
#   PREFIX=/opt/rootfs-mount DESTDIR=/tmp/pkg scripts/install.sh
#
# Where things go (PREFIX defaults to /usr/local, UNITDIR to /etc/systemd/system; DESTDIR
# is prepended to every path, for packaging):
#   PREFIX/bin/rootfs-mount
#   /usr/local/sbin/rootfs-mount -> PREFIX/bin/rootfs-mount, when PREFIX/bin is not on the
#       default PATH of /bin/sh: `mount -t fuse.rootfs-mount` runs /sbin/mount.fuse3, which
#       runs `rootfs-mount SOURCE MOUNTPOINT -o OPTIONS` through /bin/sh, and mount(8)
#       clears PATH, so the shell searches only
#       /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
#   PREFIX/share/man/man1/rootfs-mount.1 (and rootfs-mount-SUBCOMMAND.1)
#   PREFIX/share/bash-completion/completions/rootfs-mount
#   PREFIX/share/zsh/site-functions/_rootfs-mount
#   PREFIX/share/fish/vendor_completions.d/rootfs-mount.fish
#   UNITDIR/rootfs-mount@.service (ExecStart names PREFIX/bin/rootfs-mount)
# BIN=path installs that binary instead of building one.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${PREFIX:-/usr/local}
destdir=${DESTDIR:-}
unitdir=${UNITDIR:-/etc/systemd/system}
bin=${BIN:-}

if [[ -z "$bin" ]]; then
    cargo build --release --manifest-path "$repo/Cargo.toml"
    bin="$repo/target/release/rootfs-mount"
fi
[[ -x "$bin" ]] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }

install -D -m 0755 "$bin" "$destdir$prefix/bin/rootfs-mount"
installed="$destdir$prefix/bin/rootfs-mount"

sh_default_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
case ":$sh_default_path:" in
    *":$prefix/bin:"*) ;;
    *)
        install -d "$destdir/usr/local/sbin"
        ln -sfn "$prefix/bin/rootfs-mount" "$destdir/usr/local/sbin/rootfs-mount"
        ;;
esac

"$installed" generate man "$destdir$prefix/share/man/man1"
install -d "$destdir$prefix/share/bash-completion/completions" \
    "$destdir$prefix/share/zsh/site-functions" \
    "$destdir$prefix/share/fish/vendor_completions.d"
"$installed" generate completions bash >"$destdir$prefix/share/bash-completion/completions/rootfs-mount"
"$installed" generate completions zsh >"$destdir$prefix/share/zsh/site-functions/_rootfs-mount"
"$installed" generate completions fish >"$destdir$prefix/share/fish/vendor_completions.d/rootfs-mount.fish"

install -d "$destdir$unitdir"
sed "s#/usr/local/bin/rootfs-mount#$prefix/bin/rootfs-mount#" \
    "$repo/contrib/rootfs-mount@.service" >"$destdir$unitdir/rootfs-mount@.service"
chmod 0644 "$destdir$unitdir/rootfs-mount@.service"

echo "installed rootfs-mount into $destdir$prefix (unit: $destdir$unitdir/rootfs-mount@.service)"
if [[ -z "$destdir" ]] && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload || true
fi
