//! Command-line interface: clap types and their validation into mount parameters.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use rootfs_mount::layout::{MountParams, Upper, KNOWN_ARCHES};
use rootfs_mount::versions::KubeVersion;

#[derive(Debug, Parser)]
#[command(
    name = "rootfs-mount",
    version,
    about = "Mount the merged build directory of a sealer base ClusterImage, without copying",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub mount: MountArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Unmount a rootfs-mount mount, also a stale one left by a killed daemon.
    Umount {
        mountpoint: PathBuf,
        /// Detach even when files are still open in the mount (umount -l).
        #[arg(long)]
        lazy: bool,
    },
    /// List the live mounts (or one): parameters, pid, uptime, read path and counters.
    Status { mountpoint: Option<PathBuf> },
    /// Print files of the tree (e.g. rootfs/etc/kubeadm.yml) to stdout, without mounting.
    Render {
        /// Paths in the tree, e.g. rootfs/etc/kubeadm.yml.
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// List the merged tree, sorted, without mounting.
    Tree {
        /// Mode, size, mtime and provenance (user.rootfs.source) of each entry.
        #[arg(long)]
        long: bool,
        /// One JSON array of entries (path, type, mode, size, mtime, target, source).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Write the tree as a deterministic tar (the bytes of `tar --sort=name --owner=0
    /// --group=0 --numeric-owner -cf - -C MOUNT .`) or as an OCI image layout per arch.
    Pack {
        /// Output: a tar file (`-` for stdout), or a new folder with --format oci.
        #[arg(short = 'o', long, value_name = "FILE|DIR")]
        output: PathBuf,
        /// tar, or oci: one image per arch (oci:DIR:amd64, oci:DIR:arm64) with the image
        /// root the Kubefile's COPY lines give.
        #[arg(long, default_value = "tar", value_parser = ["tar", "oci"])]
        format: String,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Check the registry data and the cache before packing: every image of imageList for
    /// every arch with all its blobs, the Kubefile labels against the CRI, missing cache
    /// entries. Exit status 0 only when everything holds.
    Check {
        /// The report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        build: BuildArgs,
    },
}

/// What the tree is built from: the options a mount and `render`, `tree`, `pack` and
/// `check` share.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Kubernetes version, e.g. v1.23.4.
    #[arg(
        long = "k8s",
        value_name = "VERSION",
        required = true,
        help_heading = "Build"
    )]
    pub k8s: Option<String>,

    /// Container runtime: docker or containerd [default: docker below v1.24.0, containerd from v1.24.0].
    #[arg(long, help_heading = "Build")]
    pub cri: Option<String>,

    /// CNI context, or `none`.
    #[arg(long, default_value = "calico", help_heading = "Build")]
    pub cni: String,

    /// Architectures to present, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "amd64,arm64",
        help_heading = "Build"
    )]
    pub arch: Vec<String>,

    /// Private registry the image's kubeadm config points at.
    #[arg(long, default_value = "sea.hub:5000", help_heading = "Build")]
    pub registry_domain: String,

    /// sealer generation the image is built for: v0.9 (sealer v0.9.2 to v0.11.0) or v0.8
    /// (sealer v0.8.6) [default: v0.9].
    #[arg(long, value_name = "GEN", help_heading = "Build")]
    pub sealer: Option<String>,

    /// OSS download cache [default: $XDG_CACHE_HOME/rootfs-mount, or /var/cache/rootfs-mount for root].
    #[arg(long, value_name = "DIR", help_heading = "Sources")]
    pub cache: Option<PathBuf>,

    /// Serve contexts from this folder instead of the ones embedded in the binary.
    #[arg(long, value_name = "DIR", help_heading = "Sources")]
    pub contexts: Option<PathBuf>,

    /// Docker registry v2 storage shown as rootfs/registry [default: CACHE/registry].
    #[arg(long, value_name = "DIR", help_heading = "Sources")]
    pub registry_data: Option<PathBuf>,

    /// Where gzip seek indexes of the archives are kept [default: CACHE/index].
    #[arg(long, value_name = "DIR", help_heading = "Sources")]
    pub index_dir: Option<PathBuf>,

    /// Mount even when cache entries the tree needs are missing.
    #[arg(long, help_heading = "Sources")]
    pub allow_missing: bool,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Empty folder to mount the build directory on.
    #[arg(required = true)]
    pub mountpoint: Option<PathBuf>,

    #[command(flatten)]
    pub build: BuildArgs,

    /// Keep changes made through the mount in DIR (created if missing); they show again on
    /// the next mount with the same DIR [default: a scratch folder removed at unmount].
    #[arg(
        long,
        value_name = "DIR",
        help_heading = "Writes",
        conflicts_with = "read_only"
    )]
    pub upper: Option<PathBuf>,

    /// Refuse every write with EROFS.
    #[arg(long, help_heading = "Writes")]
    pub read_only: bool,

    /// Serve every read from the daemon, even where the kernel could read plain backing
    /// files directly (FUSE passthrough, Linux >= 6.9, root).
    #[arg(long, help_heading = "Daemon")]
    pub no_passthrough: bool,

    /// Stay in the foreground.
    #[arg(short = 'f', long, help_heading = "Daemon")]
    pub foreground: bool,

    /// Recover a stale mount on MOUNTPOINT (its daemon was killed) before mounting.
    #[arg(long, help_heading = "Daemon")]
    pub force: bool,

    /// Let other users read the mount (needs user_allow_other for non-root); also turns
    /// on auto_unmount when fusermount3 is installed.
    #[arg(long, help_heading = "Daemon")]
    pub allow_other: bool,

    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, default_value = "info", help_heading = "Daemon")]
    pub log_level: String,

    /// Where a backgrounded daemon logs [default: nowhere].
    #[arg(long, value_name = "FILE", help_heading = "Daemon")]
    pub log_file: Option<PathBuf>,
}

/// The default cache folder (SPEC §4).
fn default_cache() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("rootfs-mount");
    }
    // SAFETY-free check of the effective uid through std: root owns /proc/self.
    if is_root() {
        return PathBuf::from("/var/cache/rootfs-mount");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".cache/rootfs-mount")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl MountArgs {
    /// Validates the arguments into mount parameters (the mountpoint is checked by the
    /// daemon, which knows about mounts).
    pub fn params(&self) -> Result<MountParams, String> {
        let upper = if self.read_only {
            Upper::None
        } else {
            match &self.upper {
                Some(dir) => Upper::Kept(absolute(dir)?),
                None => Upper::Scratch,
            }
        };
        self.build.params(upper)
    }
}

impl BuildArgs {
    /// Validates the build options into parameters, with `upper` as the upper layer.
    pub fn params(&self, upper: Upper) -> Result<MountParams, String> {
        let version = KubeVersion::parse(self.k8s.as_deref().unwrap_or_default())?;
        let mut arches: Vec<String> = Vec::new();
        for arch in &self.arch {
            let arch = arch.trim();
            if !KNOWN_ARCHES.contains(&arch) {
                return Err(format!(
                    "unknown arch {arch:?}: expected {}",
                    KNOWN_ARCHES.join(" or ")
                ));
            }
            if !arches.iter().any(|a| a == arch) {
                arches.push(arch.to_string());
            }
        }
        // The domain is written into YAML and TOML configs: host names, IPv4, [IPv6]
        // and a port only, so it can never break out of the value it is written into.
        let domain = self.registry_domain.trim();
        let host_chars = |c: char| c.is_ascii_alphanumeric() || ".-:[]_".contains(c);
        if domain.is_empty() || domain.len() > 253 || !domain.chars().all(host_chars) {
            return Err(format!(
                "invalid --registry-domain {}: expected host[:port]",
                rootfs_mount::render::quote(&self.registry_domain)
            ));
        }
        let cache = absolute(&self.cache.clone().unwrap_or_else(default_cache))?;
        Ok(MountParams {
            version,
            cri: self.cri.clone(),
            cni: self.cni.clone(),
            arches,
            cache,
            contexts: self.contexts.as_deref().map(absolute).transpose()?,
            registry_domain: domain.to_string(),
            sealer: self.sealer.clone(),
            registry_data: self.registry_data.as_deref().map(absolute).transpose()?,
            index_dir: self.index_dir.as_deref().map(absolute).transpose()?,
            allow_missing: self.allow_missing,
            upper,
        })
    }
}
