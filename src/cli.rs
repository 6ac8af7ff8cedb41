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
    /// Fill the cache with what a mount of the version needs: from mirrors, then
    /// upstream, every file checked against its published or pinned sha256.
    Fetch(FetchArgs),
    /// The cache as a whole: publish a mirror, verify, list, collect garbage.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print the effective values of a mount (contexts/values.yaml with --values and
    /// --set applied), as a YAML file that --values takes.
    Values(ValuesArgs),
    /// The contexts embedded in this binary.
    #[command(subcommand)]
    Contexts(ContextsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ContextsCommand {
    /// Write the embedded contexts (templates, versions.yaml, sealer.yaml, values.yaml,
    /// sources.yaml) into DIR, a new or empty folder, to start a --contexts tree from.
    Export { dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct ValuesArgs {
    /// Kubernetes version, e.g. v1.23.4.
    #[arg(long = "k8s", value_name = "VERSION")]
    pub k8s: String,
    #[arg(long)]
    pub cri: Option<String>,
    #[arg(long, default_value = "calico")]
    pub cni: String,
    #[arg(long, value_name = "GEN")]
    pub sealer: Option<String>,
    #[arg(long, default_value = "sea.hub:5000")]
    pub registry_domain: String,
    #[arg(long, value_name = "DIR")]
    pub contexts: Option<PathBuf>,
    #[command(flatten)]
    pub values: ValueArgs,
}

/// `--values FILE` and `--set KEY=VALUE`: the user's choices of contexts/values.yaml.
#[derive(Debug, Args)]
pub struct ValueArgs {
    /// A YAML file of values (keys of `rootfs-mount values`), applied before --set.
    #[arg(long = "values", value_name = "FILE", help_heading = "Build")]
    pub values_file: Option<PathBuf>,

    /// Set one value, e.g. podSubnet=10.244.0.0/16 or apiServerExtraArgs.v=2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", help_heading = "Build")]
    pub set: Vec<String>,
}

impl ValueArgs {
    /// The overrides in the order they apply: the file's, then each --set.
    pub fn overrides(&self) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        if let Some(file) = &self.values_file {
            let bytes = std::fs::read(file)
                .map_err(|e| format!("cannot read --values {}: {e}", file.display()))?;
            out = rootfs_mount::values::parse_values_file(&bytes)
                .map_err(|e| format!("--values {}: {e}", file.display()))?;
        }
        for pair in &self.set {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "bad --set {}: expected KEY=VALUE",
                    rootfs_mount::render::quote(pair)
                )
            })?;
            out.push((key.trim().to_string(), value.to_string()));
        }
        Ok(out)
    }
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Kubernetes version, e.g. v1.23.4.
    #[arg(long = "k8s", value_name = "VERSION")]
    pub k8s: String,

    /// Container runtime [default: the version's, as for the mount].
    #[arg(long)]
    pub cri: Option<String>,

    /// Architectures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "amd64,arm64")]
    pub arch: Vec<String>,

    /// CNI whose images --images pulls, or `none`.
    #[arg(long, default_value = "calico")]
    pub cni: String,

    /// sealer generation, which decides the lvscare image of the imageList (--images).
    #[arg(long, value_name = "GEN")]
    pub sealer: Option<String>,

    /// Values that change the imageList (cniVersion) for --images.
    #[command(flatten)]
    pub values: ValueArgs,

    /// The cache to fill [default: as for the mount].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Read versions.yaml and sources.yaml from this contexts folder.
    #[arg(long, value_name = "DIR")]
    pub contexts: Option<PathBuf>,

    /// A URL serving the cache layout with a SHA256SUMS at its root; repeatable, tried
    /// in order before upstream.
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,

    /// Never download from upstream (mirrors only).
    #[arg(long)]
    pub no_upstream: bool,

    /// Accept upstream files with no published or pinned sha256, recording the digest
    /// of what was downloaded (trust on first use).
    #[arg(long)]
    pub allow_unpinned: bool,

    /// Print URL -> cache path -> sha256 of every entry instead of downloading.
    #[arg(long)]
    pub print_urls: bool,

    /// Parallel downloads.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,

    /// Connect timeout and longest wait for any answer or byte (30s, 2s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,

    /// Retries of a failed request (with backoff) before the next source.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,

    /// Also pull every image of the imageList into CACHE/registry.
    #[arg(long)]
    pub images: bool,

    /// Pull images of registry HOST from URL instead (HOST=URL); repeatable.
    #[arg(long = "image-mirror", value_name = "HOST=URL", value_parser = parse_image_mirror)]
    pub image_mirrors: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Write a mirror folder (the layout plus SHA256SUMS) that `fetch --mirror` can use.
    Publish {
        dir: PathBuf,
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
    },
    /// Re-hash every file recorded in CACHE/SHA256SUMS; non-zero exit on a mismatch.
    Verify {
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
    },
    /// Which versions, CRIs and arches the cache holds completely.
    Ls {
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        contexts: Option<PathBuf>,
    },
    /// Remove what no kept version needs, orphaned seek indexes and stale partial files.
    Gc {
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        contexts: Option<PathBuf>,
        /// Where the seek indexes are [default: CACHE/index].
        #[arg(long, value_name = "DIR")]
        index_dir: Option<PathBuf>,
        /// A version to keep; repeatable [default: every version in CACHE/kube].
        #[arg(long, value_name = "VERSION")]
        keep: Vec<String>,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `30s`, `2s`, `500ms`, `1m`, or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 30s, 500ms, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "bad duration {text:?}: expected e.g. 30s, 500ms, 2m"
            ))
        }
    };
    if !(0.001..=86_400.0).contains(&seconds) {
        return Err(format!("duration {text:?} out of range (1ms to 24h)"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// `HOST=URL`.
fn parse_image_mirror(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((host, url))
            if !host.is_empty() && (url.starts_with("http://") || url.starts_with("https://")) =>
        {
            Ok((host.to_string(), url.to_string()))
        }
        _ => Err(format!(
            "bad --image-mirror {text:?}: expected HOST=URL, e.g. docker.io=http://127.0.0.1:5000"
        )),
    }
}

impl FetchArgs {
    /// The cache folder, absolute.
    pub fn cache(&self) -> Result<PathBuf, String> {
        cache_dir(self.cache.as_deref())
    }

    pub fn arches(&self) -> Result<Vec<String>, String> {
        parse_arches(&self.arch)
    }
}

/// `--cache DIR` or the default, absolute.
pub fn cache_dir(cache: Option<&Path>) -> Result<PathBuf, String> {
    absolute(&cache.map(Path::to_path_buf).unwrap_or_else(default_cache))
}

/// Validated, deduplicated `--arch` values.
fn parse_arches(list: &[String]) -> Result<Vec<String>, String> {
    let mut arches: Vec<String> = Vec::new();
    for arch in list {
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
    Ok(arches)
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

    #[command(flatten)]
    pub values: ValueArgs,

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

    /// Refuse an --upper folder last used with other parameters (version, CRI, CNI,
    /// sealer generation or values) instead of warning.
    #[arg(long, help_heading = "Writes", requires = "upper")]
    pub strict: bool,

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
        let arches = parse_arches(&self.arch)?;
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
        let cache = cache_dir(self.cache.as_deref())?;
        Ok(MountParams {
            version,
            cri: self.cri.clone(),
            cni: self.cni.clone(),
            arches,
            cache,
            contexts: self.contexts.as_deref().map(absolute).transpose()?,
            registry_domain: domain.to_string(),
            sealer: self.sealer.clone(),
            values: self.values.overrides()?,
            registry_data: self.registry_data.as_deref().map(absolute).transpose()?,
            index_dir: self.index_dir.as_deref().map(absolute).transpose()?,
            allow_missing: self.allow_missing,
            upper,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "s", "2h", "-1s", "0s", "1e9s", "2 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_mirrors() {
        assert_eq!(
            parse_image_mirror("docker.io=http://127.0.0.1:5000").unwrap(),
            ("docker.io".to_string(), "http://127.0.0.1:5000".to_string())
        );
        for bad in ["docker.io", "=http://x", "docker.io=ftp://x", "docker.io="] {
            assert!(parse_image_mirror(bad).is_err(), "{bad:?}");
        }
    }
}
